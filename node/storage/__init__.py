"""Partition storage on disk: segments, indexes, recovery, retention."""
