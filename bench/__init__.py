"""simrec benchmarks: each writes its section of bench/results.json (see bench/run.py)."""
