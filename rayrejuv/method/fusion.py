"""Base-anchored model fusion (paper Eq. 1)."""

import torch


def fuse(theta_sft: torch.Tensor, theta_base: torch.Tensor, alpha: float) -> torch.Tensor:
    """theta_fuse = alpha * theta_SFT + (1 - alpha) * theta_base, computed in float32.

    Exact at the ends: alpha=1 returns theta_SFT and alpha=0 theta_base bit for bit
    (after casting back to their dtype), since x*1 + y*0 == x for finite y.
    """
    return theta_sft.to(torch.float32).mul(alpha).add_(theta_base.to(torch.float32), alpha=1.0 - alpha)
