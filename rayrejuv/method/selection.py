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


def reset_count(rho: float, num_candidates: int) -> int:
    """|reset set| = round(rho * number of candidate neurons), at least one when there is a
    candidate (none when SFT changed nothing). rho is a fraction of the candidates, not of all
    neurons (docs/method-choices.md): where SFT acted on every neuron the two are the same."""
    return max(1, round(rho * num_candidates)) if num_candidates else 0


def select_aggregate(relevance_sum: torch.Tensor, count: int) -> torch.Tensor:
    """Global top-`count` of the summed relevance.  (M,) -> (count,) long, sorted."""
    return relevance_sum.topk(count).indices.sort().values


def union_of_token_tops(relevance: torch.Tensor, count: int) -> torch.Tensor:
    """The paper's literal union: each token's top-`count` neurons.  (K, M) -> (M,) bool."""
    mask = torch.zeros(relevance.shape[1], dtype=torch.bool, device=relevance.device)
    mask[relevance.topk(count, dim=1).indices.flatten()] = True
    return mask


class AggregateSelector:
    """(ours, default) Sum each token's normalised relevance; keep the global top `count` of the
    candidates. `candidates` (M,) bool: the neurons that may be chosen (None: every neuron); a
    non-candidate keeps its relevance (reported) but ranks below every candidate (relevance >= 0)."""

    def __init__(
        self, num_neurons: int, count: int, candidates: torch.Tensor | None = None, device: torch.device | str = "cpu"
    ):
        self.count = count
        self.relevance_sum = torch.zeros(num_neurons, dtype=torch.float64, device=device)  # (M,)
        every = torch.ones(num_neurons, dtype=torch.bool)
        self.candidates = (every if candidates is None else candidates).to(device)  # (M,) bool
        if count > int(self.candidates.sum()):
            raise ValueError(f"cannot choose {count} of {int(self.candidates.sum())} candidate neurons")

    def update(self, relevance: torch.Tensor) -> None:
        """relevance (K, M) from token_relevance."""
        self.relevance_sum += relevance.sum(0).to(torch.float64)

    def select(self) -> torch.Tensor:
        return select_aggregate(self._ranked(self.relevance_sum), self.count)

    def _ranked(self, relevance: torch.Tensor) -> torch.Tensor:
        """(..., M) relevance with every non-candidate at -1, below any candidate's (>= 0)."""
        return relevance.masked_fill(~self.candidates, -1.0)


class UnionSelector(AggregateSelector):
    """The paper's union of per-token top-rho sets (of the candidates); its size is whatever the
    union gives, up to `count` per token."""

    def __init__(
        self, num_neurons: int, count: int, candidates: torch.Tensor | None = None, device: torch.device | str = "cpu"
    ):
        super().__init__(num_neurons, count, candidates, device)
        self.mask = torch.zeros(num_neurons, dtype=torch.bool, device=device)

    def update(self, relevance: torch.Tensor) -> None:
        super().update(relevance)
        self.mask |= union_of_token_tops(self._ranked(relevance), self.count)

    def select(self) -> torch.Tensor:
        return self.mask.nonzero().squeeze(1)


SELECTORS: dict[str, type[AggregateSelector]] = {"aggregate": AggregateSelector, "union": UnionSelector}
