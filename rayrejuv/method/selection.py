"""Choose the reset set (paper Eq. 4) from per-token neuron scores."""

from typing import Literal

import torch

ScoreSign = Literal["abs", "positive"]


def token_relevance(scores: torch.Tensor, score_sign: ScoreSign) -> torch.Tensor:
    """Per-token neuron relevance, normalised so every token weighs the same.

    scores (K, M) signed per-token neuron scores -> (K, M), non-negative, rows summing to 1
    (a row of zeros stays zeros). `abs` counts a neuron by the size of its effect on the target
    logit; `positive` only by how much it pushes the target up.
    """
    r = scores.abs() if score_sign == "abs" else scores.clamp(min=0)
    total = r.sum(-1, keepdim=True)
    return r / total.clamp(min=torch.finfo(r.dtype).tiny)


def reset_count(rho: float, num_neurons: int) -> int:
    """|reset set| = round(rho * number of neurons), at least one."""
    return max(1, round(rho * num_neurons))


def select_aggregate(relevance_sum: torch.Tensor, count: int) -> torch.Tensor:
    """Global top-`count` of the summed relevance.  (M,) -> (count,) long, sorted."""
    return relevance_sum.topk(count).indices.sort().values


def union_of_token_tops(relevance: torch.Tensor, count: int) -> torch.Tensor:
    """The paper's literal union: each token's top-`count` neurons.  (K, M) -> (M,) bool."""
    mask = torch.zeros(relevance.shape[1], dtype=torch.bool, device=relevance.device)
    mask[relevance.topk(count, dim=1).indices.flatten()] = True
    return mask


class AggregateSelector:
    """(ours, default) Sum each token's normalised relevance; keep the global top `count`."""

    def __init__(self, num_neurons: int, count: int, device: torch.device | str = "cpu"):
        self.count = count
        self.relevance_sum = torch.zeros(num_neurons, dtype=torch.float64, device=device)  # (M,)

    def update(self, relevance: torch.Tensor) -> None:
        """relevance (K, M) from token_relevance."""
        self.relevance_sum += relevance.sum(0).to(torch.float64)

    def select(self) -> torch.Tensor:
        return select_aggregate(self.relevance_sum, self.count)


class UnionSelector(AggregateSelector):
    """The paper's union of per-token top-rho sets; its size is whatever the union gives."""

    def __init__(self, num_neurons: int, count: int, device: torch.device | str = "cpu"):
        super().__init__(num_neurons, count, device)
        self.mask = torch.zeros(num_neurons, dtype=torch.bool, device=device)

    def update(self, relevance: torch.Tensor) -> None:
        super().update(relevance)
        self.mask |= union_of_token_tops(relevance, self.count)

    def select(self) -> torch.Tensor:
        return self.mask.nonzero().squeeze(1)


SELECTORS: dict[str, type[AggregateSelector]] = {"aggregate": AggregateSelector, "union": UnionSelector}
