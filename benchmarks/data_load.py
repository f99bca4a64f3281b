"""Load times of admm_jax.data: cold (empty cache) against warm (decoded-array cache).

    python benchmarks/data_load.py --data-dir ../shared/data --repeats 5

Prints a table and writes benchmarks/results/data_load.json. Each cold load runs with a new,
empty cache directory; warm loads reuse the cache it filled; the ratio is cold / warm median.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's admm_jax


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA", "../shared/data"))
    p.add_argument("--repeats", type=int, default=5, help="warm loads per case")
    p.add_argument("--out", default="benchmarks/results/data_load.json")
    args = p.parse_args()

    from admm_jax.data import imdb, mnist

    cases = {
        "mnist train (tfds)": lambda: mnist("train", data_dir=args.data_dir, source="tfds"),
        "mnist train (raw)": lambda: mnist("train", data_dir=args.data_dir, source="raw"),
        "imdb train (tfds)": lambda: imdb("train", data_dir=args.data_dir, source="tfds"),
        "imdb train (raw)": lambda: imdb("train", data_dir=args.data_dir, source="raw"),
    }
    rows = []
    for name, load in cases.items():
        with tempfile.TemporaryDirectory() as cache:
            os.environ["ADMM_JAX_CACHE"] = cache
            t = time.perf_counter()
            load()
            cold = time.perf_counter() - t
            warm = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                load()
                warm.append(time.perf_counter() - t)
        med = statistics.median(warm)
        rows.append({"case": name, "cold_s": cold, "warm_median_s": med, "warm_s": warm,
                     "ratio": cold / med})
    print(f"{'case':<22}{'cold s':>9}{'warm s':>9}{'cold/warm':>11}")
    for r in rows:
        print(f"{r['case']:<22}{r['cold_s']:>9.2f}{r['warm_median_s']:>9.3f}{r['ratio']:>11.1f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
