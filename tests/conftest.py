import json
import os
from pathlib import Path

import pytest

from rayrejuv.runs.kernels import pin_cpu_kernels

pin_cpu_kernels()  # as the CLI does, before torch's first kernel: the same bits on every x86-64 machine
import torch  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _private_home(tmp_path_factory):
    """Ray 2.60 writes ~/.ray/auth_token when it starts a local instance: keep it out of the
    real home so tests leave no token behind."""
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield home
    if old is not None:
        os.environ["HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def _private_ray_temp():
    """Every Ray instance the tests start (and their subprocesses) lives under a private temp root:
    a bare ray.init() joins the cluster named in <temp>/ray/ray_current_cluster, so with the shared
    /tmp/ray the tests would join another user's `ray start` cluster, and theirs would join ours.
    At the end, any process left under that root (ours only) is killed by pid."""
    import shutil

    from _ray_local import kill_ours, short_temp_dir

    root = short_temp_dir("rjt")  # short: Ray's unix socket paths live below it
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = root
    yield root
    kill_ours(markers=[root])
    shutil.rmtree(root, ignore_errors=True)
    if old is None:
        os.environ.pop("RAY_TMPDIR")
    else:
        os.environ["RAY_TMPDIR"] = old


@pytest.fixture(scope="session", autouse=True)
def _private_tracking_agents():
    """The MLflow tracking agents that tests' commands start (runs/agent.py) listen under
    $TMPDIR/rayrejuv-<uid>/: a private TMPDIR for the session keeps them apart from the user's, and
    removing their sockets at the end makes every one exit (each checks its socket every second)."""
    import shutil
    import tempfile

    from _ray_local import short_temp_dir

    root = short_temp_dir("rja")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = root
    tempfile.tempdir = None  # re-read $TMPDIR
    yield root
    shutil.rmtree(root, ignore_errors=True)
    if old is None:
        os.environ.pop("TMPDIR")
    else:
        os.environ["TMPDIR"] = old
    tempfile.tempdir = None


FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


def _real_fixture_dir() -> Path:
    from rayrejuv.commands.testbed.config import RealFixtureConfig

    return RealFixtureConfig().resolved_out()


# Resolved at import, before _private_home moves HOME: the real fixture's cache (~/.cache/rayrejuv/real-<hash>,
# or $RAYREJUV_REAL_FIXTURE) is the user's, so it is built once, not once per session.
REAL_FIXTURE_DIR = _real_fixture_dir()


@pytest.fixture(scope="session")
def real_fixture():
    """The real-model fixture (`rayrejuv testbed real` with its defaults): built on first use (a few
    minutes on 2 cores, needs the [real] extra), then reused from the cache by every later session."""
    from rayrejuv.commands.testbed.config import RealFixtureConfig
    from rayrejuv.commands.testbed.real import build_real_fixture

    return build_real_fixture(RealFixtureConfig(out=REAL_FIXTURE_DIR), progress=False)


@pytest.fixture(scope="session")
def real_rejuvenated(real_fixture, tmp_path_factory):
    """`rayrejuv rejuvenate --no-ray` on the real pair with the fixture's calibration file (~50 s on 2 busy
    cores), once per session for every real test that needs a rejuvenated real checkpoint."""
    import subprocess
    import sys

    root, out = real_fixture.root, tmp_path_factory.mktemp("real-rejuv") / "no-ray"
    args = ["--base", root / "base", "--sft", root / "sft", "--calibration", root / "data" / "calibration.jsonl",
            "--out", out, "--no-ray", "--no-track"]
    done = subprocess.run([sys.executable, "-m", "rayrejuv", "rejuvenate", *map(str, args)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tokenizer():
    from rayrejuv.testbed.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


def _build(
    tokenizer, out: Path, family: str, seed: int, tie: bool, dtype, shard: str | None, perturb: float | None, **cfg_kw
) -> Path:
    from rayrejuv.testbed.tiny import build_model, save, tiny_config
    from rayrejuv.testbed.tiny import perturb as perturb_fn

    model = build_model(tiny_config(family, len(tokenizer), tie_word_embeddings=tie, **cfg_kw), seed=0)
    if perturb is not None:
        perturb_fn(model, seed, perturb)
    save(model, tokenizer, out, dtype=dtype, max_shard_size=shard)
    return out


@pytest.fixture
def make_pair(tmp_path, tokenizer):
    """make_pair(family, ...) -> (base_dir, sft_dir); the SFT model is the base plus noise."""

    def make(family="llama", tie_base=False, tie_sft=False, dtype=torch.float32, shard=None, scale=0.3, **cfg_kw):
        base = _build(tokenizer, tmp_path / "base", family, 0, tie_base, dtype, shard, None, **cfg_kw)
        sft = _build(tokenizer, tmp_path / "sft", family, 1, tie_sft, dtype, shard, scale, **cfg_kw)
        return base, sft

    return make


@pytest.fixture
def calibration(tmp_path):
    from rayrejuv.testbed import arith

    path = tmp_path / "calibration.jsonl"
    with open(path, "w") as f:
        for r in arith.problems(12, 9, seed=3):
            f.write(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n")
    return path


def rejuv_config(base, sft, out, **kw):
    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig

    kw.setdefault("tracking", {"enabled": False})
    kw.setdefault("ray", {"enabled": False})
    return RejuvenateConfig(base=base, sft=sft, out=out, **kw)


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {
        torch.bfloat16: torch.int16,
        torch.float16: torch.int16,
        torch.float32: torch.int32,
        torch.float64: torch.int64,
    }
    return bool(torch.equal(a.view(view[a.dtype]), b.view(view[b.dtype])))
