"""Peak memory, measured against what the method's memory formula predicts.

    python benchmarks/memory.py admm            # ADMMiRNN on row-MNIST: ~1-2 minutes on 2 cores
    python benchmarks/memory.py admm --measure-n 10000
    python benchmarks/memory.py random_bases    # RBD's blocked basis: ~1 min on 2 CPU cores
    python benchmarks/memory.py CASE --smoke    # tiny sizes, seconds (the tests run these)

``admm``: full-batch against mini-batch ADMMiRNN (T=28, D=28, C=10), two ways. Compiled (no
execution): XLA's memory analysis of one ``admmirnn`` update at the full training set (N) and
at a mini-batch, with the per-sample multipliers on the device or in host memory
(``admm_jax.admm.streaming.HostDuals``); device bytes = arguments + outputs + temporaries -
aliased, and the working-set factor ``k`` of the memory formula is fitted from them. Measured:
the peak resident memory (``ru_maxrss``) of a subprocess that loads row-MNIST (the first
``--measure-n`` training samples, from ``$ADMM_JAX_DATA``), then runs one full-batch update, or
one epoch of mini-batch updates with host multipliers; the RSS after loading the data
(baseline) is reported beside it. On CPU the "device" is host memory, so RSS is the total.
Writes ``results/admm_memory.json``.

``random_bases``: the compiled scratch memory (``temp_size_in_bytes``) of one RBD update on
the FC-MNIST MLP's D = 101,770 parameters at d = 250, for several ``block_size`` values,
against the same update with the whole ``[d, D]`` basis materialised; and the seconds per
update of the two basis generators (``rng="threefry"`` against ``"hash"``), round-robin.
Writes ``results/random_bases_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
from _harness import RESULTS, command, median_ratio, round_robin, stopwatch, write_results

from admm_jax import scale_by_random_bases
from admm_jax.optim.random_bases import basis_block

T, D, C = 28, 28, 10


# ---------------------------------------------------------------------------- admm


def compiled_bytes(n_state: int, batch: int, hidden: int, auxiliaries: str, dtype: str,
                   sweep: str):
    """XLA's memory analysis of one jitted update on a batch, state sized ``n_state``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import admm_jax

    dt = jnp.dtype(dtype)
    model = admm_jax.ElmanRNN(D, hidden, C, rngs=nnx.Rngs(0), dtype=dt)
    params = nnx.state(model, nnx.Param)
    tx = admm_jax.admmirnn(num_samples=n_state, seq_len=T, auxiliaries=auxiliaries, sweep=sweep)
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
mode, n, batch, hidden, sweep = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                 int(sys.argv[4]), sys.argv[5])
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
    tx = admm_jax.admmirnn(num_samples=n, seq_len=28, sweep=sweep)
    state = tx.init(params)
    step = jax.jit(lambda p, s, x, y: tx.update(None, s, p, inputs=x, targets=y))
    u, state = step(params, state, jnp.asarray(x), jnp.asarray(y))
    jax.block_until_ready(u)
    host = 0
else:
    tx = admm_jax.admmirnn(num_samples=batch, seq_len=28, sweep=sweep)
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


