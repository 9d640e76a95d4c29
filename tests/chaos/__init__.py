"""Chaos runs: a pair with reports flowing, faults in a seeded random order, a ledger checked at
the end for lost and doubled reports, and a timeline of what happened.

`runner.ChaosRun` drives one run against a pair from `pair.chaos_pair` (a harness Pair; the
harness servers come from the caller); `test_chaos.py` runs a few bounded rounds under pytest and
`soak.py` a long one. `test_group_ownership.py` puts a group under faults with its ownership
sampled (`ownership.py`).
"""
