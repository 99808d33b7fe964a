"""Progress states and the Inflights window."""

from __future__ import annotations

from rillet.cluster.raft.progress import SHRINK_FLOOR, Inflights, Progress, ProgressState


def test_inflights_bound_by_count_and_bytes() -> None:
    inf = Inflights(max_count=3, max_bytes=100)
    inf.add(1, 10)
    inf.add(2, 10)
    assert not inf.full()
    inf.add(3, 10)
    assert inf.full()  # count
    inf.free_le(2)
    assert (len(inf), inf.bytes, inf.full()) == (1, 10, False)
    inf.add(4, 95)
    assert inf.full()  # bytes
    inf.free_first_one()
    assert (len(inf), inf.bytes) == (1, 95)
    inf.reset()
    assert (len(inf), inf.bytes) == (0, 0)


def test_probe_pauses_after_one_send() -> None:
    pr = Progress(5, Inflights(4), is_learner=False)
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(7, 30)
    assert pr.is_paused() and pr.next == 5  # probing does not move next optimistically


def test_replicate_moves_next_optimistically() -> None:
    pr = Progress(5, Inflights(2), is_learner=False)
    pr.maybe_update(4)
    pr.become_replicate()
    pr.sent_entries(7, 30)
    pr.sent_entries(9, 30)
    assert pr.next == 10 and pr.is_paused()


def test_maybe_decr_to_ignores_stale_rejections() -> None:
    pr = Progress(10, Inflights(4), is_learner=False)
    assert not pr.maybe_decr_to(5, 3)  # answers an older probe (we sent prev=9)
    assert pr.maybe_decr_to(9, 3)
    assert pr.next == 4
    pr.maybe_update(3)
    pr.become_replicate()
    assert not pr.maybe_decr_to(2, 0)  # below match: stale


def test_snapshot_state_resumes_past_snapshot() -> None:
    pr = Progress(3, Inflights(4), is_learner=False)
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21 and pr.state == ProgressState.PROBE


def test_inflights_window_halves_on_rejection_and_regrows_per_ack() -> None:
    """Rillet flow control: a real rejection halves the window (not below SHRINK_FLOOR), each
    acknowledgement that moves the match grows it by one, back to max_count."""
    inf = Inflights(max_count=64)
    assert inf.limit == 64
    inf.shrink()
    assert inf.limit == 32
    for _ in range(5):
        inf.shrink()
    assert inf.limit == SHRINK_FLOOR
    for _ in range(100):
        inf.grow()
    assert inf.limit == 64
    small = Inflights(max_count=2)
    small.shrink()
    assert small.limit == 2  # the floor never exceeds max_count
    inf.limit = 4
    for n in range(4):
        inf.add(n + 1, 1)
    assert inf.full()  # the count bound in effect is the limit
