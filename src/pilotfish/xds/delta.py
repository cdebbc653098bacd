"""Sans-IO state machine of one incremental (Delta) ADS stream.

We track, per type, the version of every resource the proxy holds and send only resources it
does not hold at their current version, plus the names of those it must drop. ACKs and NACKs
carry no version, so each nonce we send remembers the version it stood for.

Subscription changes are honoured whatever nonce they carry: unlike SotW, a Delta request is
a diff, so ignoring one would lose it for good. Only the ACK/NACK meaning of a request needs
a nonce we still remember.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from pilotfish.snapshot import (
    Resource,
    Snapshot,
    digest_version,
    type_urls,
)
from pilotfish.xds.protocol import (
    Action,
    DeltaRequestReceived,
    NonceSource,
    SendResponse,
    SnapshotChanged,
    TypeProgress,
    TypeStatus,
    load_assignments_to_resend,
)

DeltaEvent = DeltaRequestReceived | SnapshotChanged

# Envoy ACKs every response; a proxy that stops ACKing must not grow our memory without end.
_MAX_PENDING_NONCES = 64

_UNCONFIRMED = ""


@dataclass
class _TypeState:
    progress: TypeProgress
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    client_versions: dict[str, str] = field(default_factory=dict)
    pending: OrderedDict[int, str] = field(default_factory=OrderedDict)
    # The resources the last full or incremental diff brought the proxy up to date with; None
    # after a subscription change, which calls for a full diff.
    diffed_against: Snapshot | None = None
    # Sum of the pair digests of the resources the proxy wants (see version_of_resources).
    wanted_digest: int = 0


class DeltaStream:
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

    def client_versions(self, type_url: str) -> dict[str, str]:
        """What we believe the proxy holds (for tests and debugging)."""
        state = self._types.get(type_url)
        return dict(state.client_versions) if state else {}

    def receive(self, event: DeltaEvent) -> list[Action]:
        if isinstance(event, SnapshotChanged):
            return self._snapshot_changed(event.snapshot)
        return self._request_received(event)

    def _request_received(self, request: DeltaRequestReceived) -> list[Action]:
        state = self._types.get(request.type_url)
        if state is None:
            state = _TypeState(TypeProgress(request.type_url))
            self._types[request.type_url] = state
            state.client_versions.update(request.initial_resource_versions)
            state.wildcard = not request.subscribe and request.type_url in type_urls.WILDCARD_TYPES
        self._update_subscription(state, request)

        actions: list[Action] = []
        nonce = NonceSource.parse(request.response_nonce)
        if nonce is not None and nonce in state.pending:
            version = state.pending[nonce]
            for older in [n for n in state.pending if n <= nonce]:
                del state.pending[older]
            if request.error_message is not None:
                actions.append(state.progress.record_nack(nonce, version, request.error_message))
            else:
                state.progress.record_ack(nonce, version)

        if self._snapshot is not None:
            response = self._diff(state, self._snapshot, frozenset())
            if response is not None:
                actions.append(response)
        return actions

    @staticmethod
    def _wants(state: _TypeState, name: str) -> bool:
        return state.wildcard or name in state.names

    def _full_diff(
        self, state: _TypeState, available: Mapping[str, Resource], forced: frozenset[str]
    ) -> tuple[list[Resource], list[str]]:
        wanted = [name for name in available if self._wants(state, name)]
        return self._diff_names(state, available, {*wanted, *state.client_versions}, forced)

    def _diff_names(
        self,
        state: _TypeState,
        available: Mapping[str, Resource],
        candidates: set[str],
        forced: frozenset[str],
    ) -> tuple[list[Resource], list[str]]:
        """Of ``candidates``: what the proxy wants and lacks (or must get again), and what it
        holds but no longer should."""
        client_versions = state.client_versions
        changed: list[Resource] = []
        removed: list[str] = []
        for name in sorted(candidates):
            resource = available.get(name)
            if resource is not None and self._wants(state, name):
                if client_versions.get(name) != resource.version or name in forced:
                    changed.append(resource)
            elif name in client_versions:
                removed.append(name)
        return changed, removed

    @staticmethod
    def _update_subscription(state: _TypeState, request: DeltaRequestReceived) -> None:
        if request.subscribe or request.unsubscribe:
            state.diffed_against = None
        for name in request.subscribe:
            if name == "*":
                state.wildcard = True
            else:
                state.names.add(name)
        for name in request.unsubscribe:
            if name == "*":
                state.wildcard = False
                continue
            state.names.discard(name)
            if not state.wildcard:
                # The proxy drops what it unsubscribes from; it will not need a removal.
                state.client_versions.pop(name, None)
            elif name in state.client_versions:
                # Envoy cannot tell whether the wildcard still covers the name, so it holds the
                # resource as "ambiguous" until we send it again or remove it. A version no
                # resource has makes the next diff do exactly one of the two.
                state.client_versions[name] = _UNCONFIRMED

    def _snapshot_changed(self, snapshot: Snapshot) -> list[Action]:
        must_resend = load_assignments_to_resend(self._snapshot, snapshot)
        self._snapshot = snapshot
        actions: list[Action] = []
        for type_url in sorted(self._types, key=type_urls.push_rank):
            forced = must_resend if type_url == type_urls.ENDPOINT else frozenset()
            response = self._diff(self._types[type_url], snapshot, forced)
            if response is not None:
                actions.append(response)
        return actions

    def _diff(
        self, state: _TypeState, snapshot: Snapshot, forced: frozenset[str]
    ) -> SendResponse | None:
        type_url = state.progress.type_url
        available = snapshot.of_type(type_url)
        previous = state.diffed_against
        state.diffed_against = snapshot
        if previous is None:
            changed, removed = self._full_diff(state, available, forced)
            state.wanted_digest = sum(
                r.pair_digest for name, r in available.items() if self._wants(state, name)
            )
        else:
            # The proxy is up to date with ``previous``: only names that differ between the two
            # (worked out once for every stream that shares them) can need sending or removing.
            candidates = set(snapshot.changed_names(previous, type_url)) | forced
            if not candidates and state.progress.sent_version is not None:
                return None  # the usual case for all types but one: nothing differs
            before = previous.of_type(type_url)
            for name in candidates:  # keep the wanted set's version sum up to date
                if self._wants(state, name):
                    if (old := before.get(name)) is not None:
                        state.wanted_digest -= old.pair_digest
                    if (new := available.get(name)) is not None:
                        state.wanted_digest += new.pair_digest
            changed, removed = self._diff_names(state, available, candidates, forced)
        # The same sum ``version_of_resources`` makes of what the proxy wants, kept up to date
        # above in O(changes) rather than recomputed over every resource for every stream.
        desired = digest_version(state.wanted_digest)
        state.progress.desired_version = desired
        if not changed and not removed:
            if state.progress.sent_version is None and not state.pending:
                # A reconnecting proxy whose initial_resource_versions were already current.
                state.progress.sent_version = desired
                state.progress.acked_version = desired
            return None

        for resource in changed:
            state.client_versions[resource.name] = resource.version
        for name in removed:
            del state.client_versions[name]
        nonce = self._nonces.next()
        version = desired
        state.pending[nonce] = version
        while len(state.pending) > _MAX_PENDING_NONCES:
            state.pending.popitem(last=False)
        state.progress.sent_version = version
        return SendResponse(
            state.progress.type_url, version, str(nonce), tuple(changed), tuple(removed)
        )
