"""Access control rules: what they say, how they are checked for sense, and what they match.

PURE: no gRPC, no I/O. A rule ALLOWS one principal (or every authenticated principal, "*") one
operation on the resources one name (literal) or one name prefix (prefix) picks out. There are
no deny rules: when ACLs are on, whatever no rule allows is denied. The authorizer
(node/security/authz.py) applies them; storage (a file, or the metadata Raft group) keeps
them as plain strings (``AclRule.key()``), which is the form ``rillet.cluster.metadata``
carries without importing this module.

Implied operations (as Kafka does): a principal that may produce, consume, replay, alter or
delete a topic may also describe it (producers and consumers must find the partition leaders),
and a principal that may use, alter or delete a group may describe it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

ANY_PRINCIPAL = "*"
MAX_PRINCIPAL_CHARS = 256
MAX_RESOURCE_CHARS = 249
_NAME_RE = re.compile(r"[a-zA-Z0-9._-]*")


class AclError(ValueError):
    """A rule (or a part of one) that does not make sense; the message says which part."""


class Operation(enum.StrEnum):
    """What a rule allows (the values are the names used by the CLI, files and commands).
    String enums: their hash is str's (C), where a plain Enum's runs Python code, and the
    authorizer hashes them on every check."""

    PRODUCE = "produce"
    CONSUME = "consume"
    REPLAY = "replay"
    DESCRIBE = "describe"
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"
    GROUP = "group"
    CLUSTER_ADMIN = "cluster_admin"


class ResourceType(enum.StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


class PatternType(enum.StrEnum):
    """LITERAL: the resource whose name is exactly the rule's; PREFIX: every resource whose
    name starts with it."""

    LITERAL = "literal"
    PREFIX = "prefix"


#: Which operations make sense on which resource type (anything else is refused when added).
OPERATIONS_ON: dict[ResourceType, frozenset[Operation]] = {
    ResourceType.TOPIC: frozenset({
        Operation.PRODUCE, Operation.CONSUME, Operation.REPLAY, Operation.DESCRIBE,
        Operation.CREATE, Operation.DELETE, Operation.ALTER}),
    ResourceType.GROUP: frozenset({
        Operation.GROUP, Operation.DESCRIBE, Operation.ALTER, Operation.DELETE}),
    ResourceType.CLUSTER: frozenset({Operation.CLUSTER_ADMIN}),
}

#: Operations that imply DESCRIBE on the same resource.
IMPLIES_DESCRIBE = frozenset({
    Operation.PRODUCE, Operation.CONSUME, Operation.REPLAY, Operation.ALTER, Operation.DELETE,
    Operation.GROUP})

# How a denial reads: "principal 'bob' may not <verb> topic 'orders'".
_VERBS = {
    Operation.PRODUCE: "produce to", Operation.CONSUME: "consume from",
    Operation.REPLAY: "replay", Operation.DESCRIBE: "describe", Operation.CREATE: "create",
    Operation.DELETE: "delete", Operation.ALTER: "alter", Operation.GROUP: "use",
    Operation.CLUSTER_ADMIN: "administer",
}


def _enum(cls: type[enum.Enum], value: object, what: str) -> enum.Enum:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value.strip().lower().replace("-", "_"))
        except ValueError:
            pass
    known = ", ".join(m.value for m in cls)
    raise AclError(f"unknown {what} {value!r}; known: {known}")


def parse_operation(value: object) -> Operation:
    """``"produce"`` -> Operation.PRODUCE (case and '-'/'_' forgiven); AclError names the
    known ones."""
    op = _enum(Operation, value, "operation")
    assert isinstance(op, Operation)
    return op


def parse_resource_type(value: object) -> ResourceType:
    rt = _enum(ResourceType, value, "resource type")
    assert isinstance(rt, ResourceType)
    return rt


def parse_pattern(value: object) -> PatternType:
    pt = _enum(PatternType, value, "pattern type")
    assert isinstance(pt, PatternType)
    return pt


def check_principal(name: str) -> str:
    """A principal of a rule: a certificate common name or a token's principal, or "*"."""
    if not name:
        raise AclError("principal must not be empty (use '*' for any authenticated principal)")
    if len(name) > MAX_PRINCIPAL_CHARS:
        raise AclError(f"principal is {len(name)} characters long; the limit is "
                       f"{MAX_PRINCIPAL_CHARS}")
    if not name.isprintable() or name != name.strip():
        raise AclError(f"principal {name!r} must be printable, without leading or trailing "
                       "spaces")
    if ANY_PRINCIPAL in name and name != ANY_PRINCIPAL:
        raise AclError(f"principal {name!r}: '*' stands alone (any authenticated principal); "
                       "rules do not match principal prefixes")
    return name


