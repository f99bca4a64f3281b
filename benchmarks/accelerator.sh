#!/usr/bin/env bash
# The papers' GPU recipes in one call (issue 27, part 3), within 9 minutes on one GPU:
#   1. throughput of S LSTM-128 runs batched against S in sequence (step_cost.py runs; the
#      bar: S=6 batched >= 4x the throughput of one run);
#   2. h-detach copying, T = 100 and 200: 3 seeds x {LSTM, h-detach p=0.5}, each T one
#      BatchedTrainer (hdetach.py copying --batched);
#   3. full-length pixel MNIST (784 steps x 1 px): 3 seeds x {LSTM, h-detach p=0.25} batched,
#      1,000 iterations (hdetach.py mnist --batched);
#   4. random-bases descent on FC-MNIST with the paper's Gaussian basis, 100 epochs x 3 seeds
#      as one batch (random_bases.py --batched).
# Parts 2-4 stop at their iteration budget or at a training-seconds cap (COPY_SECONDS per T,
# MNIST_SECONDS, RBD_SECONDS), so the whole script stays within 9 minutes on a slower card;
# each JSON records how far its runs got. The parts run in one Python process (one JAX
# start-up, one device allocation), each through its script's main(); a part that fails is
# recorded and the next one still runs (the exit status is then 1). JSON and PNG go to $OUT
# (default benchmarks/results/accelerator), with accelerator.json: the device, each part's
# command, wall seconds and error, if any.
#
#   ADMM_JAX_DATA=/path/to/mnist bash benchmarks/accelerator.sh           # on the GPU machine
#   OUT=/tmp/acc bash benchmarks/accelerator.sh --smoke                    # CPU, tiny sizes
#
# RBD resumes from its checkpoint with RESUME=1 (copying resumes from $OUT/copying_ckpt).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-benchmarks/results/accelerator}
export ADMM_JAX_DATA=${ADMM_JAX_DATA:?set ADMM_JAX_DATA to the MNIST folder}
export COPY_SECONDS=${COPY_SECONDS:-60} MNIST_SECONDS=${MNIST_SECONDS:-75}
export RBD_SECONDS=${RBD_SECONDS:-140} RESUME=${RESUME:-}
mkdir -p "$OUT"
exec python - "${1:-}" <<'PY'
import os
import sys
import traceback

sys.path.insert(0, "benchmarks")
import hdetach  # noqa: E402
import jax  # noqa: E402
import random_bases  # noqa: E402
import step_cost  # noqa: E402
from _harness import command, commit, stopwatch, write_json  # noqa: E402

env = os.environ
out, data = env["OUT"], env["ADMM_JAX_DATA"]
if sys.argv[1] == "--smoke":
    parts = [
        ("throughput", step_cost, ["runs", "--smoke", "--out", out]),
        ("copying", hdetach, ["copying", "--smoke", "--batched", "--seeds", "2", "--Ts", "5",
                              "--checkpoint", f"{out}/copying_ckpt", "--out", out]),
        ("pixel_mnist", hdetach, ["mnist", "--smoke", "--batched", "--seeds", "2", "--layouts",
                                  "pixels", "--data-dir", data, "--out", out]),
        ("rbd_gaussian", random_bases, [
            "--smoke", "--batched", "--methods", "rbd", "--distribution", "normal", "--dim",
            "10", "--seeds", "0,1,2", "--data-dir", data,
            "--out", f"{out}/random_bases_gaussian_smoke.json"]),
    ]
else:
    parts = [
        ("throughput", step_cost, ["runs", "--runs", "1,6,12", "--rounds", "2", "--out", out]),
        ("copying", hdetach, [
            "copying", "--batched", "--Ts", "100,200", "--seeds", "3", "--iters", "20000",
            "--budget-seconds", env["COPY_SECONDS"], "--checkpoint", f"{out}/copying_ckpt",
            "--name", "hdetach_copying_gpu", "--out", out]),
        ("pixel_mnist", hdetach, [
            "mnist", "--batched", "--pixels-per-step", "1", "--layouts", "pixels", "--seeds",
            "3", "--epochs", "4", "--epoch-size", "25000", "--budget-seconds",
            env["MNIST_SECONDS"], "--name", "hdetach_mnist_gpu", "--data-dir", data,
            "--out", out]),
        ("rbd_gaussian", random_bases, [
            "--batched", "--methods", "rbd", "--distribution", "normal", "--seeds", "0,1,2",
            "--epochs", "100", "--budget-seconds", env["RBD_SECONDS"],
            *(["--resume"] if env["RESUME"] else []), "--data-dir", data,
            "--out", f"{out}/random_bases_gaussian.json"]),
    ]

record = []
for name, script, argv in parts:
    cmd = command(script.__file__, argv)
    print(f"+ {cmd}", file=sys.stderr, flush=True)
    clock, error = stopwatch(), None
    try:
        script.main(argv)
    except (Exception, SystemExit) as e:  # the next part still runs
        traceback.print_exc()
        error = f"{type(e).__name__}: {e}"
    record.append({"part": name, "wall_seconds": clock(), "command": cmd, "error": error})
total = sum(p["wall_seconds"] for p in record)
write_json(f"{out}/accelerator.json", {
    "device": str(jax.devices()[0]), "backend": jax.default_backend(), "commit": commit(),
    "wall_seconds": total, "parts": record})
failed = [p["part"] for p in record if p["error"]]
print(f"wrote {out}/accelerator.json: {total:.0f} s in all"
      + (f"; failed: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
PY
