"""Storage errors: one small hierarchy the broker maps to gRPC statuses in one table."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the partition log raises on purpose.

    `retriable` tells the service layer whether the same request could succeed later without
    the client changing anything (it never can for the errors below).
    """

    retriable = False


class OffsetOutOfRangeError(StorageError):
    """A read or truncation asked for an offset outside [log_start, log_end].

    log_end itself is a valid read position (it returns nothing yet), so the message names the
    inclusive range a client may ask for.
    """

    def __init__(self, offset: int, log_start: int, log_end: int) -> None:
        self.offset = offset
        self.log_start = log_start
        self.log_end = log_end
        super().__init__(
            f"offset {offset} is out of range: valid offsets are {log_start} to {log_end}")


class LogCorruptionError(StorageError):
    """Bytes on disk do not match what the log's own bookkeeping says is there.

    Recovery repairs a torn tail by itself; this is raised only when data the log considered
    intact turns out damaged, so nothing corrupt is ever served in its place.
    """
