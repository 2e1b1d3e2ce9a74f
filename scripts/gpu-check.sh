#!/usr/bin/env bash
# The GPU checks of rayrejuv in one command, on a machine with one CUDA GPU (run from the repo root):
#
#   scripts/gpu-check.sh [tests|bench|all]      # default: all
#
# tests: python -m pytest -m gpu tests/test_gpu.py (rl on CUDA sharing one GPU, ZeRO-2/3 vs DDP,
#        rejuvenate cuda == cpu); bench: benchmarks/bench_gpu.py (GRPO step timings vs a plain-PyTorch
#        loop and TRL, rejuvenate cuda vs cpu). Logs and json go to $OUT (default ./gpu-check-out).
# Knobs: TESTS_K (pytest -k), BENCH_PARTS (default rl-ddp,rl-ds2,plain,trl,rejuvenate), BENCH_STEPS (5), PART_TIMEOUT (240 s),
#        TESTS_TIMEOUT (420 s), PYTHON (python3).
# On a machine without the package's dependencies (no Ray), pack them on a machine with pip access
# first: ../shared/tools/pack-for-device.sh .devpkgs math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
#   antlr4-python3-runtime==4.13.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# and this script unpacks .devpkgs/site.tar.xz to /tmp/site and puts it on PYTHONPATH.
set -uo pipefail
what=${1:-all}
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ! "$PY" -c 'import ray' 2>/dev/null && [ -f .devpkgs/site.tar.xz ]; then
  mkdir -p /tmp/site && tar xJf .devpkgs/site.tar.xz -C /tmp/site
  find /tmp/site/ray/core/src -type f -exec chmod +x {} +  # wheels unpacked by zipfile lose the exec bit
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export HOME=${GPU_CHECK_HOME:-/tmp/gpu-check-home} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export RAYREJUV_GPU_RESULTS=$OUT HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_DEDUP_LOGS=0
mkdir -p "$HOME"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c 'import sys, torch, transformers, ray, deepspeed, pydantic
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers",
      transformers.__version__, "ray", ray.__version__, "deepspeed", deepspeed.__version__, "pydantic", pydantic.__version__)'
} 2>&1 | tee "$OUT/env.log"
rc=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  timeout -k 10 "${TESTS_TIMEOUT:-420}" "$PY" -m pytest -m gpu tests/test_gpu.py -s -q -p no:cacheprovider ${TESTS_K:+-k "$TESTS_K"} \
    2>&1 | tee "$OUT/tests.log" || rc=1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  "$PY" benchmarks/bench_gpu.py --out "$OUT" --work /tmp/bench-gpu --steps "${BENCH_STEPS:-5}" \
    --parts "${BENCH_PARTS:-rl-ddp,rl-ds2,plain,trl,rejuvenate}" --part-timeout "${PART_TIMEOUT:-240}" \
    2>&1 | tee "$OUT/bench.log" || rc=1
fi
exit $rc
