"""ACL rules (rillet.node.security.acl): parsing with clear messages, and matching: a rule
allows exactly what it names (literal vs prefix, "*" principal, implied describe)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rillet.cluster import metadata as md
from rillet.node.security.acl import (
    IMPLIES_DESCRIBE,
    OPERATIONS_ON,
    AclError,
    AclRule,
    Operation,
    PatternType,
    ResourceType,
    denial,
    filter_rules,
)

TOPIC, GROUP, CLUSTER = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
names = st.text(alphabet="ab.-_1", min_size=1, max_size=6)
principals = st.sampled_from(["alice", "bob", "carol"])


def test_parse_forgives_case_and_dashes() -> None:
    rule = AclRule.parse("alice", "Cluster-Admin", "CLUSTER")
    assert rule == AclRule("alice", Operation.CLUSTER_ADMIN, CLUSTER, "", PatternType.LITERAL)
    assert AclRule.parse("bob", "produce", "topic", "orders.", "prefix").pattern is (
        PatternType.PREFIX)


@pytest.mark.parametrize("args, message", [
    (("alice", "fly", "topic", "t"), "unknown operation 'fly'; known: produce, consume"),
    (("alice", "produce", "table", "t"), "unknown resource type 'table'"),
    (("alice", "produce", "topic", "t", "glob"), "unknown pattern type 'glob'"),
    (("", "produce", "topic", "t"), "principal must not be empty"),
    (("al*", "produce", "topic", "t"), "'*' stands alone"),
    ((" alice", "produce", "topic", "t"), "leading or trailing"),
    (("alice", "produce", "group", "g"), "operation produce does not apply to a group"),
    (("alice", "cluster_admin", "topic", "t"), "does not apply to a topic"),
    (("alice", "produce", "topic", ""), "needs a topic name"),
    (("alice", "produce", "topic", "a b"), "may only contain letters"),
    (("alice", "produce", "topic", "x" * 250), "the limit is 249"),
    (("alice", "cluster_admin", "cluster", "c"), "names no resource"),
])
def test_bad_rules_say_what_is_wrong(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(AclError, match=message.replace("*", r"\*")):
        AclRule.parse(*args)


def test_empty_prefix_covers_every_topic() -> None:
    rule = AclRule.parse("ops", "describe", "topic", "", "prefix")
    assert rule.matches("ops", Operation.DESCRIBE, TOPIC, "anything")


def test_denial_names_principal_operation_and_resource() -> None:
    assert denial("bob", Operation.PRODUCE, TOPIC, "orders") == (
        "principal 'bob' may not produce to topic 'orders' (no ACL allows operation produce "
        "on it)")
    assert "administer the cluster" in denial("bob", Operation.CLUSTER_ADMIN, CLUSTER, "")


@given(principal=principals, op=st.sampled_from(list(Operation)),
       rtype=st.sampled_from([TOPIC, GROUP]), name=names,
       pattern=st.sampled_from(list(PatternType)),
       who=principals, asked_op=st.sampled_from(list(Operation)),
       asked_type=st.sampled_from(list(ResourceType)), asked=names)
def test_a_rule_allows_exactly_what_it_names(
        principal: str, op: Operation, rtype: ResourceType, name: str, pattern: PatternType,
        who: str, asked_op: Operation, asked_type: ResourceType, asked: str) -> None:
    if op not in OPERATIONS_ON[rtype]:
        with pytest.raises(AclError):
            AclRule.parse(principal, op, rtype, name, pattern)
        return
    rule = AclRule.parse(principal, op, rtype, name, pattern)
    covers = asked == name if pattern is PatternType.LITERAL else asked.startswith(name)
    op_ok = asked_op is op or (asked_op is Operation.DESCRIBE and op in IMPLIES_DESCRIBE)
    expected = who == principal and asked_type is rtype and op_ok and covers
    assert rule.matches(who, asked_op, asked_type, asked) is expected
    # The key round-trips, and a literal rule never covers a longer name.
    assert AclRule.from_key(rule.key()) == rule
    if pattern is PatternType.LITERAL:
        assert not rule.matches(principal, op, rtype, name + "x")


@given(op=st.sampled_from(sorted(OPERATIONS_ON[TOPIC], key=lambda o: o.value)), name=names,
       who=principals)
def test_star_principal_matches_any_name(op: Operation, name: str, who: str) -> None:
    rule = AclRule.parse("*", op, TOPIC, name)
    assert rule.matches(who, op, TOPIC, name)
    assert not AclRule.parse("alice", op, TOPIC, name).matches("*", op, TOPIC, name + "z")


def test_cluster_rule_covers_the_cluster_only() -> None:
    rule = AclRule.parse("root", "cluster_admin", "cluster")
    assert rule.matches("root", Operation.CLUSTER_ADMIN, CLUSTER, "")
    assert not rule.matches("root", Operation.CLUSTER_ADMIN, TOPIC, "")
    assert rule.describe() == "root may cluster_admin on the cluster"


def test_filter_by_principal_type_and_resource() -> None:
    rules = [AclRule.parse("alice", "produce", "topic", "orders"),
             AclRule.parse("alice", "consume", "topic", "ord", "prefix"),
             AclRule.parse("bob", "group", "group", "billing"),
             AclRule.parse("bob", "consume", "topic", "payments")]
    assert [r.principal for r in filter_rules(rules, "bob")] == ["bob", "bob"]
    assert len(filter_rules(rules, resource_type=TOPIC)) == 3
    # A resource name picks the literal rules naming it and the prefixes covering it.
    assert {r.operation for r in filter_rules(rules, resource_name="orders")} == {
        Operation.PRODUCE, Operation.CONSUME}


def test_vocabulary_matches_the_metadata_state() -> None:
    """cluster/metadata.py may not import this module; it keeps its own copy of the
    vocabulary, which must say the same."""
    assert md.ACL_OPERATIONS_ON == {
        rt.value: frozenset(o.value for o in ops) for rt, ops in OPERATIONS_ON.items()}
    assert md.ACL_PATTERNS == tuple(p.value for p in PatternType)
