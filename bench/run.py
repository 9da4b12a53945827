"""Run every benchmark (or some) and regenerate bench/results.json and the README table.

python -m bench.run [--only fashion_quality ...]
"""

from __future__ import annotations

import argparse
import importlib

from bench.results import render_readme

# name -> module under bench/ whose main(overrides) records the section `name`.
BENCHMARKS: dict[str, str] = {
    "fashion_quality": "bench.quality",
    "style": "bench.style",
    "serving": "bench.serving",
    "tuning": "bench.tuning",
    "catalog_updates": "bench.reindex",
    "distributed": "bench.distributed",
    "index": "bench.index",
    "batch_search": "bench.batch_search",
    "robustness": "bench.robustness",
    "pipeline": "bench.pipeline",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), default=None)
    names = parser.parse_args().only or list(BENCHMARKS)
    for name in names:
        print(f"== benchmark {name}")
        importlib.import_module(BENCHMARKS[name]).main([])
    render_readme()


if __name__ == "__main__":
    main()
