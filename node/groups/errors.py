"""Errors of consumer groups. Plain exceptions (no gRPC here): node/errors.py maps them to
wire codes and statuses in its one table, and the pure coordinator can raise them."""

from __future__ import annotations


class GroupError(Exception):
    """Base of the group errors a client is told about."""


class UnknownGroupError(GroupError):
    """No such group (no members and no committed offsets), or an unknown member id."""


class InvalidGroupError(GroupError):
    """Bad group id, bad membership settings, or a join that breaks the protocol."""


class FencedError(GroupError):
    """A commit from an old generation, or for a partition the member does not own."""


class GroupNotEmptyError(GroupError):
    """An admin change (reset, delete, outsider commit) while the group has members."""
