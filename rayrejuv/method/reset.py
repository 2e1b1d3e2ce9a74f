"""Targeted neuron reset (paper Eq. 5)."""

import torch

from rayrejuv.arch import Axis


def neuron_slice(axis: Axis, index: torch.Tensor, ndim: int) -> tuple:
    """The indexing tuple that selects neurons `index` of a weight (2-D) or bias (1-D)."""
    if axis is Axis.ROW or ndim == 1:
        return (index,)
    return (slice(None), index)


def reset_neurons(
    theta_fuse: torch.Tensor, theta_base: torch.Tensor, index: torch.Tensor, axis: Axis, omega: float
) -> torch.Tensor:
    """theta_reset = omega * theta_base + (1 - omega) * theta_fuse on the selected rows/columns.

    `theta_fuse` is float32 and updated in place; everything outside `index` is untouched.
    Rows for Axis.ROW (W[i, :], and b[i] for a bias), columns for Axis.COL (W[:, j]).
    """
    if index.numel() == 0:
        return theta_fuse
    sl = neuron_slice(axis, index, theta_fuse.ndim)
    base = theta_base.to(torch.float32)[sl]
    theta_fuse[sl] = base.mul_(omega).add_(theta_fuse[sl], alpha=1.0 - omega)
    return theta_fuse
