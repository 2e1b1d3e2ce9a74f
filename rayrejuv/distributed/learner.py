"""The GRPO learner, one per Ray Train worker: the policy behind a DDP or DeepSpeed engine.

Every worker receives the same global batch and trains on its own contiguous rows. Losses are
normalised by counts of the *global* minibatch (tokens or sequences) times the world size, so
after the engines average gradients over ranks, 1 worker and W workers take the same step.

Memory: the engine wraps a CompletionScorer (log-probs with the LM head a chunk of tokens at a
time, never the (n, P+T, V) logits), the model's layers recompute their activations in the
backward (gradient checkpointing, on by default as in TRL's GRPO). The rollout sync walks the
parameters where they live (gathered bucket by bucket under ZeRO-3); the update norm compares them
with the previous step's, kept on the learner's device in the learner's dtype (under ZeRO-3 each
rank keeps its own partition); checkpoints read the parameters themselves.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rayrejuv.config.rl import GRPOConfig, LearnerConfig
from rayrejuv.distributed.weight_sync import WeightSource
from rayrejuv.method.grpo import grpo_loss
from rayrejuv.models.loading import DTYPES
from rayrejuv.models.logprobs import CompletionScorer, score_completions
from rayrejuv.models.rollout import Rollout


def _sampled_stats(mb: Rollout, logp: torch.Tensor, entropy: torch.Tensor, meter: Meter) -> None:
    """The policy's entropy on the sampled tokens, and how far the rollout engine's log-probs of
    them are from the learner's (equal up to numerics after a sync). logp, entropy: (n, T)."""
    m = mb.completion_mask.bool()
    tokens = float(m.sum())
    if tokens:
        meter.add("policy/entropy", float(entropy[m].mean()), tokens)
        meter.add("rollout/logprob_abs_diff", float((logp - mb.logprobs.to(logp))[m].abs().mean()), tokens)


