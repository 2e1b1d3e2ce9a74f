"""Check that a base and an SFT checkpoint can be fused tensor by tensor."""

from __future__ import annotations

from dataclasses import fields

from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint

# Geometry fields that may differ between base and SFT: tying is handled by untying.
_MAY_DIFFER = {"tie_word_embeddings"}


def check_pair(base: Checkpoint, sft: Checkpoint) -> list[str]:
    """Validate the pair; return the logical tensor names of the fused result, in order.

    The result is tied only when both inputs are tied; otherwise it carries its own lm_head.
    """
    if base.geometry.architecture != sft.geometry.architecture:
        raise RejuvError(
            f"base is {base.geometry.architecture} but SFT is {sft.geometry.architecture}; "
            "rejuvenation fuses an SFT model with the base it was fine-tuned from"
        )
    for f in fields(base.geometry):
        if f.name in _MAY_DIFFER:
            continue
        b, s = getattr(base.geometry, f.name), getattr(sft.geometry, f.name)
        if b != s:
            raise RejuvError(
                f"base and SFT differ in {f.name} ({b} vs {s}); pass the base checkpoint the SFT model was trained from"
            )
    base.check_complete()
    sft.check_complete()
    tied = base.geometry.tie_word_embeddings and sft.geometry.tie_word_embeddings
    spec = sft.spec
    names = list(sft.names)
    if not tied and spec.lm_head not in names:
        names.append(spec.lm_head)  # the SFT side is tied: its lm_head is its embedding
    base_names = set(base.names) | ({spec.lm_head} if not tied else set())
    only_sft = [n for n in names if n not in base_names]
    only_base = sorted(base_names - set(names))
    if only_sft or only_base:
        side, missing = ("base", only_sft) if only_sft else ("SFT", only_base)
        raise RejuvError(
            f"tensor {missing[0]} is missing from the {side} checkpoint ({len(missing)} missing in all); "
            "both checkpoints must hold the same tensors"
        )
    for n in names:
        mb, ms = base.logical_meta(n), sft.logical_meta(n)
        if mb.shape != ms.shape:
            raise RejuvError(
                f"tensor {n} has shape {list(mb.shape)} in base but {list(ms.shape)} in SFT; "
                "the checkpoints are not the same architecture (resized vocabulary?)"
            )
    return names
