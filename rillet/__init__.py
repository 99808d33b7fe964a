"""Rillet: a replicated, replayable event log whose nodes speak gRPC."""

__version__ = "0.1.0"
