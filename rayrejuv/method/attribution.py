"""Direct logit attribution under a frozen final RMSNorm (paper Eq. 2) and neuron scores (Eq. 3).

The final residual stream is x = embed + sum_l (attn_l + mlp_l). With the final norm's scale
1/rms(x) frozen at its real value, the centred target logit

    z = u_c . (gamma * x / rms(x)) = g . x,   g = gamma * u_c / rms(x),   u_c = u_target - mean_v u_v

is linear in x, so every component's contribution is g . component, and the contributions sum
to the real logit up to float rounding.
"""

import torch


def centred_unembedding(w_unembed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """u_target - mean over the vocabulary.  w_unembed (V, D), targets (K,) -> (K, D).

    Centring removes the part of a contribution that shifts every logit alike (softmax ignores it).
    """
    return w_unembed[targets] - w_unembed.mean(0, keepdim=True)


def frozen_norm_readout(x_final: torch.Tensor, gamma: torch.Tensor, u: torch.Tensor, eps: float) -> torch.Tensor:
    """g = gamma * u / rms(x), the linear readout of the logit under the frozen final norm.

    x_final (K, D) residual stream before the final norm; gamma (D,); u (K, D) -> g (K, D).
    """
    rms = x_final.pow(2).mean(-1, keepdim=True).add(eps).sqrt()  # (K, 1)
    return gamma * u / rms


def component_contribution(component: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A residual write's share of the logit: component (K, D), g (K, D) -> (K,)."""
    return (component * g).sum(-1)


def writer_column_scores(activation: torch.Tensor, weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Exact scores of o_proj/down_proj columns: a_j * (W[:, j] . g).

    activation (K, I) input of the projection at the target position; weight (D, I); g (K, D)
    -> (K, I). Summed over j this is the projection's contribution without its bias.
    """
    return activation * (g @ weight)


def grad_x_act_row_scores(output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient x activation of a row's output, summed over positions: (K, T, O) x2 -> (K, O).

    First-order estimate of the logit change when the row's output is ablated (for q/k this is
    before RoPE: a local proxy, not an exact decomposition).
    """
    return (output * grad).sum(1)
