"""Sans-IO state machine of one state-of-the-world ADS stream.

Rules, all taken from how Envoy behaves:
- A response carries every subscribed resource of its type; its version is a hash of that
  content, so "nothing changed" is a string comparison. Streams that want the same
  resources of snapshots of one cache get them (and their version) from one selection.
- An ACK or NACK never causes a resend of the same content.
- The legacy wildcard (an empty subscription to CDS or LDS) holds only while the proxy has
  never named a resource of that type on this stream; after that an empty list unsubscribes
  from everything, as the xDS spec says (clients that name listeners, like gRPC, rely on it).
- A request whose nonce is not the latest we sent for its type is stale: Envoy sends it before
  it has seen our newer response, and will ACK that one with its full subscription anyway. We
  keep its subscription and otherwise ignore it. A nonce on a type we have not answered yet
  cannot be ours (clients may carry nonces over from an earlier stream): the request is a
  plain subscription, or the proxy would wait for an answer that never comes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pilotfish.snapshot import Snapshot, type_urls
from pilotfish.xds.protocol import (
    Action,
    NonceSource,
    RequestReceived,
    SendResponse,
    SnapshotChanged,
    TypeProgress,
    TypeStatus,
    load_assignments_to_resend,
)

SotwEvent = RequestReceived | SnapshotChanged


@dataclass
class _TypeState:
    progress: TypeProgress
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    named_before: bool = False
    latest_nonce: int | None = None
    responded: bool = field(default=False)


class SotwStream:
    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._types: dict[str, _TypeState] = {}
        self._nonces = NonceSource()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def statuses(self) -> list[TypeStatus]:
        ordered = sorted(self._types, key=type_urls.push_rank)
        return [self._types[t].progress.status() for t in ordered]

    def receive(self, event: SotwEvent) -> list[Action]:
        if isinstance(event, SnapshotChanged):
            return self._snapshot_changed(event.snapshot)
        return self._request_received(event)

    def _request_received(self, request: RequestReceived) -> list[Action]:
        state = self._types.get(request.type_url)
        first = state is None
        if state is None:
            state = _TypeState(TypeProgress(request.type_url))
            self._types[request.type_url] = state
        state.named_before = state.named_before or bool(request.resource_names)
        state.wildcard = "*" in request.resource_names or (
            not state.named_before and request.type_url in type_urls.WILDCARD_TYPES
        )
        state.names = frozenset(n for n in request.resource_names if n != "*")

        nonce = NonceSource.parse(request.response_nonce)
        answers_a_response = bool(request.response_nonce) and state.latest_nonce is not None
        if answers_a_response and nonce != state.latest_nonce:
            return []

        actions: list[Action] = []
        if answers_a_response and nonce is not None:
            if request.error_message is not None:
                state.progress.acked_version = request.version_info or state.progress.acked_version
                actions.append(
                    state.progress.record_nack(
                        nonce, state.progress.sent_version, request.error_message
                    )
                )
            else:
                state.progress.record_ack(nonce, request.version_info)

        if self._snapshot is None:
            return actions
        version = self._version(state, self._snapshot)
        state.progress.desired_version = version
        if first and request.version_info and request.version_info == version:
            # A reconnecting proxy that already holds exactly this: nothing to send.
            state.progress.acked_version = version
            state.progress.sent_version = version
            return actions
        if self._worth_sending(state, version):
            actions.append(self._respond(state, version, self._snapshot))
        return actions

    def _snapshot_changed(self, snapshot: Snapshot) -> list[Action]:
        must_resend = load_assignments_to_resend(self._snapshot, snapshot)
        self._snapshot = snapshot
        actions: list[Action] = []
        for type_url in sorted(self._types, key=type_urls.push_rank):
            state = self._types[type_url]
            version = self._version(state, snapshot)
            state.progress.desired_version = version
            forced = type_url == type_urls.ENDPOINT and self._holds_any(
                state, snapshot, must_resend
            )
            if forced or self._worth_sending(state, version):
                actions.append(self._respond(state, version, snapshot))
        return actions

    @staticmethod
    def _holds_any(state: _TypeState, snapshot: Snapshot, names: frozenset[str]) -> bool:
        if state.wildcard:
            available = snapshot.of_type(state.progress.type_url)
            return any(name in available for name in names)
        return not names.isdisjoint(state.names)

    @staticmethod
    def _worth_sending(state: _TypeState, version: str) -> bool:
        if version == state.progress.sent_version:
            return False
        # Nothing subscribed and nothing sent yet: an empty answer would tell the proxy nothing.
        return state.wildcard or bool(state.names) or state.responded

    @staticmethod
    def _version(state: _TypeState, snapshot: Snapshot) -> str:
        """The version of what the proxy should hold; for the whole type (a wildcard) it is
        worked out once per snapshot, without picking the resources."""
        type_url = state.progress.type_url
        if state.wildcard:
            return snapshot.type_version(type_url)
        return snapshot.select(type_url, state.names).version

    def _respond(self, state: _TypeState, version: str, snapshot: Snapshot) -> SendResponse:
        nonce = self._nonces.next()
        state.latest_nonce = nonce
        state.responded = True
        state.progress.sent_version = version
        type_url = state.progress.type_url
        selected = snapshot.select(type_url, None if state.wildcard else state.names)
        return SendResponse(type_url, version, str(nonce), selected.resources)
