"""Load times of admm_jax.data: cold (empty cache) against warm (decoded-array cache).

    python benchmarks/data_load.py --data-dir ../shared/data --repeats 5
    python benchmarks/data_load.py --data-dir ../shared/data --smoke   # MNIST raw, seconds

Writes ``benchmarks/results/data_load.{json,md}``. Each cold load runs with a new, empty cache
directory; the warm loads (the harness's timer, no warm-up) reuse the cache it filled; the
ratio is cold / warm median.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from _harness import RESULTS, command, markdown_table, median_ms, round_robin, write_results

from admm_jax.data import imdb, mnist


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA", "../shared/data"))
    p.add_argument("--repeats", type=int, default=5, help="warm loads per case")
    p.add_argument("--smoke", action="store_true", help="MNIST from raw files only, 1 warm load")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    d = args.data_dir
    cases = {
        "mnist train (tfds)": lambda: mnist("train", data_dir=d, source="tfds"),
        "mnist train (raw)": lambda: mnist("train", data_dir=d, source="raw"),
        "imdb train (tfds)": lambda: imdb("train", data_dir=d, source="tfds"),
        "imdb train (raw)": lambda: imdb("train", data_dir=d, source="raw"),
    }
    if args.smoke:
        cases, args.repeats = {"mnist train (raw)": cases["mnist train (raw)"]}, 1
    rows, cache_before = [], os.environ.get("ADMM_JAX_CACHE")
    try:
        for name, load in cases.items():
            with tempfile.TemporaryDirectory() as cache:
                os.environ["ADMM_JAX_CACHE"] = cache
                cold = round_robin({"cold": load}, 1, warmup=0)["cold"][0]
                warm = round_robin({"warm": load}, args.repeats, warmup=0)["warm"]
            med = median_ms(warm) / 1e3
            rows.append({"case": name, "cold_s": cold, "warm_median_s": med, "warm_s": warm,
                         "ratio": cold / med})
    finally:
        if cache_before is None:
            os.environ.pop("ADMM_JAX_CACHE", None)
        else:
            os.environ["ADMM_JAX_CACHE"] = cache_before
    table = markdown_table(rows, {"case": "case", "cold_s": "cold s",
                                  "warm_median_s": "warm s (median)", "ratio": "cold/warm"})
    write_results(args.out, "data_load" + ("_smoke" if args.smoke else ""),
                  {"cpu_count": os.cpu_count(), "rows": rows}, command(__file__, argv),
                  table=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