def measured(mode: str, n: int, batch: int, hidden: int, sweep: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(batch), str(hidden),
                          sweep],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def admm(args) -> tuple[str, dict]:
    from admm_jax.admm.streaming import admm_memory_bytes

    n, b, h = (256, 32, 8) if args.smoke else (args.n, args.batch, args.hidden)
    measure_n = 64 if args.smoke else args.measure_n
    item = 8 if args.dtype == "float64" else 4
    m = 2 * T * h + C
    configs = [  # (name, state size, batch, auxiliaries, host duals)
        ("full-batch, reset aux", n, n, "reset", False),
        ("full-batch, persisted aux", n, n, "persist", False),
        ("mini-batch, duals on device", n, b, "reset", False),
        ("mini-batch, duals on host", b, b, "reset", True),
    ]
    if args.smoke:  # the two ends (each compile of an update takes seconds)
        configs = [configs[0], configs[-1]]
    rows = []
    elapsed = stopwatch()
    for name, n_state, batch, aux, host in configs:
        comp = compiled_bytes(n_state, batch, h, aux, args.dtype, args.sweep)
        pred = admm_memory_bytes(n, T, h, C, input_dim=D, batch_size=batch, auxiliaries=aux,
                                 host_duals=host, itemsize=item)
        rows.append({"config": name, "batch": batch, "state_samples": n_state,
                     "compiled": comp, "predicted": pred,
                     "host_bytes": n * m * item if host else 0})
    # k: temporaries + batch in/out per batch sample and float of m, from the full batch
    k_fit = rows[0]["compiled"]["temporaries"] / (n * m * item)
    k_mini = rows[-1]["compiled"]["temporaries"] / (b * m * item)
    print(f"ADMMiRNN memory, row-MNIST T={T} D={D} H={h} C={C} {args.dtype}, N={n}, B={b}")
    print(f"{'config':32s} {'device (XLA)':>14s} {'of which temp':>14s} {'predicted':>12s}"
          f" {'host':>10s}")
    for r in rows:
        print(f"{r['config']:32s} {r['compiled']['device_total'] / 1e6:12.1f}MB "
              f"{r['compiled']['temporaries'] / 1e6:12.1f}MB "
              f"{r['predicted']['device'] / 1e6:10.1f}MB {r['host_bytes'] / 1e6:8.1f}MB")
    full_dev, mini_dev = rows[0]["compiled"]["device_total"], rows[-1]["compiled"]["device_total"]
    print(f"full-batch / mini-batch(host duals) device memory: {full_dev / mini_dev:.0f}x; "
          f"working-set factor k (temp / (B m s)): {k_fit:.2f} full batch, {k_mini:.2f} at B={b}")
    modes = ("mini",) if args.smoke else ("full", "mini")
    meas = [measured(mode, measure_n, b, h, args.sweep) for mode in modes] if measure_n else []
    for r in meas:
        print(f"measured ({r['mode']}, N={measure_n}): peak {r['peak_rss'] / 1e6:8.1f}MB  (after "
              f"loading data {r['baseline_rss'] / 1e6:7.1f}MB; increase "
              f"{(r['peak_rss'] - r['baseline_rss']) / 1e6:7.1f}MB) host duals "
              f"{r['host_duals_bytes'] / 1e6:.1f}MB, {r['seconds']:.1f}s")
    return "admm_memory", {
        "T": T, "D": D, "C": C, "hidden": h, "dtype": args.dtype, "sweep": args.sweep,
        "n": n, "batch": b,
        "compiled": rows, "k_full_batch": k_fit, "k_mini_batch": k_mini, "measured": meas,
        "seconds": elapsed(),
        "peak_rss_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ---------------------------------------------------------------------------- random bases


def temp_bytes(fn, *args) -> int:
    return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def random_bases(args) -> tuple[str, dict]:
    size, d = (2_000, 20) if args.smoke else (args.size, args.dim)
    blocks = (1, 5, 20) if args.smoke else tuple(int(b) for b in args.blocks.split(","))
    g = {"w": jax.random.normal(jax.random.key(0), (size,))}
    basis_mb = d * size * 4 / 1e6

    def materialised(g):
        e = basis_block("normal", jax.random.key(0), jnp.arange(d), size, jnp.float32)
        c = e @ g["w"]
        return c @ e, c

    whole = temp_bytes(materialised, g)
    rows = []
    for block in blocks:
        tx = scale_by_random_bases(d, seed=0, block_size=block, distribution="normal",
                                   rng="threefry")
        t = temp_bytes(tx.update, g, tx.init(g))
        rows.append({"block_size": block, "temp_mb": t / 1e6,
                     "block_mb": block * size * 4 / 1e6, "vs_materialised": t / whole})
    runs = {}
    for rng in ("threefry", "hash"):
        tx = scale_by_random_bases(d, seed=0, block_size=min(50, d), rng=rng,
                                   distribution="normal")
        update, state = jax.jit(tx.update), tx.init(g)
        runs[rng] = lambda update=update, state=state: jax.block_until_ready(update(g, state))
    times = round_robin(runs, 2 if args.smoke else args.reps)
    timing = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = median_ratio(times, "threefry", "hash")
    print(f"D = {size}, d = {d}; whole basis = {basis_mb:.1f} MB of float32; materialised "
          f"update scratch = {whole / 1e6:.1f} MB")
    print(f"{'block':>6}{'scratch MB':>12}{'block MB':>10}{'vs whole':>10}")
    for r in rows:
        print(f"{r['block_size']:6d}{r['temp_mb']:12.1f}{r['block_mb']:10.2f}"
              f"{r['vs_materialised']:10.3f}")
    print(f"seconds per update (block 50): threefry {timing['threefry']:.3f}, "
          f"hash {timing['hash']:.3f}, ratio {ratio:.1f}x")
    return "random_bases_memory", {
        "size_D": size, "dim": d, "whole_basis_mb": basis_mb,
        "materialised_update_temp_mb": whole / 1e6, "blocked": rows,
        "seconds_per_update_block50": timing, "threefry_over_hash": ratio}


CASES = {"admm": admm, "random_bases": random_bases}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    ap.add_argument("--out", default=str(RESULTS))
    g = ap.add_argument_group("admm")
    g.add_argument("--n", type=int, default=60000, help="training-set size (compiled analysis)")
    g.add_argument("--batch", type=int, default=128)
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--dtype", default="float32")
    g.add_argument("--sweep", default="backward",
                   help="admmirnn's sweep (default backward: the sweep of the published table, "
                        "and the one that can persist its auxiliaries)")
    g.add_argument("--measure-n", type=int, default=10000,
                   help="samples for the measured subprocess runs (0 skips them)")
    g = ap.add_argument_group("random_bases")
    g.add_argument("--size", type=int, default=101_770, help="D, parameters")
    g.add_argument("--dim", type=int, default=250)
    g.add_argument("--blocks", default="1,5,10,25,50,125,250")
    g.add_argument("--reps", type=int, default=3, help="timed rounds of the two generators")
    args = ap.parse_args(argv)
    stem, result = CASES[args.case](args)
    write_results(args.out, stem + ("_smoke" if args.smoke else ""), result,
                  command(__file__, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
