"""Sans-IO state machine of one state-of-the-world ADS stream.

Rules, all taken from how Envoy behaves:
- A response's version is a hash of every subscribed resource of its type, so "nothing
  changed" is a string comparison. Streams that want the same resources of snapshots of one
  cache get them (and their version) from one selection.
- A response of clusters, listeners or secrets carries every subscribed resource (for the
  first two, one left out is one removed). One of endpoints or routes carries only those
  that changed since the proxy was last sent them, once it has answered every response of
  the type and holds a complete one for its subscription (not after a NACK, nor to a
  wildcard subscriber): the xDS protocol lets those types be grouped as Delta groups them,
  Envoy leaves a resource that a response does not name as it is (tested on a real one),
  and Istio pushes endpoints so. A thousand load assignments are then sent once, not once
  per change. While a response is unanswered the next one is complete, so a NACK that
  arrives after a newer response (and is ignored as stale) loses nothing.
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

from collections import OrderedDict
from dataclasses import dataclass, field

from pilotfish.snapshot import Resource, Snapshot, type_urls
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
    # The subscription as the proxy last listed it: every ACK lists it again, most often
    # unchanged, and comparing the lists is cheaper than making the set again.
    listed: tuple[str, ...] = ()
    named_before: bool = False
    latest_nonce: int | None = None
    responded: bool = field(default=False)
    # The latest response has been ACKed or NACKed.
    answered: bool = True
    # For a type whose responses may carry only what changed: per name, the version the
    # proxy was last sent, of the subscription ``sent_for``; None: the next one carries all.
    sent: dict[str, str] | None = None
    sent_for: frozenset[str] = frozenset()


class NameSets:
    """One set object for every stream subscribed to the same names (one server's streams
    share it). Selections are looked up by subscription: with the same object, the lookup
    compares it by identity instead of a thousand names for every proxy and change."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._known: OrderedDict[frozenset[str], frozenset[str]] = OrderedDict()

    def shared(self, names: frozenset[str]) -> frozenset[str]:
        known = self._known.get(names)
        if known is not None:
            self._known.move_to_end(names)
            return known
        self._known[names] = names
        while len(self._known) > self._size:
            self._known.popitem(last=False)
        return names


class SotwStream:
    def __init__(self, name_sets: NameSets | None = None) -> None:
        self._name_sets = NameSets() if name_sets is None else name_sets
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
        if first or request.resource_names != state.listed:
            state.listed = request.resource_names
            state.names = self._name_sets.shared(
                frozenset(n for n in request.resource_names if n != "*")
            )

        nonce = NonceSource.parse(request.response_nonce)
        answers_a_response = bool(request.response_nonce) and state.latest_nonce is not None
        if answers_a_response and nonce != state.latest_nonce:
            return []

        actions: list[Action] = []
        if answers_a_response and nonce is not None:
            state.answered = True
            if request.error_message is not None:
                state.sent = None  # what it holds is no longer known: the next one is complete
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
        previous = self._snapshot
        must_resend = load_assignments_to_resend(previous, snapshot)
        self._snapshot = snapshot
        actions: list[Action] = []
        for type_url in sorted(self._types, key=type_urls.push_rank):
            state = self._types[type_url]
            version = self._version(state, snapshot)
            state.progress.desired_version = version
            forced = must_resend if type_url == type_urls.ENDPOINT else frozenset()
            if self._holds_any(state, snapshot, forced) or self._worth_sending(state, version):
                changed = self._changed_only(state, snapshot, previous, forced)
                actions.append(self._respond(state, version, snapshot, changed))
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

    @staticmethod
    def _changed_only(
        state: _TypeState, snapshot: Snapshot, previous: Snapshot | None, forced: frozenset[str]
    ) -> tuple[Resource, ...] | None:
        """The subscribed resources that changed since the proxy was sent them, and those it
        must get again; None when the response must carry every subscribed resource."""
        if (
            state.sent is None
            or not state.answered
            or state.wildcard
            or previous is None
            or state.sent_for != state.names
        ):
            return None
        type_url = state.progress.type_url
        available = snapshot.of_type(type_url)
        changed: list[Resource] = []
        # The proxy holds what ``previous`` held of its subscription (every change since the
        # complete response was sent, or needed nothing): only names that differ can count.
        for name in sorted({*snapshot.changed_names(previous, type_url), *forced}):
            if name not in state.names:
                continue
            resource = available.get(name)
            if resource is None:
                state.sent.pop(name, None)
            elif name in forced or state.sent.get(name) != resource.version:
                state.sent[name] = resource.version
                changed.append(resource)
        return tuple(changed)

    def _respond(
        self,
        state: _TypeState,
        version: str,
        snapshot: Snapshot,
        changed: tuple[Resource, ...] | None = None,
    ) -> SendResponse:
        nonce = self._nonces.next()
        state.latest_nonce = nonce
        state.responded = True
        state.answered = False
        state.progress.sent_version = version
        type_url = state.progress.type_url
        if changed is not None:
            return SendResponse(type_url, version, str(nonce), changed)
        selected = snapshot.select(type_url, None if state.wildcard else state.names)
        if type_url in type_urls.SOTW_PARTIAL_TYPES and not state.wildcard:
            state.sent = {r.name: r.version for r in selected.resources}
            state.sent_for = state.names
        else:
            state.sent = None
        return SendResponse(type_url, version, str(nonce), selected.resources)
