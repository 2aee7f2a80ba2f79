"""`make bench`: every speed figure as a ratio against a baseline measured in the same run.

Prints one line per figure and writes bench/results.json in the shape fixed by DESIGN.md:
{"extract": {...}, "train": {...}, "demo": {"cold_s", "warm_s"}, "labels": {...}, "scale": {...},
"machine": {...}}.
Parts can be chosen: `python -m bench extract train demo` (default: all).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from bench import (
    bench_demo,
    bench_extract,
    bench_interpretation,
    bench_labels,
    bench_scale,
    bench_train,
    machine,
)

RESULTS = Path(__file__).with_name("results.json")
PARTS = {
    "extract": bench_extract.run,
    "train": bench_train.run,
    "demo": bench_demo.run,
    "interpretation": bench_interpretation.run,
    "labels": bench_labels.run,
    "scale": bench_scale.run,
}


def _print_figures(part: str, figures: dict) -> None:
    for name, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{part}.{name} = {shown}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    results: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = machine.describe()
    _print_figures("machine", results["machine"])
    for part in args.parts or list(PARTS):
        started = time.perf_counter()
        figures = PARTS[part]()
        figures["bench_wall_s"] = round(time.perf_counter() - started, 1)
        results[part] = figures
        _print_figures(part, figures)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
