"""Where ACLs live and how they are enforced: the metadata commands AddAcl/RemoveAcl (codec,
apply, rejections, snapshot), the file store, the metadata store, and the Authorizer
(bypasses, "*" rules, the per-stream cache, ACLs off)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rillet.cluster import metadata as md
from rillet.node.errors import PermissionDeniedError
from rillet.node.security import principal as principals
from rillet.node.security.acl import AclRule, Operation, ResourceType
from rillet.node.security.authz import (
    Authorizer,
    MetadataAclStore,
    parse_names,
)
from rillet.node.security.principal import ANONYMOUS, Principal

TOPIC, GROUP, CLUSTER = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
ALICE = Principal("alice", "token")


# -- the metadata commands -------------------------------------------------------------------


def test_acl_commands_round_trip_the_codec() -> None:
    for cmd in (md.AddAcl("alice", "produce", "topic", "orders", "literal"),
                md.RemoveAcl("*", "consume", "topic", "ord", "prefix"),
                md.AddAcl("root", "cluster_admin", "cluster")):
        assert md.decode_command(md.encode_command(cmd)) == cmd


def test_add_and_remove_apply_idempotently_and_snapshot() -> None:
    state = md.MetadataState()
    add = md.AddAcl("alice", "produce", "topic", "orders")
    first = state.apply(1, add)
    assert isinstance(first, md.Accepted) and first.changed
    before = state.acls()
    again = state.apply(2, add)
    assert isinstance(again, md.Accepted) and not again.changed
    assert state.acls() is before  # unchanged: the same object (readers cache by identity)
    assert state.acls() == {("alice", "produce", "topic", "orders", "literal")}
    restored = md.MetadataState.restore(state.snapshot())
    assert restored == state and restored.acls() == state.acls()
    gone = state.apply(3, md.RemoveAcl(*add.key()))
    assert isinstance(gone, md.Accepted) and gone.changed and state.acls() == frozenset()
    absent = state.apply(4, md.RemoveAcl(*add.key()))
    assert isinstance(absent, md.Accepted) and not absent.changed


@pytest.mark.parametrize("cmd, message", [
    (md.AddAcl("alice", "fly", "topic", "t"), "operation 'fly' does not apply to a topic"),
    (md.AddAcl("alice", "produce", "table", "t"), "unknown ACL resource type 'table'"),
    (md.AddAcl("alice", "produce", "topic", "t", "glob"), "pattern must be literal or prefix"),
    (md.AddAcl("", "produce", "topic", "t"), "principal must be"),
    (md.AddAcl("a*", "produce", "topic", "t"), "principal must be"),
    (md.AddAcl("alice", "produce", "topic", ""), "name must be"),
    (md.AddAcl("alice", "produce", "topic", "a b"), "name must be"),
    (md.AddAcl("alice", "cluster_admin", "cluster", "x"), "names no resource"),
    (md.RemoveAcl("alice", "group", "topic", "t"), "does not apply to a topic"),
])
def test_bad_acl_commands_are_rejected_and_change_nothing(cmd: md.Command, message: str) -> None:
    state = md.MetadataState()
    result = state.apply(1, cmd)
    assert isinstance(result, md.Rejected), result
    assert result.code is md.RejectCode.INVALID_REQUEST and message in result.message
    assert state.acls() == frozenset() and state.applied_index == 1


def test_old_snapshots_without_acls_restore() -> None:
    state = md.MetadataState()
    state.apply(1, md.RegisterBroker(0, "127.0.0.1:9091"))
    doc = state.snapshot().replace(b'"acls":[],', b"")
    assert b"acls" not in doc
    assert md.MetadataState.restore(doc).acls() == frozenset()


# -- stores ----------------------------------------------------------------------------------


class _FakeCluster:
    """A metadata state applied in place of a Raft group."""

    def __init__(self) -> None:
        self.metadata_state = md.MetadataState()

    async def propose_metadata(self, command: md.Command) -> md.Accepted:
        result = self.metadata_state.apply(self.metadata_state.applied_index + 1, command)
        assert isinstance(result, md.Accepted)
        return result


def test_metadata_store_proposes_and_reads_the_state() -> None:
    rule = AclRule.parse("*", "consume", "topic", "pub.", "prefix")

    async def go() -> None:
        cluster = _FakeCluster()
        store = MetadataAclStore(cluster)
        assert await store.add(rule) is True
        assert await store.add(rule) is False
        first = store.rules()
        assert first == {rule} and store.rules() is first  # cached until the state changes
        assert await store.remove(rule) is True
        assert store.rules() == frozenset()
    asyncio.run(go())


# -- the authorizer --------------------------------------------------------------------------


class _Memory:
    def __init__(self, *rules: AclRule) -> None:
        self._rules = frozenset(rules)

    def rules(self) -> frozenset[AclRule]:
        return self._rules

    async def add(self, rule: AclRule) -> bool:
        self._rules = self._rules | {rule}
        return True

    async def remove(self, rule: AclRule) -> bool:
        self._rules = self._rules - {rule}
        return True


@pytest.fixture(autouse=True)
def _anonymous_after() -> Iterator[None]:
    """Tests bind principals in the test thread's context; leave it as it was."""
    yield
    principals.bind(ANONYMOUS)


