"""`rayrejuv testbed build`: a tiny verifiable math world where the paper's story can happen.

    DIR/tokenizer/              character tokenizer (standard HF files)
    DIR/base/                   tiny model "pre-trained" on generic text and on Q/A problems of
                                other phrasings (it knows the format, not the ID task)
    DIR/sft/epoch-<e>/          the SFT ladder (constant LR, same data order), e = 0.5 ... 32
    DIR/data/*.jsonl            sft, calibration (prompt/response); rl_train, eval_id, eval_ood,
                                eval_hard, eval_wide, eval_general (prompt/answer, with the worked response)
    DIR/testbed.json            the config it was built with, timings, losses

Every step is cached: a re-run reuses what exists and resumes an interrupted ladder from its
last saved state; `force` rebuilds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rayrejuv.commands.testbed.config import TinyWorldConfig
from rayrejuv.commands.testbed.real import build_real_fixture  # noqa: F401  (`testbed real`: the CLI imports drivers)
from rayrejuv.io.writer import atomic_write_text
from rayrejuv.models.saving import save_checkpoint, save_state
from rayrejuv.runs.directory import RunDir, claim_run_dir
from rayrejuv.runs.kernels import cpu_kernels
from rayrejuv.runs.resources import set_torch_threads
from rayrejuv.runs.tracking import tracked_run
from rayrejuv.testbed import task
from rayrejuv.testbed.tiny import build_model, tiny_config
from rayrejuv.testbed.tokenizer import build_char_tokenizer
from rayrejuv.testbed.train import steps_for, train_pairs
from rayrejuv.timing import PhaseTimer

MANIFEST = "testbed.json"
# Every world is built with this many torch threads, whatever the machine: the weights depend on the
# count (the GEMMs' blocking; the quick world built with 1 and with 2 threads differs by up to 3.3e-6
# in every SFT rung, which RL then amplifies), so a world is the same on every machine. 2: the
# cores of the machine the README's and docs/testbed.md's worlds were built and measured on (and CI's).
WORLD_THREADS = 2
DATA_FILES = ("sft", "calibration", "rl_train", "eval_id", "eval_ood", "eval_hard", "eval_wide", "eval_general")


@dataclass(frozen=True)
class WorldLayout:
    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def sft(self, epoch: float) -> Path:
        return self.root / "sft" / f"epoch-{epoch:g}"

    def data(self, name: str) -> Path:
        return self.root / "data" / f"{name}.jsonl"

    @property
    def sft_state(self) -> Path:
        return self.root / ".state" / "sft-last.pt"


@dataclass(frozen=True)
class BuildManifest:
    """testbed.json: the config the world was built with (its fingerprint), whether the build
    finished, and what the builds measured (timings add up over resumed builds)."""

    config: dict[str, Any]
    complete: bool
    timings_s: dict[str, float] = field(default_factory=dict)
    pretrain_final_loss: float | None = None  # None until the base is trained
    sft_losses: dict[str, float] | None = None  # ladder epoch -> SFT loss at its checkpoint
    kernels: str | None = None  # runs.kernels.cpu_kernels() of the build: with another, another world

    def finished(self, seconds: dict[str, float], pretrain: list[float], sft: dict[str, float]) -> BuildManifest:
        """After a build: this run's phase times added; the losses of what it trained (the rest kept)."""
        return replace(
            self,
            complete=True,
            timings_s={**self.timings_s, **{k: round(v, 2) for k, v in seconds.items()}},
            pretrain_final_loss=pretrain[-1] if pretrain else self.pretrain_final_loss,
            sft_losses=sft or self.sft_losses,
            kernels=cpu_kernels(),
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def build_testbed(cfg: TinyWorldConfig, progress: bool = True) -> BuildManifest:
    layout = WorldLayout(Path(cfg.out))
    run_dir = _claim_directory(layout, cfg)
    timer = PhaseTimer()
    with tracked_run(cfg.tracking, run_name=f"testbed:{layout.root.name}") as run, world_threads():
        run.log_params(cfg.model_dump(mode="json"))
        with timer.phase("data"):
            rows = write_data(layout, cfg)
        tok = build_char_tokenizer()
        tok.save_pretrained(layout.tokenizer)
        with timer.phase("pretrain"):
            pretrain_losses = ensure_base(layout, cfg, tok, progress, run)
        with timer.phase("sft_ladder"):
            sft_losses = ensure_ladder(layout, cfg, tok, rows["sft"], progress, run)
        manifest = BuildManifest(**run_dir.state).finished(timer.seconds, pretrain_losses, sft_losses)
        run_dir.state = manifest.to_json()
        run_dir.save()
        run.log_metrics({f"time.{k}": v for k, v in timer.seconds.items()})
        run.log_artifact(run_dir.manifest)
    return manifest


@contextmanager
def world_threads() -> Iterator[None]:
    """torch's thread count fixed to WORLD_THREADS while the world is built, then restored."""
    previous = torch.get_num_threads()
    set_torch_threads(WORLD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _claim_directory(layout: WorldLayout, cfg: TinyWorldConfig) -> RunDir:
    """A directory belongs to one config: reuse it only when the fingerprints match; --force rebuilds."""
    run_dir = claim_run_dir(layout.root, manifest=MANIFEST, fingerprint=cfg.fingerprint(), kind="testbed directory",
                            replace=cfg.force, replace_flag="--force", initial={"complete": False}, key="config")
    if not run_dir.resumed:
        run_dir.save()
    return run_dir


def write_data(layout: WorldLayout, cfg: TinyWorldConfig) -> dict[str, list[dict[str, str]]]:
    """Deterministic in the seed: regenerated on every run (cheap) and rewritten atomically."""
    d, seed = cfg.data, cfg.seed
    splits = task.default_splits(d.id_max, d.ood_max, d.id_steps, d.hard_max)
    # One ID pool, cut into disjoint slices, so no eval prompt is an SFT or calibration example.
    pool = task.generate(
        splits["id"], d.sft_examples + d.calibration_examples + d.rl_train_examples + d.eval_examples, seed
    )
    a, b, c = (
        d.sft_examples,
        d.sft_examples + d.calibration_examples,
        d.sft_examples + d.calibration_examples + d.rl_train_examples,
    )
    # Pools of the harder RL distributions: RL prompts (when chosen by rl_distribution) and a
    # held-out eval on the same distribution, so RL gains are measured where RL trained.
    n_rl = d.rl_train_examples
    wider = {name: task.generate(splits[name], n_rl + d.eval_examples, seed) for name in ("hard", "wide")}
    rl_pools = {"id": pool[b:c], **{name: drawn[:n_rl] for name, drawn in wider.items()}}
    rows = {
        "sft": pool[:a],
        "calibration": pool[a:b],
        "rl_train": rl_pools[d.rl_distribution],
        "eval_id": pool[c:],
        "eval_ood": task.generate(splits["ood"], d.eval_examples, seed),
        **{f"eval_{name}": drawn[n_rl:] for name, drawn in wider.items()},
        "eval_general": task.general_problems(
            d.eval_examples, d.id_max, d.pretrain_qa_max_steps, seed,
            exclude={r["response"] for r in _pretraining_rows(cfg)},
        ),
    }
    fields = {"sft": ("prompt", "response"), "calibration": ("prompt", "response")}
    for name, items in rows.items():
        keep = fields.get(name, ("prompt", "answer", "response"))
        path = layout.data(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in items))
    return rows


def _pretraining_rows(cfg: TinyWorldConfig) -> list[dict[str, str]]:
    d = cfg.data
    return task.pretraining_text(d.pretrain_texts, d.ood_max, cfg.seed, d.pretrain_qa_fraction, d.pretrain_qa_max_steps)


def _new_model(cfg: TinyWorldConfig, tok):
    m = cfg.model
    config = tiny_config(
        m.family,
        len(tok),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        max_position_embeddings=256,
    )
    return build_model(config, seed=cfg.seed)


def ensure_base(layout: WorldLayout, cfg: TinyWorldConfig, tok, progress: bool, run) -> list[float]:
    if layout.base.is_dir():
        return []
    torch.manual_seed(cfg.seed)
    model = _new_model(cfg, tok)
    t = cfg.train
    texts = _pretraining_rows(cfg)
    every = _log_every(steps_for(t.pretrain_epochs, len(texts), t.pretrain_batch_size))

    def log(step: int, loss: float, _opt) -> None:
        if step % every == 0:
            run.log_metrics({"pretrain.loss": loss}, step=step)

    losses = train_pairs(
        model,
        tok,
        texts,
        epochs=t.pretrain_epochs,
        lr=t.pretrain_lr,
        batch_size=t.pretrain_batch_size,
        seed=cfg.seed,
        desc="pre-train base",
        progress=progress,
        on_step=log,
        micro_batch_count=t.micro_batches,
    )
    save_checkpoint(model, tok, layout.base)
    return losses


def ensure_ladder(layout: WorldLayout, cfg: TinyWorldConfig, tok, sft_rows, progress: bool, run) -> dict:
    """SFT the base once, saving HF checkpoints at every ladder epoch and a resumable state."""
    from rayrejuv.models.loading import from_pretrained

    t = cfg.train
    epochs = list(t.sft_epochs)
    if all(layout.sft(e).is_dir() for e in epochs):
        return {}
    save_at = {steps_for(e, len(sft_rows), t.sft_batch_size): e for e in epochs}
    model = from_pretrained(layout.base, torch.float32)
    start, opt_state = 0, None
    if layout.sft_state.is_file():
        state = torch.load(layout.sft_state, weights_only=True)
        model.load_state_dict(state["model"])
        start, opt_state = state["step"], state["optimizer"]
    losses_at: dict[str, float] = {}
    t0 = time.perf_counter()
    every = _log_every(max(save_at))

    def snapshot(step: int, loss: float, opt) -> None:
        if step % every == 0:
            run.log_metrics({"sft.loss": loss}, step=step)
        if step in save_at:
            e = save_at[step]
            if not layout.sft(e).is_dir():
                save_checkpoint(model, tok, layout.sft(e))
            save_state({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict()}, layout.sft_state)
            losses_at[f"{e:g}"] = loss
            run.log_metrics({"sft.ladder_elapsed_s": time.perf_counter() - t0}, step=step)

    train_pairs(
        model,
        tok,
        sft_rows,
        epochs=epochs[-1],
        lr=t.sft_lr,
        batch_size=t.sft_batch_size,
        seed=cfg.seed,
        desc="SFT ladder",
        progress=progress,
        start_step=start,
        optimizer_state=opt_state,
        on_step=snapshot,
        micro_batch_count=t.micro_batches,
    )
    return losses_at


def _log_every(num_steps: int) -> int:
    """About 200 points per loss curve."""
    return max(1, num_steps // 200)

