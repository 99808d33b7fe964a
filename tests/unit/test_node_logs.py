"""JSON logs: one object per line with the node and, when given, partition fields."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from rillet.node.config import ConfigError, load
from rillet.node.logs import JsonFormatter


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
