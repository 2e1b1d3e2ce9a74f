"""The frozen reference policy (the starting checkpoint) in its own actor: log-probs for the KL term."""

from __future__ import annotations

from pathlib import Path

import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.models.rollout import Rollout


class ReferenceWorker:
    def __init__(self, model_dir: str, device: str, dtype: str, threads: int, micro_batch_size: int):
        from rayrejuv.io.checkpoint import Checkpoint
        from rayrejuv.models.loading import DTYPES, load_model, resolve_device

        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.model = load_model(Checkpoint(Path(model_dir), role="reference"), DTYPES[dtype], self.device)
        self.micro = micro_batch_size

    @torch.no_grad()
    def logprobs(self, batch: Rollout, temperature: float) -> torch.Tensor:
        """(N, T) teacher-forced log-probs of the completions under the frozen model."""
        from rayrejuv.models.logprobs import completion_logprobs

        parts = [
            completion_logprobs(self.model, batch.select(slice(i, i + self.micro)).to(self.device), temperature).cpu()
            for i in range(0, len(batch), self.micro)
        ]
        if self.device.type == "cuda":  # free the (micro, T, V) logits' blocks for a learner sharing the GPU
            torch.cuda.empty_cache()
        return torch.cat(parts)


def start_reference(model_dir: Path, rollout: RolloutConfig, gpus: float, micro_batch_size: int):
    """The reference actor on the rollouts' device and dtype, outside any caller's placement group."""
    import ray

    return (
        ray.remote(ReferenceWorker)
        .options(num_cpus=1.0, num_gpus=gpus, scheduling_strategy="DEFAULT")
        .remote(str(model_dir), rollout.device, rollout.dtype, 1, micro_batch_size)
    )
