"""Seconds to start a stage process on its own vs handed to `pixart worker`, in the same run.

The probe is `python -m stages.train --help`: every import a training stage makes, then argparse, so
the time is the fixed cost each DVC stage pays before its first step. The worker's one-off import
time is printed beside it.

    .venv/bin/python bench/stage_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pixart.worker import started

ROOT = Path(__file__).resolve().parent.parent
PROBE = [sys.executable, "-m", "stages.train", "--help"]


def seconds(env: dict[str, str] | None, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(PROBE, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    alone = seconds(None, args.repeats)
    start = time.perf_counter()
    with started() as env:
        ready = time.perf_counter() - start
        forked = seconds(env, args.repeats)
    print(f"{'stage process start':<28} {'median s':>9} {'min s':>7}")
    print(f"{'on its own (baseline)':<28} {statistics.median(alone):>9.2f} {min(alone):>7.2f}")
    print(f"{'forked by pixart worker':<28} {statistics.median(forked):>9.2f} {min(forked):>7.2f}")
    print(f"worker start (once per dvc repro): {ready:.2f} s; speed-up per stage "
          f"{statistics.median(alone) / statistics.median(forked):.1f}x")


if __name__ == "__main__":
    main()
