"""Targeted neuron reset (paper Eq. 5)."""

import torch

from rayrejuv.arch import Axis


def neuron_slice(axis: Axis, index: torch.Tensor, ndim: int) -> tuple:
    """The indexing tuple that selects neurons `index` of a weight (2-D) or bias (1-D):
    rows W[i, :] and b[i] for Axis.ROW, columns W[:, j] for Axis.COL."""
    if axis is Axis.ROW or ndim == 1:
        return (index,)
    return (slice(None), index)


def reset(theta_fuse: torch.Tensor, theta_base: torch.Tensor, omega: float) -> torch.Tensor:
    """theta_reset = omega * theta_base + (1 - omega) * theta_fuse, in float32, elementwise.

    Applied to the selected neuron slices only. omega=1 gives theta_base and omega=0 theta_fuse
    bit for bit (two rounded products and a rounded sum, no fused multiply-add).
    """
    out = theta_base.to(torch.float32, copy=True).mul_(omega)
    return out.add_(theta_fuse.to(torch.float32).mul(1.0 - omega))
