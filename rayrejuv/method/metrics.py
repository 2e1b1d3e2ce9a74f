"""Diagnosis statistics as pure functions: pass@k and parameter drift."""

from __future__ import annotations

from math import comb

import torch


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if k > num_samples:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def mean_squared_drift(theta_sft: torch.Tensor, theta_base: torch.Tensor) -> float:
    """mean((theta_SFT - theta_base)^2), in float64."""
    d = theta_sft.double() - theta_base.double()
    return float(d.pow(2).mean())


def relative_drift(theta_sft: torch.Tensor, theta_base: torch.Tensor) -> float:
    """||theta_SFT - theta_base|| / ||theta_base||."""
    d = theta_sft.double() - theta_base.double()
    return float(d.norm() / theta_base.double().norm().clamp(min=1e-30))


def pooled_abs_delta(theta_sft: torch.Tensor, theta_base: torch.Tensor, size: int = 96) -> torch.Tensor:
    """|delta| of a matrix max-pooled to at most size x size, for heat maps where spikes must
    stay visible.  (R, C) -> (<=size, <=size)."""
    d = (theta_sft.float() - theta_base.float()).abs()
    if d.ndim == 1:
        d = d[None, :]
    r, c = d.shape
    kr, kc = -(-r // size), -(-c // size)  # ceil division
    d = torch.nn.functional.pad(d, (0, (-c) % kc, 0, (-r) % kr))
    return d.reshape(d.shape[0] // kr, kr, d.shape[1] // kc, kc).amax(dim=(1, 3))
