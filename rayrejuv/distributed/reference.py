"""The frozen reference policy (the starting checkpoint) in its own actor: log-probs for the KL term."""

from __future__ import annotations

from pathlib import Path

import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.models.rollout import Rollout

REFERENCE_CPUS = 1.0  # what the reference actor reserves (and sizes torch's threads to)


class ReferenceWorker:
    def __init__(self, model_dir: str, device: str, dtype: str, cpus: float, micro_batch_size: int, chunk: int):
        from rayrejuv.models.loading import resolve_device
        from rayrejuv.runs.resources import set_torch_threads

        set_torch_threads(cpus)
        self.device, self.dtype = resolve_device(device), dtype
        self.scorer = None
        self.load(model_dir, micro_batch_size, chunk)

    def load(self, model_dir: str, micro_batch_size: int, chunk: int) -> None:
        """Hold `model_dir` as the frozen reference (a pool's next run: its own start), scored
        `micro_batch_size` sequences and `chunk` completion tokens of the LM head at a time."""
        from rayrejuv.io.checkpoint import Checkpoint
        from rayrejuv.models.loading import DTYPES, load_model
        from rayrejuv.models.logprobs import CompletionScorer

        self.scorer = None  # the previous model goes before the next one loads
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        model = load_model(Checkpoint(Path(model_dir), role="reference"), DTYPES[self.dtype], self.device)
        self.scorer = CompletionScorer(model, chunk)  # the LM head a chunk of tokens at a time
        self.micro = micro_batch_size

    @torch.no_grad()
    def logprobs(self, batch: Rollout, temperature: float, share_prompts: bool = False) -> torch.Tensor:
        """(N, T) teacher-forced log-probs of the completions under the frozen model (share_prompts: each
        group's prompt run once, models.logprobs.CompletionScorer)."""
        from rayrejuv.models.logprobs import score_completions

        parts = [
            score_completions(self.scorer, batch.select(slice(i, i + self.micro)).to(self.device), temperature,
                              share_prompts)[0].cpu()
            for i in range(0, len(batch), self.micro)
        ]
        if self.device.type == "cuda":  # free the chunks' logits blocks for a learner sharing the GPU
            torch.cuda.empty_cache()
        return torch.cat(parts)


def start_reference(model_dir: Path, rollout: RolloutConfig, gpus: float, micro_batch_size: int, chunk: int,
                    placement: dict | None = None):
    """The reference actor on the rollouts' device and dtype, outside any caller's placement group
    unless `placement` (Ray options: a colocated bundle's scheduling strategy and GPU share) puts it in one."""
    import ray

    options = {"num_cpus": REFERENCE_CPUS, "num_gpus": gpus, "scheduling_strategy": "DEFAULT"} | (placement or {})
    return (
        ray.remote(ReferenceWorker)
        .options(**options)
        .remote(str(model_dir), rollout.device, rollout.dtype, REFERENCE_CPUS, micro_batch_size, chunk)
    )
