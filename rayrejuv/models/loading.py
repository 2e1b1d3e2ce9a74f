"""Load a checkpoint as a transformers model or tokenizer, the same way for tiny and real models."""

from __future__ import annotations

from pathlib import Path

import torch

from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RejuvError(f"--device {device} requested but CUDA is not available here; use --device cpu")
    return d


def from_pretrained(path: Path, dtype: torch.dtype, use_safetensors: bool = True) -> torch.nn.Module:
    """The one way a local HF causal LM is loaded: no hub access, no HF progress bars (ours say
    what is happening), safetensors unless the checkpoint was accepted as pickle."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, local_files_only=True, use_safetensors=use_safetensors
    )


def load_model(ckpt: Checkpoint, dtype: torch.dtype, device: torch.device):
    """An eval-mode causal LM with frozen parameters (attribution differentiates activations only)."""
    model = from_pretrained(ckpt.path, dtype, use_safetensors=not ckpt.is_pickle)
    model.to(device).eval().requires_grad_(False)
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise RejuvError(
                f"{ckpt.role} checkpoint {ckpt.path}: tensor {name} holds NaN/Inf values; "
                "repair or replace this checkpoint before rejuvenating it"
            )
    return model


def load_tokenizer(ckpt: Checkpoint):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ckpt.path, local_files_only=True)
    except Exception as e:
        raise RejuvError(
            f"{ckpt.role} checkpoint {ckpt.path} has no usable tokenizer ({type(e).__name__}); "
            "the targeted reset tokenizes the calibration set: save the tokenizer beside the weights"
        ) from None
    return tok


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def cache_kwarg(model) -> str:
    """The name under which a transformers model's forward and `generate` take a KV cache: `cache`
    since the 5.2x rename (`past_key_values` then warns until 5.40), `past_key_values` before it."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
