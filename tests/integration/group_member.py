"""One consumer-group member as its own process, for the group tests.

    python tests/integration/group_member.py BOOTSTRAP TOPIC GROUP OUT.jsonl [--session-ms N]

Runs a GroupConsumer and appends one JSON object per line to OUT (flushed at once, so a kill -9
loses nothing already written), with `t` = time.time():
  {"ev": "ready", "member": id}                          after the first assignment
  {"ev": "assign" | "revoke", "tps": [[topic, p], ...]}  from the callbacks
  {"ev": "batch", "p": partition, "first": offset, "next": offset}   records handed to us
  {"ev": "closed"}                                       after a clean close (SIGTERM)
A revoke is written after reading stopped; an assign before reading starts; a batch as soon as
it is handed over: so ownership intervals bracket every batch processed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from the checkout
    sys.path.insert(0, str(ROOT))

from rillet.client.group import GroupConsumer, TopicPartition  # noqa: E402


def _emit(out: IO[str], ev: str, **fields: Any) -> None:
    out.write(json.dumps({"ev": ev, "t": time.time(), **fields}) + "\n")
    out.flush()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("group")
    ap.add_argument("out", type=Path)
    ap.add_argument("--session-ms", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = open(args.out, "a", buffering=1)  # noqa: ASYNC230 - once, before any task runs

    def tps(items: list[TopicPartition]) -> list[list[Any]]:
        return [[tp.topic, tp.partition] for tp in items]

    consumer = GroupConsumer(
        args.bootstrap, args.topic, group_id=args.group, auto_offset_reset="earliest",
        auto_commit_interval_ms=200, session_timeout_ms=args.session_ms,
        on_assign=lambda ps: _emit(out, "assign", tps=tps(ps)),
        on_revoke=lambda ps: _emit(out, "revoke", tps=tps(ps)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _emit(out, "joining")
    await consumer.start()
    _emit(out, "ready", member=consumer.member_id)
    try:
        while not stop.is_set():
            for b in await consumer.getmany(0.2):
                _emit(out, "batch", p=b.partition, first=b.first_offset, next=b.next_offset)
    finally:
        await consumer.close()
        _emit(out, "closed")
        out.close()


if __name__ == "__main__":
    asyncio.run(main())
