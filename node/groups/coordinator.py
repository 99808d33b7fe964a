"""The group coordinator as a pure state machine: membership, sessions and the cooperative
sticky assignment of partitions to members.

No gRPC, no asyncio, no clock: the servicer feeds it events (``join``, ``heartbeat``,
``leave``, ``stream_closed``, ``tick``) with the current monotonic time in seconds, and each
call returns an ``Output``: the assignments to send, the members whose streams must end, and
the groups whose generation moved (to be stored durably BEFORE anything is sent, so a later
coordinator never hands out the same generation twice).

Ownership. Each partition of a group is held by at most one member at a time: either
``assigned`` to it or being ``revoked`` from it. A partition that moves is first revoked (the
old owner gets an assignment without it); it is released when the owner's heartbeat no longer
lists it, when the owner leaves or its stream ends, or when its rebalance timeout passes. Only
then is it assigned to the new owner. Members keep every partition that does not move.

Assignment (``_target``). Sticky and balanced: every partition keeps its previous target
owner when that member is still there and subscribes to its topic; partitions without one go
to the eligible member with the fewest; then single partitions move from the member with the
most to the one with the fewest (an eligible pair) until counts differ by at most one. So a
join moves only the partitions the newcomer takes, and a leave only the leaver's ones.
Disconnected static members keep their partitions but take part in no move.

Generations. A group's generation increases once per event that changes any member's
partitions. Each held partition remembers the generation it was assigned in; a commit with
generation g is accepted for a partition the member holds now and has held since g or
earlier (``check_commit``), so a member that lost a partition (and maybe got it back later)
cannot commit it with what it knew before.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rillet.node.groups.errors import (
    FencedError,
    GroupNotEmptyError,
    InvalidGroupError,
    UnknownGroupError,
)

TP = tuple[str, int]

DEFAULT_SESSION_TIMEOUT_MS = 10_000
SESSION_TIMEOUT_RANGE_MS = (1_000, 300_000)
DEFAULT_REBALANCE_TIMEOUT_MS = 30_000
REBALANCE_TIMEOUT_RANGE_MS = (1_000, 600_000)
MAX_HEARTBEAT_INTERVAL_MS = 3_000
MAX_ID_CHARS = 255
MAX_TOPICS = 1_000
MAX_GROUP_NAME_LENGTH = 249
"""The most a group id may ever be (as topic names); the node setting max_group_name_length
can only lower it, so ids that the metadata group stores stay valid on every node."""
_NAME_RE = re.compile(r"[a-zA-Z0-9._-]+")

STABLE, REBALANCING, EMPTY = "stable", "rebalancing", "empty"


def validate_group(group: str, max_length: int = MAX_GROUP_NAME_LENGTH) -> None:
    """Group ids follow the topic-name rules (they appear in metrics, logs and the CLI), at
    most `max_length` characters (the node's max_group_name_length). The length is checked
    first, so a hostile megabyte-long id costs no regex and is not echoed back whole."""
    if len(group) > max_length:
        raise InvalidGroupError(
            f"group id is {len(group)} characters long; the limit is {max_length} "
            "(max_group_name_length)")
    if group in (".", "..") or not _NAME_RE.fullmatch(group):
        raise InvalidGroupError(
            f"group id {group!r} must be 1-{max_length} letters, digits, '.', '_' or '-' "
            "(and not '.' or '..')")


def heartbeat_interval_ms(session_timeout_ms: int) -> int:
    """A third of the session, at most 3 s: two heartbeats may be lost before expiry."""
    return max(100, min(MAX_HEARTBEAT_INTERVAL_MS, session_timeout_ms // 3))


@dataclass(frozen=True)
class JoinRequest:
    """A ``JoinGroup`` message, checked by ``Coordinator.join``."""

    group: str
    topics: tuple[str, ...]
    instance_id: str = ""
    session_timeout_ms: int = 0
    rebalance_timeout_ms: int = 0
    member_id: str = ""
    owned: frozenset[TP] = frozenset()
    client_id: str = ""


@dataclass(frozen=True)
class AssignmentOut:
    """One ``Assignment`` message for one member."""

    group: str
    member_id: str
    generation: int
    partitions: tuple[TP, ...]
    heartbeat_interval_ms: int


@dataclass
class Output:
    """What an event asks the servicer to do, in this order: store ``generations``
    (group -> new generation), end the streams of ``expired`` (group, member id, reason),
    send ``assignments``."""

    assignments: list[AssignmentOut] = field(default_factory=list)
    expired: list[tuple[str, str, str]] = field(default_factory=list)
    generations: dict[str, int] = field(default_factory=dict)

    def merge(self, other: Output) -> None:
        self.assignments.extend(other.assignments)
        self.expired.extend(other.expired)
        self.generations.update(other.generations)


@dataclass
class Member:
    member_id: str
    instance_id: str
    client_id: str
    topics: tuple[str, ...]
    session_s: float
    rebalance_s: float
    last_seen: float
    connected: bool = True
    # Stream incarnation: a close of an older stream of the same member is ignored.
    token: int = 0
    # Partition -> generation it was assigned in.
    assigned: dict[TP, int] = field(default_factory=dict)
    # Partition -> (deadline to give it up, generation it was assigned in).
    revoking: dict[TP, tuple[float, int]] = field(default_factory=dict)
    # What the member was last told (None: nothing yet).
    sent: tuple[TP, ...] | None = None

    def holds(self) -> set[TP]:
        return set(self.assigned) | set(self.revoking)


@dataclass
class GroupState:
    name: str
    generation: int
    members: dict[str, Member] = field(default_factory=dict)
    # Where each partition should end up (the assignor's answer; sticky across events).
    target: dict[TP, str] = field(default_factory=dict)
    # Until then only partitions that members claim back are assigned (coordinator moved).
    grace_until: float = 0.0
    # (topic, partition count) of the subscribed topics at the last reconcile: a tick
    # reconciles again when a topic appears, grows or goes away.
    shape: tuple[tuple[str, int | None], ...] = ()


@dataclass(frozen=True)
class MemberView:
    member_id: str
    instance_id: str
    client_id: str
    assigned: tuple[TP, ...]
    disconnected: bool


@dataclass(frozen=True)
class GroupView:
    group: str
    state: str
    generation: int
    topics: tuple[str, ...]
    members: tuple[MemberView, ...]
    # Partition -> member that holds it now.
    owners: dict[TP, str]


class Coordinator:
    """Every group this node coordinates. See the module docstring.

    ``partitions_of(topic)`` gives a topic's partition count (None: no such topic).
    ``stored_generation(group)`` gives the last durably stored generation of a group (0 if
    none): a group new to this coordinator continues from it. Groups that had one (they
    existed under an earlier coordinator or before a restart) wait ``rejoin_grace_s`` from
    ``now`` for their members to come back and claim what they own before anything is
    assigned afresh.
    """

    def __init__(self, partitions_of: Callable[[str], int | None],
                 stored_generation: Callable[[str], int], *, now: float = 0.0,
                 rejoin_grace_s: float = 0.0,
                 new_member_id: Callable[[str], str] | None = None,
                 max_name_length: int = MAX_GROUP_NAME_LENGTH) -> None:
        self.partitions_of = partitions_of
        self.max_name_length = max_name_length
        self.stored_generation = stored_generation
        self.started = now
        self.rejoin_grace_s = rejoin_grace_s
        self.new_member_id = new_member_id or (
            lambda client: f"{client or 'member'}-{uuid.uuid4().hex[:12]}")
        self.groups: dict[str, GroupState] = {}
        self._tokens = 0

    # -- events -----------------------------------------------------------------------------

    def join(self, req: JoinRequest, now: float) -> tuple[Member, Output]:
        """A member's stream opened (or reopened) with ``JoinGroup``. Returns the member (its
        ``token`` identifies this stream) and what to send; the joining member always gets an
        assignment. Raises InvalidGroupError for a join that breaks the rules."""
        session_ms, rebalance_ms = self._check_join(req)
        group = self.groups.get(req.group)
        if group is None:
            stored = self.stored_generation(req.group)
            grace = self.started + self.rejoin_grace_s if stored > 0 else 0.0
            group = self.groups[req.group] = GroupState(req.group, stored, grace_until=grace)
        member = None
        if req.instance_id:
            member = next((m for m in group.members.values()
                           if m.instance_id == req.instance_id), None)
        if member is None and req.member_id:
            member = group.members.get(req.member_id)
            if member is not None and member.instance_id != req.instance_id:
                raise InvalidGroupError(
                    f"member {req.member_id!r} of group {req.group!r} joined with instance id "
                    f"{member.instance_id!r}, not {req.instance_id!r}")
        if member is None:
            member_id = req.member_id or self.new_member_id(req.client_id)
            member = Member(member_id, req.instance_id, req.client_id, req.topics,
                            session_ms / 1000.0, rebalance_ms / 1000.0, now)
            group.members[member_id] = member
        self._tokens += 1
        member.token = self._tokens
        member.connected = True
        member.last_seen = now
        member.topics = req.topics
        member.client_id = req.client_id
        member.session_s = session_ms / 1000.0
        member.rebalance_s = rebalance_ms / 1000.0
        member.sent = None  # a new stream: tell it everything
        # Claims: what the member still owns (coordinator moved, stream broke) and nobody
        # else holds becomes its own again, at the current generation.
        held = self._held(group)
        claimed: list[tuple[Member, TP]] = []
        for tp in sorted(req.owned):
            if tp not in held and self._exists(tp) and tp[0] in member.topics:
                member.assigned[tp] = group.generation
                group.target[tp] = member.member_id
                held.add(tp)
                claimed.append((member, tp))
        out = self._reconcile(group, now, claimed=claimed)
        if not any(a.member_id == member.member_id for a in out.assignments):
            out.assignments.append(self._assignment(group, member))
        return member, out

    def heartbeat(self, group_name: str, member_id: str, owned: Iterable[TP],
                  now: float) -> Output:
        """A heartbeat: the member is alive and still reads ``owned``; revoked partitions it
        no longer lists are released."""
        group, member = self._member(group_name, member_id)
        member.last_seen = now
        still = set(owned)
        for tp in [tp for tp in member.revoking if tp not in still]:
            del member.revoking[tp]
        return self._reconcile(group, now)

    def leave(self, group_name: str, member_id: str, now: float) -> Output:
        """The member leaves now: everything it held is released and reassigned."""
        group, _member = self._member(group_name, member_id)
        del group.members[member_id]
        return self._after_removal(group, now)

    def stream_closed(self, group_name: str, member_id: str, token: int,
                      now: float) -> Output:
        """A member's stream ended. Dynamic members leave; static ones keep their partitions,
        unread, until their session times out. A close of a replaced stream is ignored."""
        group = self.groups.get(group_name)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None or member.token != token:
            return Output()
        if member.instance_id:
            member.connected = False
            member.last_seen = now
            # Nothing reads a revoked partition any more: release it.
            member.revoking.clear()
            return self._reconcile(group, now)
        del group.members[member_id]
        return self._after_removal(group, now)

    def tick(self, now: float) -> Output:
        """Time passes: expire silent members, force overdue revocations, end grace."""
        out = Output()
        for group in list(self.groups.values()):
            expired = [m for m in group.members.values() if now - m.last_seen > m.session_s]
            for m in expired:
                del group.members[m.member_id]
                if m.connected:
                    out.expired.append((group.name, m.member_id,
                                        f"no heartbeat for {m.session_s * 1000:.0f} ms"))
            forced = False
            for m in group.members.values():
                for tp in [tp for tp, (deadline, _g) in m.revoking.items() if now >= deadline]:
                    del m.revoking[tp]
                    forced = True
            grace_ended = bool(group.grace_until) and now >= group.grace_until
            if grace_ended:
                group.grace_until = 0.0
            if expired:
                out.merge(self._after_removal(group, now))
            elif forced or grace_ended or self._shape(group) != group.shape:
                out.merge(self._reconcile(group, now))
        return out

    def drop_all(self) -> list[tuple[str, str]]:
        """This node stops coordinating: forget every group; returns (group, member) of the
        connected members, whose streams must end."""
        out = [(g.name, m.member_id) for g in self.groups.values() for m in g.members.values()
               if m.connected]
        self.groups.clear()
        return out

    # -- queries ----------------------------------------------------------------------------

    def check_commit(self, group_name: str, member_id: str, generation: int,
                     partitions: Iterable[TP]) -> None:
        """Raise unless this commit may be stored: an outsider (no member id, generation -1)
        only while the group has no members; a member only for partitions it holds now and
        has held since ``generation`` or earlier."""
        validate_group(group_name, self.max_name_length)
        group = self.groups.get(group_name)
        if not member_id:
            if generation != -1:
                raise FencedError("a commit without a member id must use generation -1")
            if group is not None and group.members:
                raise GroupNotEmptyError(
                    f"group {group_name!r} has {len(group.members)} members; only they may "
                    "commit its offsets")
            return
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            raise FencedError(f"member {member_id!r} is not in group {group_name!r} "
                              "(session expired, or the coordinator moved): join again")
        if generation > group.generation or generation < 0:
            raise FencedError(f"generation {generation} of group {group_name!r} does not "
                              f"exist (current {group.generation})")
        for tp in partitions:
            since = member.assigned.get(tp)
            if since is None and tp in member.revoking:
                since = member.revoking[tp][1]
            if since is None:
                raise FencedError(f"member {member_id!r} does not own {tp[0]}-{tp[1]} in "
                                  f"group {group_name!r}")
            if generation < since:
                raise FencedError(
                    f"{tp[0]}-{tp[1]} was assigned to member {member_id!r} in generation "
                    f"{since}; a commit from generation {generation} is stale")

    def is_empty(self, group_name: str) -> bool:
        group = self.groups.get(group_name)
        return group is None or not group.members

    def generation(self, group_name: str) -> int:
        group = self.groups.get(group_name)
        return group.generation if group is not None else self.stored_generation(group_name)

    def describe(self, group_name: str) -> GroupView | None:
        group = self.groups.get(group_name)
        if group is None:
            return None
        owners: dict[TP, str] = {}
        members = []
        for m in sorted(group.members.values(), key=lambda m: m.member_id):
            for tp in m.holds():
                owners[tp] = m.member_id
            members.append(MemberView(m.member_id, m.instance_id, m.client_id,
                                      tuple(sorted(m.holds())), not m.connected))
        topics = sorted({t for m in group.members.values() for t in m.topics})
        return GroupView(group.name, self._state(group), group.generation, tuple(topics),
                         tuple(members), owners)

    # -- internals --------------------------------------------------------------------------

    def _check_join(self, req: JoinRequest) -> tuple[int, int]:
        validate_group(req.group, self.max_name_length)
        if not req.topics:
            raise InvalidGroupError("JoinGroup names no topics")
        if len(req.topics) > MAX_TOPICS or len(set(req.topics)) != len(req.topics):
            raise InvalidGroupError(f"JoinGroup topics must be distinct (at most {MAX_TOPICS})")
        for name, value in (("instance_id", req.instance_id), ("member_id", req.member_id),
                            ("client_id", req.client_id)):
            if len(value) > MAX_ID_CHARS or not value.isprintable():
                raise InvalidGroupError(
                    f"{name} must be at most {MAX_ID_CHARS} printable characters")
        session = req.session_timeout_ms or DEFAULT_SESSION_TIMEOUT_MS
        rebalance = req.rebalance_timeout_ms or DEFAULT_REBALANCE_TIMEOUT_MS
        lo, hi = SESSION_TIMEOUT_RANGE_MS
        if not lo <= session <= hi:
            raise InvalidGroupError(
                f"session_timeout_ms must be in [{lo}, {hi}], got {session}")
        lo, hi = REBALANCE_TIMEOUT_RANGE_MS
        if not lo <= rebalance <= hi:
            raise InvalidGroupError(
                f"rebalance_timeout_ms must be in [{lo}, {hi}], got {rebalance}")
        return session, rebalance

    def _member(self, group_name: str, member_id: str) -> tuple[GroupState, Member]:
        group = self.groups.get(group_name)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            raise UnknownGroupError(f"member {member_id!r} is not in group {group_name!r}")
        return group, member

    def _exists(self, tp: TP) -> bool:
        count = self.partitions_of(tp[0])
        return count is not None and 0 <= tp[1] < count

    def _held(self, group: GroupState) -> set[TP]:
        out: set[TP] = set()
        for m in group.members.values():
            out |= m.holds()
        return out

    def _state(self, group: GroupState) -> str:
        if not group.members:
            return EMPTY
        for m in group.members.values():
            if m.revoking:
                return REBALANCING
        for tp, owner in group.target.items():
            target = group.members.get(owner)
            if target is not None and tp not in target.assigned:
                return REBALANCING
        return STABLE

    def _after_removal(self, group: GroupState, now: float) -> Output:
        if not group.members:
            # Nothing to coordinate: forget it (its offsets and generation are stored).
            del self.groups[group.name]
            return Output()
        return self._reconcile(group, now, removed=True)

    def _assignment(self, group: GroupState, m: Member) -> AssignmentOut:
        parts = tuple(sorted(m.assigned))
        m.sent = parts
        return AssignmentOut(group.name, m.member_id, group.generation, parts,
                             heartbeat_interval_ms(int(m.session_s * 1000)))

    def _shape(self, group: GroupState) -> tuple[tuple[str, int | None], ...]:
        topics = sorted({t for m in group.members.values() for t in m.topics})
        return tuple((t, self.partitions_of(t)) for t in topics)

    def _partitions(self, group: GroupState) -> dict[TP, list[str]]:
        """Every partition of the topics the members subscribe to -> eligible members
        (connected ones, by id)."""
        out: dict[TP, list[str]] = {}
        for topic in sorted({t for m in group.members.values() for t in m.topics}):
            count = self.partitions_of(topic)
            if count is None:
                continue
            eligible = sorted(m.member_id for m in group.members.values()
                              if m.connected and topic in m.topics)
            for p in range(count):
                out[(topic, p)] = eligible
        return out

    def _target(self, group: GroupState, parts: dict[TP, list[str]], now: float
                ) -> dict[TP, str]:
        members = group.members
        target: dict[TP, str] = {}
        # Sticky: previous targets, then what members actually hold.
        for tp, owner in group.target.items():
            m = members.get(owner)
            if tp in parts and m is not None and tp[0] in m.topics:
                target[tp] = owner
        for m in members.values():
            for tp in m.holds():
                if tp in parts and tp not in target and tp[0] in m.topics:
                    target[tp] = m.member_id
        if now < group.grace_until:
            return target
        active = {m.member_id for m in members.values() if m.connected}
        count = {mid: 0 for mid in active}
        for owner in target.values():
            if owner in count:
                count[owner] += 1
        for tp in sorted(parts):
            if tp in target or not parts[tp]:
                continue
            best = min(parts[tp], key=lambda mid: (count[mid], mid))
            target[tp] = best
            count[best] += 1
        # Balance: move one partition at a time from the fullest member to an emptier
        # eligible one, until no such move narrows the spread (none can once counts differ by
        # at most one).
        held = {mid: members[mid].holds() for mid in count}
        for _ in range(len(parts) + 1):
            if not count or max(count.values()) - min(count.values()) <= 1:
                break
            moved = False
            for donor in sorted(count, key=lambda mid: (-count[mid], mid)):
                # Prefer moving a partition the donor does not actually hold yet.
                mine = sorted((tp for tp, o in target.items() if o == donor),
                              key=lambda tp: (tp in held[donor], tp))
                for tp in mine:
                    takers = [mid for mid in parts.get(tp, ()) if count[mid] + 1 < count[donor]]
                    if takers:
                        taker = min(takers, key=lambda mid: (count[mid], mid))
                        target[tp] = taker
                        count[donor] -= 1
                        count[taker] += 1
                        moved = True
                        break
                if moved:
                    break
            if not moved:
                break
        return target

    def _reconcile(self, group: GroupState, now: float, *,
                   claimed: Iterable[tuple[Member, TP]] = (), removed: bool = False) -> Output:
        """Bring the members' partitions towards the target: revoke what must move, assign
        what nobody holds. Claimed partitions and removed members count as changes (the
        generation moves, so nothing committed under the old one is taken for new)."""
        group.shape = self._shape(group)
        parts = self._partitions(group)
        claimed = list(claimed)
        new: list[tuple[Member, TP]] = []
        changed = removed or bool(claimed)
        # Partitions of deleted topics (or beyond a shrunk count) are simply gone.
        for m in group.members.values():
            for tp in [tp for tp in m.assigned if tp not in parts]:
                del m.assigned[tp]
                changed = True
            for tp in [tp for tp in m.revoking if tp not in parts]:
                del m.revoking[tp]
        target = self._target(group, parts, now)
        group.target = target
        # Revoke first.
        for m in group.members.values():
            for tp in [tp for tp in m.assigned if target.get(tp) != m.member_id]:
                since = m.assigned.pop(tp)
                if m.connected:
                    m.revoking[tp] = (now + m.rebalance_s, since)
                changed = True
        # Assign what nobody holds any more.
        held = self._held(group)
        for tp, owner in sorted(target.items()):
            m = group.members[owner]
            if tp not in held and m.connected:
                new.append((m, tp))
                held.add(tp)
        out = Output()
        if new or changed:
            group.generation += 1
            out.generations[group.name] = group.generation
            for m, tp in new:
                m.assigned[tp] = group.generation
            for m, tp in claimed:
                if tp in m.assigned:
                    m.assigned[tp] = group.generation
        for m in group.members.values():
            if m.connected and m.sent is not None and m.sent != tuple(sorted(m.assigned)):
                out.assignments.append(self._assignment(group, m))
        return out
