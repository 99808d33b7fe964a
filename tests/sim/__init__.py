"""Deterministic simulator for the pure Raft core (`rillet.cluster.raft`).

One integer seed drives a whole cluster run: a fake millisecond clock, one event heap, a
simulated network and simulated disks, with safety invariants checked after every event.
Nothing here ships in a package. Reproduce any run with `python -m tests.sim.run --seed N -v`.
"""
