"""Authorization: may the principal of this call do this to that resource?

``Authorizer.require`` is what the servicers call, once per RPC (per topic per stream for
Produce), on the node the client called and before anything is forwarded: forwarded calls
arrive as a peer principal, which (like the super users) bypasses ACLs. With ``acl`` off
``require`` returns at once (one attribute test), so the hot path pays nothing.

Where the rules live, behind one ``AclStore`` protocol (as node/groups/offsets.py does for
offsets): ``MetadataAclStore``, ``AddAcl``/``RemoveAcl`` commands of the metadata Raft group,
proposed on its leader (the Admin service forwards there); every node reads its own applied
state, so a rule added through any node applies on all of them once replicated, and survives
restarts with the metadata log (a lone node is a cluster of one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from rillet.cluster import metadata as md
from rillet.node.errors import PermissionDeniedError, UnavailableError
from rillet.node.security import principal as principals
from rillet.node.security.acl import (
    ANY_PRINCIPAL,
    IMPLIES_DESCRIBE,
    AclRule,
    Operation,
    PatternType,
    ResourceType,
    denial,
)

log = logging.getLogger(__name__)

PROPOSE_TIMEOUT_S = 10.0


class AclStore(Protocol):
    """Durable ACL rules."""

    def rules(self) -> frozenset[AclRule]:
        """Every rule: the same object until the rules change (callers cache by identity)."""

    async def add(self, rule: AclRule) -> bool:
        """Store ``rule`` durably; False when it was there already."""

    async def remove(self, rule: AclRule) -> bool:
        """Remove ``rule`` durably; False when there was no such rule."""


class MetadataProposer(Protocol):
    """The part of ClusterNode this store uses."""

    @property
    def metadata_state(self) -> md.MetadataState: ...

    async def propose_metadata(self, command: md.Command) -> md.Accepted: ...


class MetadataAclStore:
    """Cluster store: rules are metadata commands; ``add``/``remove`` run on the metadata
    leader (the Admin service gets them there) and return once a majority stored them."""

    def __init__(self, cluster: MetadataProposer, *, timeout_s: float = PROPOSE_TIMEOUT_S
                 ) -> None:
        self.cluster = cluster
        self.timeout_s = timeout_s
        self._source: frozenset[md.AclKey] | None = None
        self._rules: frozenset[AclRule] = frozenset()

    def rules(self) -> frozenset[AclRule]:
        keys = self.cluster.metadata_state.acls()
        if keys is not self._source:
            rules = set()
            for k in keys:
                try:
                    rules.add(AclRule.from_key(k))
                except ValueError as exc:  # the state machine checks the same rules
                    log.error("ACL %r in the metadata state does not parse: %s", k, exc)
            self._source, self._rules = keys, frozenset(rules)
        return self._rules

    async def _propose(self, command: md.Command) -> bool:
        try:
            result = await asyncio.wait_for(self.cluster.propose_metadata(command),
                                            self.timeout_s)
        except TimeoutError:
            raise UnavailableError(
                f"the metadata group did not commit {type(command).__name__} within "
                f"{self.timeout_s:.0f} s; retry") from None
        return result.changed

    async def add(self, rule: AclRule) -> bool:
        return await self._propose(md.AddAcl(*rule.key()))

    async def remove(self, rule: AclRule) -> bool:
        return await self._propose(md.RemoveAcl(*rule.key()))


class _Index:
    """The rules, built once per rules object for cheap lookups: per principal, literal rules
    as (principal, resource type, name) -> operations allowed (implied describe included),
    prefix rules as (resource type, prefix, operations allowed)."""

    def __init__(self, rules: frozenset[AclRule]) -> None:
        self.source = rules
        self.by_principal: dict[str, list[AclRule]] = {}
        self.literal: dict[tuple[str, ResourceType, str], set[Operation]] = {}
        self.prefix: dict[str, list[tuple[ResourceType, str, frozenset[Operation]]]] = {}
        for r in rules:
            self.by_principal.setdefault(r.principal, []).append(r)
            ops = {r.operation, Operation.DESCRIBE} if r.operation in IMPLIES_DESCRIBE else {
                r.operation}
            if r.pattern is PatternType.PREFIX:
                self.prefix.setdefault(r.principal, []).append(
                    (r.resource_type, r.resource_name, frozenset(ops)))
            else:
                self.literal.setdefault((r.principal, r.resource_type, r.resource_name),
                                        set()).update(ops)

    def allows(self, name: str, anyone: bool, op: Operation, rtype: ResourceType,
               resource: str) -> bool:
        for key in (name, ANY_PRINCIPAL) if anyone else (name,):
            ops = self.literal.get((key, rtype, resource))
            if ops is not None and op in ops:
                return True
            for rt, prefix, allowed in self.prefix.get(key, ()):
                if rt is rtype and op in allowed and resource.startswith(prefix):
                    return True
        return False


def parse_names(text: str) -> frozenset[str]:
    """``"admin, ops"`` -> {"admin", "ops"} (the super_users setting)."""
    return frozenset(n.strip() for n in text.split(",") if n.strip())


class Authorizer:
    """Checks calls against the ACL rules when ``enabled``.

    Bypass: peers (cluster members: their calls were authorized where the client called) and
    ``super_users``. A "*" rule matches every authenticated principal, not ANONYMOUS (with
    ACLs on and no authentication configured, only rules naming "anonymous" would apply).
    """

    def __init__(self, enabled: bool, super_users: Iterable[str], store: AclStore) -> None:
        self.enabled = enabled
        self.super_users = frozenset(super_users)
        self.store = store
        self._index = _Index(frozenset())

    def _current_index(self) -> _Index:
        rules = self.store.rules()
        if rules is not self._index.source:
            self._index = _Index(rules)
        return self._index

    def _bypasses(self, who: principals.Principal) -> bool:
        return who.peer or who.name in self.super_users

    def allowed(self, op: Operation, rtype: ResourceType, name: str = "") -> bool:
        """May the current principal do ``op`` on (``rtype``, ``name``)? For filtering lists."""
        if not self.enabled:
            return True
        who = principals.current()
        if self._bypasses(who):
            return True
        return self._current_index().allows(who.name, who.source != "anonymous", op, rtype,
                                            name)

    def require(self, op: Operation, rtype: ResourceType, name: str = "") -> None:
        """Raise PermissionDeniedError (naming principal, operation and resource) unless the
        current principal may do ``op`` on (``rtype``, ``name``)."""
        if not self.enabled:
            return
        if not self.allowed(op, rtype, name):
            raise PermissionDeniedError(denial(principals.current().name, op, rtype, name))

    def allowed_any(self, op: Operation, rtype: ResourceType) -> bool:
        """Does some rule let the current principal do ``op`` on some ``rtype`` resource?
        (InitProducer: a producer id is for principals that may produce somewhere.)"""
        if not self.enabled:
            return True
        who = principals.current()
        if self._bypasses(who):
            return True
        index = self._current_index()
        keys = (who.name, ANY_PRINCIPAL) if who.source != "anonymous" else (who.name,)
        return any(r.operation is op and r.resource_type is rtype
                   for k in keys for r in index.by_principal.get(k, ()))

    def stream_checker(self, op: Operation, rtype: ResourceType) -> Callable[[str], None]:
        """``require(op, rtype, name)`` for one stream's principal, remembering the names it
        allowed until the rules change: a Produce stream pays one dict lookup per batch."""
        if not self.enabled:
            return _allow_all
        who = principals.current()
        if self._bypasses(who):
            return _allow_all
        anyone = who.source != "anonymous"
        ok: set[str] = set()
        seen: list[_Index] = [self._current_index()]

        def check(name: str) -> None:
            index = self._current_index()
            if index is not seen[0]:
                seen[0] = index
                ok.clear()
            if name in ok:
                return
            if not index.allows(who.name, anyone, op, rtype, name):
                raise PermissionDeniedError(denial(who.name, op, rtype, name))
            ok.add(name)
        return check


def _allow_all(_name: str) -> None:
    return None
