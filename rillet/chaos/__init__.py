"""Fault injection against real local clusters (issue 6).

The harness (proxy, cluster, faults, schedule, runner, cli) starts node processes whose
node-to-node traffic runs through `proxy.LinkProxy`, injects faults from a seeded schedule
while the workload (`workload`) records every operation into a `history.History`, and hands
that history to `checker.check`. docs/chaos.md says how to run it and read the results.
"""
