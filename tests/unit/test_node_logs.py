"""JSON logs: one object per line with the node and, when given, partition fields."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from rillet.node.config import ConfigError, load
from rillet.node.logs import JsonFormatter
from rillet.node.storage.log import LogConfig, PartitionLog


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("rillet.node.x", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_record_becomes_one_json_object_naming_the_node() -> None:
    line = JsonFormatter(7).format(_record("replica of %s-%d", "orders", 3,
                                           topic="orders", partition=3))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["node"] == 7 and doc["level"] == "WARNING" and doc["logger"] == "rillet.node.x"
    assert doc["msg"] == "replica of orders-3"
    assert (doc["topic"], doc["partition"]) == ("orders", 3)
    assert doc["ts"].endswith("Z") and "group" not in doc


def test_an_exception_is_kept_as_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter(0).format(record))
    assert "ValueError: boom" in doc["exc"]


def test_log_format_is_checked() -> None:
    assert load({"log_format": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format must be text or json"):
        load({"log_format": "xml"})


def test_a_partition_log_names_its_topic_and_partition_on_every_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "orders" / "3"
    caplog.set_level(logging.INFO, logger="rillet.node.storage.log")
    plog = PartitionLog.open(directory, LogConfig(), log_fields={"topic": "orders",
                                                                 "partition": 3})
    plog.close()
    PartitionLog.open(directory, LogConfig(), log_fields={"topic": "orders",
                                                          "partition": 3}).close()
    lines = [r for r in caplog.records if r.name == "rillet.node.storage.log"]
    assert lines, "opening a log writes at least one line"
    formatter = JsonFormatter(node_id=2)
    for record in lines:
        doc = json.loads(formatter.format(record))
        assert (doc["topic"], doc["partition"], doc["node"]) == ("orders", 3, 2), doc
