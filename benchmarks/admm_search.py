"""The ADMMiRNN formulation search: block order, multipliers, penalties, prox, init, relaxation.

Each variant runs mini-batch ADMM (batch 128, auxiliaries reset from a forward pass at every
batch, per-sample multipliers) on a row-MNIST subset, assembled directly from the blocks in
``admm_jax.admm.blocks``, and prints the forward-pass train/test accuracy per epoch. The table
in ``benchmarks/results/admm_search.md`` was produced with it, e.g.

    python benchmarks/admm_search.py --order o,sweep,uwb,vc --duals 123 --epochs 8 --tag base
    python benchmarks/admm_search.py --order o,vc --duals "" --epochs 2 --tag readout_only

Tokens of ``--order``: ``o``, ``coupled`` (the time-coupled (a, h) block), ``sweep``
(backward in time), ``par`` (all steps at once),
``uwb``, ``vc``, ``dual`` (an extra multiplier step), ``reset`` (auxiliaries back to the
forward pass). ``--duals``: the families that carry multipliers (a subset of ``123``).
``--alpha``/``--alpha-v``: over-relaxation of the (U, W, b) / (V, c) blocks (a convex
quadratic block moved by alpha in (0, 2) toward its minimiser still decreases L).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import admm_jax
from admm_jax.admm import blocks
from admm_jax.admm.problem import ADMMConfig, Auxiliaries, Duals, Penalties, residuals
from admm_jax.data import mnist
from admm_jax.layouts import split_elman
from admm_jax.models.elman import elman_apply, elman_trace


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    ap.add_argument("--out", type=pathlib.Path,
                    default=pathlib.Path(__file__).parent / "results" / "admm_search")
    ap.add_argument("--n", type=int, default=10_000, help="training subset size")
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rho", type=float, nargs=3, default=(10.0, 10.0, 1.0))
    ap.add_argument("--prox", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--order", default="o,sweep,uwb,vc")
    ap.add_argument("--duals", default="123")
    ap.add_argument("--sweeps", type=int, default=1)
    ap.add_argument("--cg-steps", type=int, default=3, help="CG iterations of 'coupled'")
    ap.add_argument("--batch-duals", action="store_true",
                    help="multipliers start from zero at every batch (not kept per sample)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--alpha-v", type=float, default=1.0)
    ap.add_argument("--init", choices=("normal", "uniform"), default="normal",
                    help="normal: the ElmanRNN default; uniform: PyTorch's U(+-1/sqrt(H))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="variant")
    a = ap.parse_args(argv)

    xtr, ytr = mnist("train", data_dir=a.data_dir)
    xte, yte = mnist("test", data_dir=a.data_dir)
    xtr, ytr = xtr[:a.n], ytr[:a.n]
    model = admm_jax.ElmanRNN(28, 128, 10, rngs=nnx.Rngs(a.seed))
    p = dict(split_elman(nnx.state(model, nnx.Param))[0])
    if a.init == "uniform":
        keys = jax.random.split(jax.random.key(a.seed), 3)
        bound = 1 / np.sqrt(128)
        for k, name in zip(keys, ("U", "W", "V"), strict=True):
            p[name] = jax.random.uniform(k, p[name].shape, minval=-bound, maxval=bound)
    cfg = ADMMConfig(prox=a.prox, weight_decay=a.wd, cg_steps=a.cg_steps)
    rho = Penalties(*(jnp.float32(r) for r in a.rho))
    n = a.n
    store = Duals(jnp.zeros((n, 28, 128)), jnp.zeros((n, 28, 128)), jnp.zeros((n, 1, 10)))
    order = a.order.split(",")

    def relax(p, new, alpha):
        return {**p, **{k: p[k] + alpha * (v - p[k]) for k, v in new.items()}}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, store, x, y, idx):
        tr = elman_trace(p, x)
        aux = Auxiliaries(tr.a, tr.h, tr.o)
        du = Duals(*(jnp.zeros_like(lam[idx]) if a.batch_duals else lam[idx] for lam in store))
        for _ in range(a.sweeps):
            for b in order:
                if b == "o":
                    aux = aux._replace(o=blocks.o_block(p, aux, du, rho, y, cfg))
                elif b == "sweep":
                    aux = blocks.sweep_backward(p, aux, du, rho, x, cfg)
                elif b == "coupled":
                    aux = blocks.sweep_coupled(p, aux, du, rho, x, cfg)
                elif b == "par":
                    aux = blocks.sweep_parallel(p, aux, du, rho, x, cfg)
                elif b == "uwb":
                    p = relax(p, blocks.uwb_block(p, aux, du, rho, x, cfg)[0], a.alpha)
                elif b == "vc":
                    p = relax(p, blocks.vc_block(p, aux, du, rho, cfg)[0], a.alpha_v)
                elif b == "dual":
                    du = blocks.dual_update(du, rho, residuals(p, aux, x, cfg))
                elif b == "reset":
                    aux = Auxiliaries(tr.a, tr.h, tr.o)
                else:
                    raise ValueError(f"--order: unknown block {b!r}")
            r = residuals(p, aux, x, cfg)
            du = Duals(*(lam + rh * ri if str(i + 1) in a.duals else lam
                         for i, (lam, rh, ri) in enumerate(zip(du, rho, r, strict=True))))
        return p, Duals(*(s.at[idx].set(lam) for s, lam in zip(store, du, strict=True)))

    @jax.jit
    def accuracy(p, x, y):
        return jnp.mean(jnp.argmax(elman_apply(p, x), -1) == y)

    rng = np.random.default_rng(a.seed)
    t0, hist = time.time(), []
    for ep in range(a.epochs):
        perm = rng.permutation(n)
        for b in range(n // a.bs):
            idx = perm[b * a.bs:(b + 1) * a.bs]
            p, store = step(p, store, xtr[idx], ytr[idx], jnp.asarray(idx))
        jax.block_until_ready(p)
        elapsed = time.time() - t0
        te, tr_acc = float(accuracy(p, xte, yte)), float(accuracy(p, xtr[:5000], ytr[:5000]))
        hist.append((ep + 1, elapsed, tr_acc, te))
        print(f"{a.tag} epoch {ep + 1} {elapsed:.0f}s train {tr_acc:.4f} test {te:.4f} "
              f"|W| {float(jnp.linalg.norm(p['W'])):.2f} |V| {float(jnp.linalg.norm(p['V'])):.2f}",
              flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.tag}.json").write_text(json.dumps(
        {"args": {**vars(a), "out": str(a.out)}, "history": hist}))


if __name__ == "__main__":
    main()