@dataclass
class Meter:
    """Weighted means that can be summed over micro-batches and ranks."""

    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def merge(self, other: Meter) -> None:
        for name in other.sums:
            self.add(name, other.sums[name] / other.weights[name] if other.weights[name] else 0.0,
                     other.weights[name])

    def reduce(self) -> dict[str, float]:
        """Means over every rank (an all-reduce when torch.distributed is up)."""
        names = sorted(self.sums)
        t = torch.tensor([[self.sums[n], self.weights[n]] for n in names], dtype=torch.float64)
        if _world() > 1:
            t = t.to(_collective_device())
            torch.distributed.all_reduce(t)
        return {n: float(s / w) if w else 0.0 for n, (s, w) in zip(names, t.tolist())}


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _collective_device() -> torch.device:
    """Where a tensor must live for a collective: NCCL reduces CUDA tensors only (a CPU tensor
    raises "No backend type associated with device type cpu"), gloo CPU tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_sum(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    if _world() > 1:
        t = t.to(_collective_device())
        torch.distributed.all_reduce(t)
    return float(t)


class DDPEngine:
    """torch DDP (gloo on CPU, nccl on GPU) with AdamW; one process per worker."""

    name = "ddp"

    def __init__(self, scorer: CompletionScorer, grpo: GRPOConfig, learner: LearnerConfig, device: torch.device):
        self.module = scorer.lm  # the HF model: its parameters are saved and synced
        self.model = (  # what the learner calls
            torch.nn.parallel.DistributedDataParallel(scorer, device_ids=[device] if device.type == "cuda" else None)
            if _world() > 1
            else scorer
        )
        self.opt = torch.optim.AdamW(scorer.parameters(), lr=grpo.lr, weight_decay=grpo.weight_decay)
        self.max_grad_norm = grpo.max_grad_norm

    def no_sync(self, last: bool):
        """Skip the gradient all-reduce on every micro-batch but the last of a step."""
        if last or _world() == 1:
            return contextlib.nullcontext()
        return self.model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(grad_norm)

    def full_weights(self) -> contextlib.AbstractContextManager[dict[str, torch.Tensor]]:
        """The full parameters (detached, on their device) while the context lasts."""
        return contextlib.nullcontext({k: p.detach() for k, p in self.module.named_parameters()})

    def walk(self, bucket_bytes: int) -> Iterator[tuple[str, torch.Tensor]]:
        """The full parameters one at a time (tied ones once), detached, on their device."""
        return ((k, p.detach()) for k, p in self.module.named_parameters())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(p.shape) for k, p in self.module.named_parameters()}

    def local_weights(self) -> dict[str, torch.Tensor]:
        """The parameter values this rank holds (all of them: DDP replicates)."""
        return {k: p.detach() for k, p in self.module.named_parameters()}

    partitioned = False  # local_weights are every parameter, on every rank

    def save(self, directory: Path) -> None:
        if _rank() == 0:
            torch.save(self.opt.state_dict(), directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        self.opt.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))


class DeepSpeedEngine:
    """DeepSpeed ZeRO (stage from config) around a torch AdamW; gradient averaging by DeepSpeed."""

    name = "deepspeed"

    def __init__(self, scorer: CompletionScorer, grpo: GRPOConfig, learner: LearnerConfig, device: torch.device):
        import deepspeed

        self._ds = deepspeed
        self.stage = learner.zero_stage
        config = {
            "train_micro_batch_size_per_gpu": grpo.micro_batch_size,
            "gradient_accumulation_steps": 1,  # we accumulate ourselves, with our own loss normalisation
            "gradient_clipping": grpo.max_grad_norm,
            "zero_optimization": {"stage": learner.zero_stage},
            "bf16": {"enabled": learner.dtype == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        opt = torch.optim.AdamW(scorer.parameters(), lr=grpo.lr, weight_decay=grpo.weight_decay)
        self.engine, self.opt, _, _ = deepspeed.initialize(model=scorer, optimizer=opt, config=config)
        self.module = self.engine.module.lm
        self.model = self.engine

    def no_sync(self, last: bool):
        # ZeRO reduces gradients in its backward hooks; stage >= 2 cannot skip them
        if last or _world() == 1 or self.stage >= 2:
            return contextlib.nullcontext()
        return self.engine.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        self.engine.step()
        return float(self.engine.get_global_grad_norm() or 0.0)

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[dict[str, torch.Tensor]]:
        """The full parameters while the context lasts, gathered on every rank (ZeRO-3 partitions
        them; this is a collective)."""
        params = list(self.module.named_parameters())
        ctx = self._ds.zero.GatheredParameters([p for _, p in params]) if self.stage == 3 else contextlib.nullcontext()
        with ctx:
            yield {k: p.detach() for k, p in params}

    def walk(self, bucket_bytes: int) -> Iterator[tuple[str, torch.Tensor]]:
        """The full parameters one at a time; under ZeRO-3 gathered about `bucket_bytes` at a time (a
        collective: every rank walks to the end), each valid until the walk moves past its group."""
        params = list(self.module.named_parameters())
        if self.stage != 3:
            yield from ((k, p.detach()) for k, p in params)
            return
        for group in _consecutive_groups(params, [p.ds_numel * p.element_size() for _, p in params], bucket_bytes):
            with self._ds.zero.GatheredParameters([p for _, p in group]):
                yield from ((k, p.detach()) for k, p in group)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Full shapes (ZeRO-3's parameters are empty outside a gather; ds_shape is the full one)."""
        return {k: tuple(p.ds_shape if self.stage == 3 else p.shape) for k, p in self.module.named_parameters()}

    def local_weights(self) -> dict[str, torch.Tensor]:
        """The parameter values this rank holds: ZeRO-3's partition of each (ds_tensor), else all."""
        return {k: (p.ds_tensor if self.stage == 3 else p).detach() for k, p in self.module.named_parameters()}

    @property
    def partitioned(self) -> bool:
        return self.stage == 3

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="deepspeed", save_latest=False)

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(directory), tag="deepspeed", load_module_strict=True)


def _consecutive_groups(items: list, sizes: list[int], budget: int) -> list[list]:
    """`items` in order, cut into runs of total size <= budget (an item larger than it alone)."""
    groups, total = [[]], 0
    for item, size in zip(items, sizes):
        if groups[-1] and total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += size
    return [g for g in groups if g]


ENGINES = {"ddp": DDPEngine, "deepspeed": DeepSpeedEngine}
# a learner checkpoint's full-precision parameters when model/ rounds them; torch.save streams each
# tensor to the file (safetensors' save_file first copies all of them into one bytes object)
MASTER = "weights.pt"


