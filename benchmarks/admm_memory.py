"""Peak memory of full-batch vs mini-batch ADMMiRNN on row-MNIST (T=28, D=28, C=10).

Two measurements, side by side:

1. compiled (no execution): XLA's memory analysis of one ``admmirnn(sweep="backward")`` update
   (the sweep that keeps per-sample multipliers; the coupled default keeps none), at the full
   training set (N=60000) and at a mini-batch, with the per-sample multipliers on the device
   or in host memory (:class:`admm_jax.admm.streaming.HostDuals`). Device bytes =
   arguments + outputs + temporaries - aliased. The working-set factor ``k`` of the memory
   formula is fitted from these numbers.
2. measured: the peak resident memory (``ru_maxrss``) of a subprocess that loads row-MNIST
   (first ``--measure-n`` training samples), then runs one full-batch update, or one epoch of
   mini-batch updates with host multipliers; the RSS after loading data and compiling nothing
   (baseline) is printed beside it. On CPU the "device" is host memory, so RSS is the total.

    nice -n 10 python benchmarks/admm_memory.py            # ~1-2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
T, D, C = 28, 28, 10


def compiled_bytes(n_state: int, batch: int, hidden: int, auxiliaries: str, dtype: str):
    """XLA's memory analysis of one jitted update on a batch, state sized ``n_state``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import admm_jax

    dt = jnp.dtype(dtype)
    model = admm_jax.ElmanRNN(D, hidden, C, rngs=nnx.Rngs(0), dtype=dt)
    params = nnx.state(model, nnx.Param)
    tx = admm_jax.admmirnn(num_samples=n_state, seq_len=T, auxiliaries=auxiliaries,
                           sweep="backward")
    state = jax.eval_shape(tx.init, params)
    x = jax.ShapeDtypeStruct((batch, T, D), dt)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    kw = {} if batch == n_state else {"indices": jax.ShapeDtypeStruct((batch,), jnp.int32)}

    def step(params, state, x, y, **kw):
        return tx.update(None, state, params, inputs=x, targets=y, **kw)

    m = jax.jit(step, donate_argnums=(1,)).lower(params, state, x, y, **kw).compile()
    ma = m.memory_analysis()
    total = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
             - ma.alias_size_in_bytes)
    return {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
            "temporaries": ma.temp_size_in_bytes, "aliased": ma.alias_size_in_bytes,
            "device_total": total}


CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, n, batch, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import jax, jax.numpy as jnp, optax
from flax import nnx
import admm_jax
from admm_jax.admm.streaming import HostDuals
x, y = admm_jax.data.mnist("train", layout="rows")
x, y = np.asarray(x[:n], np.float32), np.asarray(y[:n], np.int32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = nnx.state(admm_jax.ElmanRNN(28, hidden, 10, rngs=nnx.Rngs(0)), nnx.Param)
t0 = time.perf_counter()
if mode == "full":
    tx = admm_jax.admmirnn(num_samples=n, seq_len=28, sweep="backward")
    state = tx.init(params)
    step = jax.jit(lambda p, s, x, y: tx.update(None, s, p, inputs=x, targets=y))
    u, state = step(params, state, jnp.asarray(x), jnp.asarray(y))
    jax.block_until_ready(u)
    host = 0
else:
    tx = admm_jax.admmirnn(num_samples=batch, seq_len=28, sweep="backward")
    state = tx.init(params)
    store = HostDuals.like(params, num_samples=n, seq_len=28)
    @jax.jit
    def step(p, s, x, y):
        u, s = tx.update(None, s, p, inputs=x, targets=y)
        return optax.apply_updates(p, u), s
    for i in range(n // batch):
        idx = np.arange(i * batch, (i + 1) * batch)
        state = store.load(state, idx)
        params, state = step(params, state, x[idx], y[idx])
        store.save(state, idx)
    jax.block_until_ready(params)
    host = store.nbytes
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"mode": mode, "n": n, "batch": batch, "baseline_rss": base, "peak_rss": peak,
                  "host_duals_bytes": host, "seconds": time.perf_counter() - t0}))
