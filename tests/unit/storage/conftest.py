"""Fixtures for the storage tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rillet.node.storage.log import LogConfig, PartitionLog

from .helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_log(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., PartitionLog]]:
    """Open logs in tmp_path/p0 with a fake clock; every one still open is closed at the end."""
    opened: list[PartitionLog] = []

    def _open(config: LogConfig | None = None, directory: Path | None = None) -> PartitionLog:
        log = PartitionLog.open(directory or tmp_path / "p0", config or LogConfig(),
                                clock_ms=clock)
        opened.append(log)
        return log

    yield _open
    for log in opened:
        log.abandon()
