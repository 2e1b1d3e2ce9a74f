"""Tiny causal LMs of every supported family, built locally with random weights."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def tiny_config(
    family: str,
    vocab_size: int,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 256,
    **extra,
):
    import transformers

    config_cls = getattr(transformers, FAMILY_CONFIGS[family][0])
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim or hidden_size // num_heads,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=max_position_embeddings,
        architectures=[FAMILY_CONFIGS[family][1]],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **extra,
    )


def build_model(config, seed: int, init_std: float = 0.02):
    """Random init with RMSNorm weights jittered around 1 (so tests see non-trivial gammas)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config.initializer_range = init_std
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.normal_(0.0, init_std)
    return model


def save(model, tokenizer, out_dir: str | Path, dtype: torch.dtype = torch.float32, max_shard_size: str | None = None):
    out_dir = Path(out_dir)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


@torch.no_grad()
def perturb(model, seed: int, scale: float = 0.02):
    """An 'SFT' model for tests: every parameter moved by Gaussian noise of relative size `scale`."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 1e-3))
    return model
