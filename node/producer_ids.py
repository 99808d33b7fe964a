"""Producer ids of a single node (cluster mode takes them from the metadata group instead).

Ids are handed out from blocks: before the first id of a block is used, the end of the block is
written to ``<data_dir>/producer-ids`` (atomically), so after a crash the node continues after
the last block and never hands out an id twice.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rillet.node.storage.atomic import write_atomic

BLOCK = 1000
FILE_NAME = "producer-ids"


class ProducerIdAllocator:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._next = 0
        self._end = 0  # exclusive end of the block reserved on disk
        self._lock = asyncio.Lock()
        self._loaded = False

    def _load(self) -> None:
        try:
            self._next = self._end = int(json.loads(self.path.read_text())["next_block"])
        except FileNotFoundError:
            self._next = self._end = 0
        self._loaded = True

    async def allocate(self) -> int:
        async with self._lock:
            if not self._loaded:
                await asyncio.to_thread(self._load)
            if self._next >= self._end:
                end = self._next + BLOCK
                await asyncio.to_thread(
                    write_atomic, self.path, json.dumps({"next_block": end}).encode())
                self._end = end
            pid = self._next
            self._next += 1
            return pid