"""


def measured(mode: str, n: int, batch: int, hidden: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(batch), str(hidden)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000, help="training-set size (compiled analysis)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--measure-n", type=int, default=10000,
                    help="samples for the measured subprocess runs (0 skips them)")
    ap.add_argument("--out", default=str(RESULTS / "admm_memory.json"))
    args = ap.parse_args()

    from admm_jax.admm.streaming import admm_memory_bytes

    n, b, h = args.n, args.batch, args.hidden
    item = 8 if args.dtype == "float64" else 4
    m = 2 * T * h + C
    configs = [  # (name, state size, batch, auxiliaries, host duals)
        ("full-batch, reset aux", n, n, "reset", False),
        ("full-batch, persisted aux", n, n, "persist", False),
        ("mini-batch, duals on device", n, b, "reset", False),
        ("mini-batch, duals on host", b, b, "reset", True),
    ]
    rows = []
    t0 = time.perf_counter()
    for name, n_state, batch, aux, host in configs:
        comp = compiled_bytes(n_state, batch, h, aux, args.dtype)
        pred = admm_memory_bytes(n, T, h, C, input_dim=D, batch_size=batch, auxiliaries=aux,
                                 sweep="backward",
                                 host_duals=host, itemsize=item)
        rows.append({"config": name, "batch": batch, "state_samples": n_state,
                     "compiled": comp, "predicted": pred,
                     "host_bytes": n * m * item if host else 0})
    # k: temporaries + batch in/out per batch sample and float of m, from the full batch
    full = rows[0]["compiled"]
    k_fit = (full["temporaries"]) / (n * m * item)
    k_mini = rows[3]["compiled"]["temporaries"] / (b * m * item)

    print(f"ADMMiRNN memory, row-MNIST T={T} D={D} H={h} C={C} {args.dtype}, N={n}, B={b}")
    print(f"{'config':32s} {'device (XLA)':>14s} {'of which temp':>14s} {'predicted':>12s}"
          f" {'host':>10s}")
    for r in rows:
        print(f"{r['config']:32s} {r['compiled']['device_total'] / 1e6:12.1f}MB "
              f"{r['compiled']['temporaries'] / 1e6:12.1f}MB "
              f"{r['predicted']['device'] / 1e6:10.1f}MB {r['host_bytes'] / 1e6:8.1f}MB")
    full_dev, mini_dev = rows[0]["compiled"]["device_total"], rows[3]["compiled"]["device_total"]
    print(f"full-batch / mini-batch(host duals) device memory: {full_dev / mini_dev:.0f}x; "
          f"working-set factor k (temp / (B m s)): {k_fit:.2f} full batch, {k_mini:.2f} at B={b}")

    meas = []
    if args.measure_n:
        for mode in ("full", "mini"):
            r = measured(mode, args.measure_n, b, h)
            meas.append(r)
        print(f"\nmeasured peak RSS (subprocess, real row-MNIST, N={args.measure_n}):")
        for r in meas:
            print(f"  {r['mode']:5s} peak {r['peak_rss'] / 1e6:8.1f}MB  (after loading data "
                  f"{r['baseline_rss'] / 1e6:7.1f}MB; increase "
                  f"{(r['peak_rss'] - r['baseline_rss']) / 1e6:7.1f}MB) host duals "
                  f"{r['host_duals_bytes'] / 1e6:.1f}MB, {r['seconds']:.1f}s")
    out = {"T": T, "D": D, "C": C, "hidden": h, "dtype": args.dtype, "n": n, "batch": b,
           "compiled": rows, "k_full_batch": k_fit, "k_mini_batch": k_mini,
           "measured": meas, "seconds": time.perf_counter() - t0,
           "peak_rss_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
