#!/usr/bin/env bash
# The papers' GPU recipes in one call (issue 27, part 3), within 9 minutes on one GPU:
#   1. throughput of S LSTM-128 runs batched against S in sequence (step_cost.py runs; the
#      bar: S=6 batched >= 4x the throughput of one run);
#   2. h-detach copying, T = 100 and 200: 3 seeds x {LSTM, h-detach p=0.5}, each T one
#      BatchedTrainer (hdetach_copying.py --batched);
#   3. full-length pixel MNIST (784 steps x 1 px): 3 seeds x {LSTM, h-detach p=0.25} batched,
#      1,000 iterations (hdetach_mnist.py --batched);
#   4. random-bases descent on FC-MNIST with the paper's Gaussian basis, 100 epochs x 3 seeds
#      as one batch (random_bases.py --batched).
# Parts 2-4 stop at their iteration budget or at a training-seconds cap (COPY_SECONDS per T,
# MNIST_SECONDS, RBD_SECONDS), so the whole script stays within 9 minutes on a slower card;
# each JSON records how far its runs got. JSON and PNG go to $OUT (default
# benchmarks/results/accelerator), with accelerator.json: the device, each part's command and
# wall seconds.
#
#   ADMM_JAX_DATA=/path/to/mnist bash benchmarks/accelerator.sh           # on the GPU machine
#   OUT=/tmp/acc bash benchmarks/accelerator.sh --smoke                    # CPU, tiny sizes
#
# RBD resumes from its checkpoint with RESUME=1 (copying resumes from $OUT/copying_ckpt).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/accelerator}
DATA=${ADMM_JAX_DATA:?set ADMM_JAX_DATA to the MNIST folder}
COPY_SECONDS=${COPY_SECONDS:-60}
MNIST_SECONDS=${MNIST_SECONDS:-75}
RBD_SECONDS=${RBD_SECONDS:-140}
mkdir -p "$OUT"
parts=()
run() {  # run NAME python-args...: time one part, keep its command
  local name=$1 t0=$EPOCHREALTIME
  shift
  echo "+ python $*" >&2
  python "$@"
  parts+=("$name" "$t0" "$EPOCHREALTIME" "python $*")
}

if [[ ${1:-} == --smoke ]]; then
  run throughput benchmarks/step_cost.py runs --smoke --out "$OUT"
  run copying benchmarks/hdetach_copying.py --smoke --batched --seeds 2 --Ts 5,8 \
    --checkpoint "$OUT/copying_ckpt" --out "$OUT"
  run pixel_mnist benchmarks/hdetach_mnist.py --smoke --batched --seeds 2 --layouts pixels \
    --data-dir "$DATA" --out "$OUT"
  run rbd_gaussian benchmarks/random_bases.py --smoke --batched --methods rbd \
    --distribution normal --dim 10 --seeds 0,1,2 --data-dir "$DATA" \
    --out "$OUT/random_bases_gaussian_smoke.json"
else
  run throughput benchmarks/step_cost.py runs --runs 1,6,12 --rounds 2 --out "$OUT"
  run copying benchmarks/hdetach_copying.py --batched --Ts 100,200 --seeds 3 --iters 20000 \
    --budget-seconds "$COPY_SECONDS" --checkpoint "$OUT/copying_ckpt" \
    --name hdetach_copying_gpu --out "$OUT"
  run pixel_mnist benchmarks/hdetach_mnist.py --batched --pixels-per-step 1 --layouts pixels \
    --seeds 3 --epochs 4 --epoch-size 25000 --budget-seconds "$MNIST_SECONDS" \
    --name hdetach_mnist_gpu --data-dir "$DATA" --out "$OUT"
  run rbd_gaussian benchmarks/random_bases.py --batched --methods rbd --distribution normal \
    --seeds 0,1,2 --epochs 100 --budget-seconds "$RBD_SECONDS" ${RESUME:+--resume} \
    --data-dir "$DATA" --out "$OUT/random_bases_gaussian.json"
fi

python - "$OUT/accelerator.json" "${parts[@]}" <<'PY'
import json, subprocess, sys

import jax

path, rest = sys.argv[1], sys.argv[2:]
parts = [{"part": n, "wall_seconds": float(b) - float(a), "command": c}
         for n, a, b, c in zip(rest[::4], rest[1::4], rest[2::4], rest[3::4], strict=True)]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip() or None
json.dump({"device": str(jax.devices()[0]), "backend": jax.default_backend(),
           "commit": commit, "wall_seconds": sum(p["wall_seconds"] for p in parts),
           "parts": parts}, open(path, "w"), indent=1)
print(f"wrote {path}: {sum(p['wall_seconds'] for p in parts):.0f} s in all")
PY