class Learner:
    def __init__(self, model: torch.nn.Module, grpo: GRPOConfig, learner: LearnerConfig, device: torch.device):
        self.cfg, self.learner_cfg = grpo, learner
        self.device = device
        if learner.gradient_checkpointing:
            with warnings.catch_warnings():  # renamed activation_checkpointing_enable in transformers 5.2x
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.to(device).train()
        scorer = CompletionScorer(model, grpo.logprob_chunk_size)
        self.engine = ENGINES[learner.resolved_engine()](scorer, grpo, learner, device)
        # the previous step's values of this rank's parameters, for the update norm (learner device and dtype)
        self._previous = {k: t.clone() for k, t in self.engine.local_weights().items()}

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def shard(self, batch: Rollout) -> Rollout:
        """This rank's contiguous rows of the global batch."""
        per = len(batch) // _world()
        return batch.select(slice(_rank() * per, (_rank() + 1) * per))

    def _micro(self, batch: Rollout) -> list[Rollout]:
        m = self.cfg.micro_batch_size
        # each trimmed to its own widths (a micro-batch of one group pads to its own prompt): (n, P_i), (n, T_i)
        return [batch.select(slice(i, i + m)).trimmed().to(self.device) for i in range(0, len(batch), m)]

    @torch.no_grad()
    def score(self, batch: Rollout) -> tuple[torch.Tensor, Meter]:
        """Log-probs of the current policy (the GRPO `old` policy) and the sampled tokens' entropy."""
        meter, parts = Meter(), []
        self.module.eval()
        for mb in self._micro(batch):
            logp, entropy = score_completions(self.engine.model, mb, self.cfg.temperature,
                                              self.cfg.share_prompts)  # (n, T) each
            _sampled_stats(mb, logp, entropy, meter)
            parts.append(logp.cpu())
        self.module.train()
        T = batch.completion_ids.shape[1]
        return torch.cat([torch.nn.functional.pad(p, (0, T - p.shape[1])) for p in parts]), meter

    def update(self, batch: Rollout) -> dict[str, float]:
        """GRPO on the global `batch` (advantages set; ref_logprobs when beta > 0):
        `updates_per_batch` epochs x `minibatches` optimizer steps. Minibatch k is the same rows
        of the global batch for any world size; each rank trains on its slice of it."""
        g = self.cfg
        size = len(batch) // g.minibatches
        minibatches = [self.shard(batch.select(slice(k * size, (k + 1) * size))) for k in range(g.minibatches)]
        meter = Meter()
        old: list[torch.Tensor | None] = []
        for mb in minibatches:  # log-probs of the policy that sampled (after the last sync)
            if not g.scores_old_policy:  # `old` is the training forward's, detached: no pass (a third of a step)
                old.append(None)
                continue
            logp, m = self.score(mb)
            old.append(logp)
            meter.merge(m)
        for _ in range(g.updates_per_batch):
            for mb, mb_old in zip(minibatches, old):
                self._train_minibatch(mb, mb_old, meter)
                meter.add("policy/grad_norm", self.engine.step())
        metrics = meter.reduce()
        metrics["policy/update_norm"] = self._refresh_weights()
        return metrics

    def _train_minibatch(self, mb: Rollout, mb_old: torch.Tensor | None, meter: Meter) -> None:
        """Accumulate the gradient of the minibatch's loss, one micro-batch at a time (`mb_old`
        None: the policy that sampled is the current one, see update)."""
        g = self.cfg
        count = float(mb.completion_mask.sum()) if g.aggregation == "token_mean" else float(len(mb))
        denominator = _global_sum(count) / _world()  # the engine's mean over ranks divides back out
        micros = self._micro(mb)
        start = 0
        for i, micro in enumerate(micros):
            n = len(micro)
            with self.engine.no_sync(last=i == len(micros) - 1):
                logp, entropy = score_completions(self.engine.model, micro, g.temperature,
                                                  g.share_prompts)  # (n, T), with grad
                if mb_old is None:
                    _sampled_stats(micro, logp.detach(), entropy.detach(), meter)
                loss, stats = grpo_loss(
                    logp,
                    logp.detach() if mb_old is None else mb_old[start : start + n, : logp.shape[1]].to(self.device),
                    micro.advantages.to(logp),
                    micro.completion_mask,
                    epsilon=g.epsilon,
                    epsilon_high=g.epsilon_high,
                    beta=g.beta,
                    logp_ref=None if micro.ref_logprobs is None else micro.ref_logprobs.to(logp),
                    kl_kind=g.kl_estimator,
                    aggregation=g.aggregation,
                    denominator=denominator,
                    entropy=entropy if g.entropy_coeff else None,  # unused at 0: its graph goes with it
                    entropy_coeff=g.entropy_coeff,
                )
                self.engine.backward(loss)
            start += n
            tokens = float(micro.completion_mask.sum())
            for name, value in (("policy/kl", stats.kl), ("policy/clip_fraction", stats.clip_fraction),
                                ("policy/ratio_mean", stats.ratio_mean), ("policy/pg_loss", stats.pg_loss)):
                meter.add(name, value, tokens)
            if g.entropy_coeff:
                meter.add("policy/entropy_bonus", g.entropy_coeff * stats.entropy, tokens)

    @torch.no_grad()
    def _refresh_weights(self) -> float:
        """||new - old||, the update's norm over every parameter, computed on the learner's device
        (one float out at the end); the previous values are overwritten with the new ones in place.
        Under ZeRO-3 each rank sums over its own partitions and the sums are all-reduced."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for k, now in self.engine.local_weights().items():
            before = self._previous[k]
            total += (now.float() - before.float()).pow(2).sum()  # float32 squares, summed per tensor
            before.copy_(now)
        if self.engine.partitioned and _world() > 1:
            total = total.to(_collective_device())
            torch.distributed.all_reduce(total)
        return math.sqrt(float(total))

    def weight_source(self, bucket_bytes: int) -> WeightSource:
        """The parameters for a rollout sync, walked where they live (gathered about `bucket_bytes`
        at a time under ZeRO-3: a walk every rank takes)."""
        sent = {id(p): k for k, p in self.module.named_parameters()}
        aliases = {k: sent[id(p)] for k, p in self.module.named_parameters(remove_duplicate=False) if sent[id(p)] != k}
        return WeightSource(self.engine.shapes(), lambda: self.engine.walk(bucket_bytes), self.device,
                            transient=self.engine.partitioned, collective=self.engine.partitioned and _world() > 1,
                            aliases=aliases)

    def weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the full, current parameters, in the learner's dtype (a collective under ZeRO-3)."""
        with self.engine.full_weights() as full:
            return {k: p.to("cpu", copy=True) for k, p in full.items()}

    def save(self, directory: Path, tokenizer) -> None:
        """model/ (an HF checkpoint in learner.save_dtype, rank 0), the parameters at full precision
        when model/ rounds them (MASTER, so a resumed run continues exactly) and the engine's
        optimizer state (per rank)."""
        dtype = self.learner_cfg.save_dtype
        if dtype not in DTYPES:
            raise ValueError(f"learner.save_dtype={dtype!r}: `rayrejuv rl` resolves 'auto' to the start's dtype")
        with self.engine.full_weights() as full:  # a collective under ZeRO-3: every rank gathers
            if _rank() == 0:
                save_model(self.module, full, dtype, directory / "model")
                tokenizer.save_pretrained(directory / "model")
                if any(v.dtype != DTYPES[dtype] for v in full.values()):  # torch.save streams each tensor
                    torch.save({k: p.to("cpu") for k, p in full.items()}, directory / MASTER)
        self.engine.save(directory)

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        master, state = directory / MASTER, {}
        if master.exists():  # model/ holds them rounded
            state = torch.load(master, weights_only=True, mmap=True)
        else:
            for f in sorted((directory / "model").glob("*.safetensors")):
                state.update(load_file(f))
        self.module.load_state_dict(state, strict=False)  # load_state_dict casts to the parameters' dtype
        self.engine.load(directory)
        for k, t in self.engine.local_weights().items():
            self._previous[k].copy_(t)


def save_model(model: torch.nn.Module, weights: dict[str, torch.Tensor], dtype: str, target: Path) -> None:
    """save_pretrained of `weights` cast to `dtype`, with config.json's dtype saying so
    (save_pretrained writes the parameters' dtype there). Each tensor is copied to CPU memory of its
    own: parameters can be views of one flat buffer (DeepSpeed), which safetensors refuses."""
    cast = {k: v.to("cpu", DTYPES[dtype], copy=True) for k, v in weights.items()}
    model.save_pretrained(target, state_dict=cast)
    config = target / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"dtype": dtype}, indent=2) + "\n")