def _as(who: Principal) -> None:
    principals.bind(who)


def _authz(*rules: AclRule, enabled: bool = True, supers: str = "admin") -> Authorizer:
    return Authorizer(enabled, parse_names(supers), _Memory(*rules))


def test_denies_what_no_rule_allows_naming_everything() -> None:
    authz = _authz(AclRule.parse("alice", "produce", "topic", "orders"))
    _as(ALICE)
    authz.require(Operation.PRODUCE, TOPIC, "orders")
    authz.require(Operation.DESCRIBE, TOPIC, "orders")  # implied by produce
    with pytest.raises(PermissionDeniedError, match="principal 'alice' may not consume from "
                       "topic 'orders'"):
        authz.require(Operation.CONSUME, TOPIC, "orders")
    with pytest.raises(PermissionDeniedError, match="topic 'orders2'"):
        authz.require(Operation.PRODUCE, TOPIC, "orders2")


def test_peers_and_super_users_bypass() -> None:
    authz = _authz(supers="admin, ops")
    for who in (Principal("node-1", "certificate", peer=True), Principal("ops", "token")):
        _as(who)
        authz.require(Operation.CLUSTER_ADMIN, CLUSTER)
        assert authz.allowed_any(Operation.PRODUCE, TOPIC)
    _as(Principal("eve", "token"))
    assert not authz.allowed(Operation.DESCRIBE, TOPIC, "x")


def test_star_rules_apply_to_authenticated_principals_not_anonymous() -> None:
    authz = _authz(AclRule.parse("*", "consume", "topic", "pub.", "prefix"))
    _as(Principal("bob", "certificate"))
    authz.require(Operation.CONSUME, TOPIC, "pub.news")
    _as(ANONYMOUS)
    assert not authz.allowed(Operation.CONSUME, TOPIC, "pub.news")


def test_allowed_any_is_for_init_producer() -> None:
    authz = _authz(AclRule.parse("alice", "produce", "topic", "o", "prefix"))
    _as(ALICE)
    assert authz.allowed_any(Operation.PRODUCE, TOPIC)
    _as(Principal("bob", "token"))
    assert not authz.allowed_any(Operation.PRODUCE, TOPIC)


def test_disabled_allows_everything() -> None:
    authz = _authz(enabled=False)
    _as(Principal("eve", "token"))
    authz.require(Operation.CLUSTER_ADMIN, CLUSTER)
    authz.stream_checker(Operation.PRODUCE, TOPIC)("anything")


def test_stream_checker_caches_until_the_rules_change() -> None:
    rule = AclRule.parse("alice", "produce", "topic", "orders")
    store = _Memory(rule)
    authz = Authorizer(True, (), store)
    _as(ALICE)
    check = authz.stream_checker(Operation.PRODUCE, TOPIC)
    check("orders")
    check("orders")
    with pytest.raises(PermissionDeniedError):
        check("other")
    asyncio.run(store.remove(rule))
    with pytest.raises(PermissionDeniedError, match="produce to topic 'orders'"):
        check("orders")


_rules = st.builds(
    lambda p, op, rt, name, prefix: (p, op, rt, name, prefix),
    st.sampled_from(["alice", "bob", "*"]), st.sampled_from(list(Operation)),
    st.sampled_from([TOPIC, GROUP, CLUSTER]), st.sampled_from(["a", "ab", "abc", "b"]),
    st.booleans())


@given(raw=st.lists(_rules, max_size=12), who=st.sampled_from(["alice", "bob"]),
       op=st.sampled_from(list(Operation)), rtype=st.sampled_from([TOPIC, GROUP, CLUSTER]),
       name=st.sampled_from(["a", "ab", "abc", "b", "c"]), anonymous=st.booleans())
def test_authorizer_agrees_with_matching_every_rule(
        raw: list[tuple[str, Operation, ResourceType, str, bool]], who: str, op: Operation,
        rtype: ResourceType, name: str, anonymous: bool) -> None:
    """The Authorizer's index gives the answer of trying every rule one by one."""
    rules = []
    for p, rop, rt, rname, prefix in raw:
        try:
            rules.append(AclRule.parse(p, rop, rt, "" if rt is CLUSTER else rname,
                                       "prefix" if prefix and rt is not CLUSTER else "literal"))
        except ValueError:
            continue
    principal = ANONYMOUS if anonymous else Principal(who, "token")
    asked = "" if rtype is CLUSTER else name
    expected = any(r.matches(principal.name, op, rtype, asked) for r in rules
                   if not (anonymous and r.principal == "*"))
    _as(principal)
    assert _authz(*rules).allowed(op, rtype, asked) is expected
