"""The pure Raft core: standard library only, no I/O, no clocks."""
