#!/usr/bin/env bash
# Everything issue 12 and issue 4 still need from a CUDA GPU, in one call of the `device` tool (its lease is
# ~15 minutes, start-up included): install, the kernels against their references on the GPU, the training step
# against plain eager and torch.compile, one MNIST epoch through `vlae train`, the kernel benchmark.
#
# Here, once (MNIST does not travel with the checkout; .mnist/ is ignored and carried):
#   mkdir -p .mnist && cp ../shared/data/mnist/*-ubyte.gz .mnist/ && echo /.mnist/ >> .git/info/exclude
# Then:  run(command="bash bench/device_check.sh", carry=[".mnist"], timeout_s=590)
# Logs and the JSON results land in $OUT; the last lines printed are the summary. A dry run on a CPU checks the
# plumbing (the GPU-only variants and stages say they are skipped):
#   OUT=/tmp/dc STEPS=2 VARIANTS=eager-plain,lib-default,lib-cudagraph EPOCH_ARGS="--images 300 --eval-limit 100" \
#     PATH=$PWD/.venv/bin:$PATH bash bench/device_check.sh
# Each stage has its own time limit (together 560 s, inside one call of 600 s) and a failed stage does not stop the
# later ones.
set -uo pipefail
OUT=${OUT:-/tmp/vlae-device-check}
MNIST=${MNIST_DIR:-.mnist}
STEPS=${STEPS:-100}  # timed training steps per variant; STEPS, VARIANTS and EPOCH_ARGS shrink a dry run on a CPU
VARIANTS=${VARIANTS:-eager-plain,lib-torch,lib-default,lib-compile,lib-triton,lib-cudagraph}
EPOCH_ARGS=${EPOCH_ARGS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
summary=()
stage() {  # stage NAME SECONDS COMMAND...: run it with a limit, log to $OUT/NAME.log, remember how it ended
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    summary+=("$name: rc=$rc in $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (timed out)')")
}

stage install 60 python3 -m pip install --no-deps --no-build-isolation -e .
stage versions 20 sh -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"'
gpu() { python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; }
# The fused ops compiled for the GPU against the float64 references (values and gradients, odd shapes).
if gpu; then
  stage kernel-tests 130 env VLAE_TEST_GPU=1 python3 -m pytest -q -p no:cacheprovider \
    tests/test_kernels_reparam_kl.py tests/test_kernels_ladder_linear.py tests/test_kernels_backend.py
else
  summary+=("kernel-tests: skipped, torch sees no CUDA device (on a CPU, pytest runs them under TRITON_INTERPRET=1)")
fi
# Issue 12's targets: fused + CUDA graph >= 2x eager-plain and >= 1.3x lib-compile at batch 100.
stage train-step 180 python3 bench/train_step.py --cases mnist-b100 --steps "$STEPS" --warmup 10 --out "$OUT" \
  --variants "$VARIANTS"
# Issue 12's target: one MNIST epoch under 2 s through vlae train's own code path.
if [ -d "$MNIST" ]; then
  stage epoch 60 python3 bench/epoch.py --data-dir "$MNIST" --out "$OUT" $EPOCH_ARGS
else
  summary+=("epoch: skipped, no MNIST at $MNIST (see the top of this script)")
fi
# Issue 4's kernel figures (fp32 first: if the limit cuts it, the fp32 rows are in the log).
if gpu; then
  stage kernels 110 python3 bench/kernels.py --out "$OUT/kernels.json"
else
  summary+=("kernels: skipped, torch sees no CUDA device")
fi

echo "=== summary"
printf '%s\n' "${summary[@]}"
grep -h -E "^\| mnist-b100 \|" "$OUT/train-step.log" 2>/dev/null
grep -h -E "epoch|wall" "$OUT/epoch.log" 2>/dev/null | tail -n 3
grep -h -E "passed|failed|error" "$OUT/kernel-tests.log" 2>/dev/null | tail -n 1
