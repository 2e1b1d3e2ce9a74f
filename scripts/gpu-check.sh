#!/usr/bin/env bash
# The GPU checks of rayrejuv in one command, on a machine with one CUDA GPU (run from the repo root):
#
#   scripts/gpu-check.sh [all|colocated|tests|bench|dry-run]      # default: all
#
# colocated: issue 15's benchmark: benchmarks/bench_gpu.py --parts rl-colocated,trl-vllm (`rayrejuv rl`
#        with placement=colocated, vLLM sleeping while the learner trains and the NCCL weight sync, against
#        TRL's GRPOTrainer with vLLM colocated; without vLLM, hf rollouts against `trl` without vLLM): step
#        time ratio (target <= 1.0x TRL), sync time (target < 1 s), tokens/s per GPU.
# tests: python -m pytest -m gpu tests/test_gpu.py (colocated rl on one GPU, rl on CUDA sharing one GPU,
#        ZeRO-2/3 vs DDP, rejuvenate cuda == cpu); bench: the other bench_gpu.py parts (rl-ddp, rl-ds2,
#        plain, rejuvenate). all: colocated, then tests, then bench, all within DEADLINE seconds (default
#        450: one device call of under 8 minutes); what no longer fits is skipped with a line saying so.
#        dry-run: no GPU needed: bash syntax, package probe, every config and command built (CPU).
# Logs and json go to $OUT (default ./gpu-check-out).
# Knobs: DEADLINE (450 s; all), COLOCATED_BUDGET (300 s), TESTS_TIMEOUT (420 s; tests alone), BENCH_BUDGET
#        (none; bench alone), TESTS_K (pytest -k), BENCH_STEPS (5), PART_TIMEOUT (240 s), PYTHON (python3).
# On a machine without the package's dependencies (no Ray), pack them on a machine with pip access
# first: ../shared/tools/pack-for-device.sh .devpkgs math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
#   antlr4-python3-runtime==4.13.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# and this script unpacks .devpkgs/site.tar.xz to /tmp/site and puts it on PYTHONPATH. vLLM cannot be
# packed (vllm 0.33.0's wheel is 336 MB, a device call carries 64 MiB, and it pins torch==2.14.0): where it
# is missing the script says so and runs the colocated comparison with hf rollouts against `trl`.
set -uo pipefail
what=${1:-all}
case "$what" in all|colocated|tests|bench|dry-run) ;; *) echo "usage: $0 [all|colocated|tests|bench|dry-run]" >&2; exit 2 ;; esac
started=$SECONDS
deadline=${DEADLINE:-450}
left() { echo $(( deadline - (SECONDS - started) )); }
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
bench() {  # bench PARTS BUDGET(seconds, or empty: none) LOG
  "$PY" benchmarks/bench_gpu.py --out "$OUT" --work /tmp/bench-gpu --steps "${BENCH_STEPS:-5}" --parts "$1" \
    --part-timeout "${PART_TIMEOUT:-240}" ${2:+--budget "$2"} 2>&1 | tee -a "$OUT/$3"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: not found (no GPU driver here)"
  "$PY" -c 'import sys, torch, transformers
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available",
      torch.cuda.is_available(), "transformers", transformers.__version__)'
  "$PY" benchmarks/bench_gpu.py --probe
} 2>&1 | tee "$OUT/env.log"
if [ "$what" = dry-run ]; then
  bash -n "$0" && echo "bash -n $0: ok"
  "$PY" benchmarks/bench_gpu.py --out "$OUT" --work "$OUT/dry-run" --dry-run 2>&1 | tee "$OUT/dry-run.log"
  exit "${PIPESTATUS[0]}"
fi
rc=0
if [ "$what" = colocated ] || [ "$what" = all ]; then
  budget=${COLOCATED_BUDGET:-300}; [ "$budget" -gt "$(left)" ] && budget=$(left)
  # the peer: TRL with vLLM colocated where vLLM is installed, else TRL with transformers generate
  peer=trl-vllm; "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("vllm") is None)' || peer=trl
  bench "rl-colocated,$peer" "$budget" colocated.log || rc=1
fi
if [ "$what" = tests ] || [ "$what" = all ]; then
  limit=$(left); [ "$what" = tests ] && limit=${TESTS_TIMEOUT:-420}
  if ! "$PY" -c 'import ray' 2>/dev/null; then
    echo "tests: skipped: ray is not installed (carry .devpkgs, see the header of $0)" | tee "$OUT/tests.log"; rc=1
  elif [ "$limit" -lt 60 ]; then
    echo "tests: skipped: ${limit} s of DEADLINE left" | tee "$OUT/tests.log"
  else
    timeout -k 10 "$limit" "$PY" -m pytest -m gpu tests/test_gpu.py -s -q -p no:cacheprovider \
      ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tee "$OUT/tests.log" || rc=1
  fi
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  budget=$(left); [ "$what" = bench ] && budget=${BENCH_BUDGET:-}
  bench rl-ddp,rl-ds2,plain,rejuvenate "$budget" bench.log || rc=1
fi
echo "gpu-check $what: $(( SECONDS - started )) s, rc $rc"
exit $rc