@dataclass(frozen=True, slots=True)
class AclRule:
    """Allow ``principal`` to ``operation`` the ``resource_type`` resources ``resource_name``
    names (exactly, or as a prefix). The cluster resource has the empty name."""

    principal: str
    operation: Operation
    resource_type: ResourceType
    resource_name: str = ""
    pattern: PatternType = PatternType.LITERAL

    @classmethod
    def parse(cls, principal: str, operation: object, resource_type: object,
              resource_name: str = "", pattern: object = PatternType.LITERAL) -> AclRule:
        """Build and check a rule from loose values (CLI, proto, file); AclError says what is
        wrong."""
        rule = cls(check_principal(principal), parse_operation(operation),
                   parse_resource_type(resource_type), resource_name, parse_pattern(pattern))
        rule.check()
        return rule

    def check(self) -> None:
        """Raise AclError unless the rule makes sense (its operation fits its resource type,
        its name follows the topic/group naming rules)."""
        check_principal(self.principal)
        rt, name = self.resource_type, self.resource_name
        if self.operation not in OPERATIONS_ON[rt]:
            allowed = ", ".join(sorted(o.value for o in OPERATIONS_ON[rt]))
            raise AclError(f"operation {self.operation.value} does not apply to a {rt.value}; "
                           f"a {rt.value} rule takes: {allowed}")
        if rt is ResourceType.CLUSTER:
            if name or self.pattern is not PatternType.LITERAL:
                raise AclError("a cluster rule names no resource and no prefix")
            return
        if self.pattern is PatternType.LITERAL and not name:
            raise AclError(f"a {rt.value} rule needs a {rt.value} name (or --prefix with a "
                           "name prefix)")
        if len(name) > MAX_RESOURCE_CHARS:
            raise AclError(f"{rt.value} name is {len(name)} characters long; the limit is "
                           f"{MAX_RESOURCE_CHARS}")
        if not _NAME_RE.fullmatch(name):
            raise AclError(f"{rt.value} name {name!r} may only contain letters, digits, '.', "
                           "'_' and '-'")

    def matches(self, principal: str, operation: Operation, resource_type: ResourceType,
                name: str) -> bool:
        """Does this rule allow ``principal`` to ``operation`` resource (type, name)?
        ``principal`` is an authenticated name ("*" rules match any)."""
        if self.principal != principal and self.principal != ANY_PRINCIPAL:
            return False
        if self.resource_type is not resource_type:
            return False
        if self.operation is not operation and not (
                operation is Operation.DESCRIBE and self.operation in IMPLIES_DESCRIBE):
            return False
        return self.covers(name)

    def covers(self, name: str) -> bool:
        """Does the rule's resource pattern take in the resource called ``name``?"""
        if self.resource_type is ResourceType.CLUSTER:
            return True
        if self.pattern is PatternType.PREFIX:
            return name.startswith(self.resource_name)
        return name == self.resource_name

    def key(self) -> tuple[str, str, str, str, str]:
        """The rule as five strings (storage, sorting, equality across the wire)."""
        return (self.principal, self.operation.value, self.resource_type.value,
                self.resource_name, self.pattern.value)

    @classmethod
    def from_key(cls, key: Iterable[str]) -> AclRule:
        principal, op, rt, name, pattern = key
        return cls.parse(principal, op, rt, name, pattern)

    def describe(self) -> str:
        """``alice may produce on topic orders`` / ``* may consume on topics orders.*``."""
        if self.resource_type is ResourceType.CLUSTER:
            target = "the cluster"
        elif self.pattern is PatternType.PREFIX:
            target = f"{self.resource_type.value}s {self.resource_name}*"
        else:
            target = f"{self.resource_type.value} {self.resource_name}"
        return f"{self.principal} may {self.operation.value} on {target}"


def resource_text(resource_type: ResourceType, name: str) -> str:
    """``topic 'orders'``, ``group 'billing'``, ``the cluster``."""
    if resource_type is ResourceType.CLUSTER:
        return "the cluster"
    return f"{resource_type.value} {name!r}"


def denial(principal: str, operation: Operation, resource_type: ResourceType,
           name: str) -> str:
    """``principal 'bob' may not produce to topic 'orders' (no ACL allows operation
    produce on it)``: what PERMISSION_DENIED says."""
    return (f"principal {principal!r} may not {_VERBS[operation]} "
            f"{resource_text(resource_type, name)} (no ACL allows operation "
            f"{operation.value} on it)")


def filter_rules(rules: Iterable[AclRule], principal: str = "",
                 resource_type: ResourceType | None = None,
                 resource_name: str = "") -> list[AclRule]:
    """The rules of ``principal`` (all when empty) on ``resource_type`` (all when None) that
    concern the resource ``resource_name`` (all when empty: literal rules naming it and
    prefix rules covering it), sorted."""
    out = []
    for r in rules:
        if principal and r.principal != principal:
            continue
        if resource_type is not None and r.resource_type is not resource_type:
            continue
        if resource_name and not r.covers(resource_name):
            continue
        out.append(r)
    return sorted(out, key=AclRule.key)
