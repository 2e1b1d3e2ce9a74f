"""A GRPO step's throughput as verl reports it, and its model FLOPs utilisation (MFU).

    perf/throughput        = tokens / (step seconds x GPUs)     tokens: prompt + completion of the
                                                                trained batch (verl: its attention mask)
    perf/generation_share  = generate seconds / step seconds
    perf/mfu               = model FLOPs / (step seconds x GPUs x peak FLOP/s of one GPU)

Model FLOPs (Kaplan et al. 2020; PaLM's MFU counts these, not the recomputation of gradient
checkpointing): 2 N per token for a forward, 6 N for a forward and backward, N the parameters:

    6 N x trained x updates_per_batch        the learner's epochs over the batch
    2 N x trained x forward_passes           the old-policy log-probs (+ the reference's, beta > 0)
    2 N x generated                          the rollout engines: prompt + completion of every sample

Attention's quadratic term is left out (small at these lengths; verl adds it per architecture).
"""

from __future__ import annotations

from dataclasses import dataclass

# Peak dense bf16 tensor-core TFLOP/s of one GPU (vendor data sheets; verl's utils/flops_counter table).
PEAK_TFLOPS = {
    "B200": 2250.0,
    "H200": 989.0,
    "H100": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H800": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A40": 149.7,
}


def peak_tflops(device_name: str) -> float | None:
    """The table's entry for a device name (torch.cuda.get_device_name), the longest key it
    contains: "NVIDIA H100 80GB HBM3" -> H100, "NVIDIA H100 PCIe" -> H100 PCIe, "NVIDIA L40S" -> L40S.
    None for a device the table does not know."""
    hits = [key for key in PEAK_TFLOPS if key in device_name]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


def step_flops(params: int, trained: int, generated: int, updates: int, forward_passes: int) -> float:
    """Model FLOPs of one GRPO step (the module docstring's sum)."""
    return 6.0 * params * trained * updates + 2.0 * params * trained * forward_passes + 2.0 * params * generated


@dataclass(frozen=True)
class Throughput:
    """What a run's perf/* metrics need besides each step's counts and times."""

    gpus: float  # the run's GPU demand; 1 for a CPU-only run (verl divides by its GPUs)
    params: int  # policy parameters (a tied LM head counted once)
    updates: int  # grpo.updates_per_batch
    forward_passes: int  # forward-only passes over the trained batch: old log-probs (1) + reference (beta > 0)
    peak_flops: float | None  # FLOP/s of one GPU; None: no perf/mfu

    def metrics(
        self, trained: float, generated: float, step_seconds: float, generate_seconds: float
    ) -> dict[str, float]:
        """trained: prompt + completion tokens of the batch the learner trains on; generated: of
        every sampled sequence (all draws of dynamic sampling); the step's and its generation's seconds."""
        out = {
            "perf/time_per_step": step_seconds,
            "perf/throughput": trained / (step_seconds * self.gpus),
            "perf/generation_share": generate_seconds / step_seconds,
        }
        if self.peak_flops is not None:
            flops = step_flops(self.params, trained, generated, self.updates, self.forward_passes)
            out["perf/mfu"] = flops / (step_seconds * self.gpus * self.peak_flops)
        return out
