"""The benchmark harness: `python -m bench.run`. Not collected by pytest."""
