"""How a node writes its logs: readable lines by default, one JSON object per line when
`log_format = "json"` (for log collectors in Kubernetes). Every line names the node; a record
that carries `topic`, `partition` or `group` (``log.info(..., extra={"topic": ...})``) gets
them as fields too."""

from __future__ import annotations

import json
import logging
import sys
import time

_FIELDS = ("topic", "partition", "group")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601 with ms), level, node, logger, msg, and
    the optional fields above; exc holds a formatted traceback when there is one."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "node": self.node_id,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(node_id: int, level: str, fmt: str) -> None:
    """Send the root logger to stderr in the chosen format ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s node-{node_id} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
