"""Save transformers models as HF checkpoints, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rayrejuv.io.writer import AtomicDir


def save_checkpoint(model, tokenizer, target: Path, overwrite: bool = False) -> Path:
    """model.save_pretrained + tokenizer into a temporary sibling renamed into place when complete."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with AtomicDir(target, overwrite=overwrite) as out:
        model.save_pretrained(out.tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(out.tmp)
        out.commit()
    return Path(target)


def save_state(state: dict, path: Path) -> None:
    """torch.save through a temporary file and os.replace: a crash keeps the previous state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
