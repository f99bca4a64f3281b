"""Peak extra memory of RBD's blocked basis generation vs materialising the whole basis.

XLA's compiled memory analysis (``temp_size_in_bytes``: scratch memory of the compiled
update, excluding its inputs and outputs) for one RBD update on the FC-MNIST MLP's D =
101,770 parameters at d = 250, for several ``block_size`` values, against the same update
with the whole ``[d, D]`` basis materialised. Also the seconds per update of the two basis
generators (``rng="threefry"`` vs ``"hash"``), measured side by side.

    python benchmarks/random_bases_memory.py          # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

from admm_jax import scale_by_random_bases
from admm_jax.optim.random_bases import basis_block


def temp_bytes(fn, *args) -> int:
    return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def seconds_per_call(fn, *args, reps: int) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=101_770, help="D, parameters")
    ap.add_argument("--dim", type=int, default=250)
    ap.add_argument("--blocks", default="1,5,10,25,50,125,250")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/random_bases_memory.json")
    args = ap.parse_args()

    size, d = args.size, args.dim
    g = {"w": jax.random.normal(jax.random.key(0), (size,))}
    basis_mb = d * size * 4 / 1e6

    def materialised(g):
        e = basis_block("normal", jax.random.key(0), jnp.arange(d), size, jnp.float32)
        c = e @ g["w"]
        return c @ e, c

    whole = temp_bytes(materialised, g)
    rows = []
    for block in (int(b) for b in args.blocks.split(",")):
        tx = scale_by_random_bases(d, seed=0, block_size=block, distribution="normal",
                                   rng="threefry")
        t = temp_bytes(tx.update, g, tx.init(g))
        rows.append({"block_size": block, "temp_mb": t / 1e6,
                     "block_mb": block * size * 4 / 1e6, "vs_materialised": t / whole})

    timing = {}
    for rng in ("threefry", "hash"):
        tx = scale_by_random_bases(d, seed=0, block_size=50, rng=rng, distribution="normal")
        timing[rng] = seconds_per_call(tx.update, g, tx.init(g), reps=args.reps)

    print(f"D = {size}, d = {d}; whole basis = {basis_mb:.1f} MB of float32; materialised "
          f"update scratch = {whole / 1e6:.1f} MB")
    print(f"{'block':>6}{'scratch MB':>12}{'block MB':>10}{'vs whole':>10}")
    for r in rows:
        print(f"{r['block_size']:6d}{r['temp_mb']:12.1f}{r['block_mb']:10.2f}"
              f"{r['vs_materialised']:10.3f}")
    print(f"seconds per update (block 50): threefry {timing['threefry']:.3f}, "
          f"hash {timing['hash']:.3f}, ratio {timing['threefry'] / timing['hash']:.1f}x")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "size_D": size, "dim": d, "whole_basis_mb": basis_mb,
        "materialised_update_temp_mb": whole / 1e6, "blocked": rows,
        "seconds_per_update_block50": timing,
        "threefry_over_hash": timing["threefry"] / timing["hash"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
