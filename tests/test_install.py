"""A fresh install reproduces the measured world: constraints.txt pins every installed dependency
(the README's and CI's installs use it), and the world build is deterministic given those versions."""

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from rayrejuv.commands.demo.config import QUICK, DemoConfig
from rayrejuv.commands.testbed.config import TinyWorldConfig
from rayrejuv.commands.testbed.driver import WORLD_THREADS, WorldLayout, build_testbed

ROOT = Path(__file__).resolve().parents[1]
OWN_VENV_EXTRAS = ("vllm",)  # vLLM brings its own torch: its own venv (scripts/setup-vllm-cpu.sh), not pinned here
# the installer's own packages, which `pip freeze` leaves out too (torch needs setuptools at run time: the
# README's torch step brings it, before the constraints apply)
INSTALLER = ("pip", "setuptools", "wheel")


def constraints() -> dict[str, str]:
    """constraints.txt: canonical name -> pinned version (every line `name==version`, or a comment)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[A-Za-z0-9_.\-]+", name) and version, f"not a pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def project_requirements() -> tuple[list[Requirement], list[Requirement]]:
    """pyproject.toml's dependencies, and those of every extra but the ones with a venv of their own
    (read from the source, not the installed metadata: an editable install's lags behind a new extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for name, reqs in project["optional-dependencies"].items() if name not in OWN_VENV_EXTRAS for r in reqs]
    return [Requirement(r) for r in project["dependencies"]], [Requirement(r) for r in extras]


def installed_closure(roots: list[Requirement]) -> dict[str, str]:
    """Every installed distribution the roots need, transitively (markers and extras evaluated): name -> version."""
    found: dict[str, str] = {}
    todo, seen = [(r.name, frozenset(r.extras)) for r in roots], set()
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an extra not installed here (bench-rl's trl) or a marker's alternative
        found[canonicalize_name(name)] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((req.name, frozenset(req.extras)))
    return found


def test_constraints_pin_every_installed_dependency_at_its_installed_version():
    pins, (required, extras) = constraints(), project_requirements()
    installed = installed_closure(required + extras)  # the extras that are installed here
    assert {canonicalize_name(r.name) for r in required} <= set(installed), "a dependency is not installed"
    unpinned = sorted(set(installed) - set(pins) - set(INSTALLER))
    assert not unpinned, f"installed but not in constraints.txt (add name==version): {unpinned}"
    # torch's CPU wheel is 2.13.0+cpu: the pin (the README's torch==2.13.0) ignores the local label
    differ = {n: (v, pins[n]) for n, v in installed.items()
              if n in pins and Version(v).public != Version(pins[n]).public}
    assert not differ, f"installed version != pinned (re-pin from a fresh install, or reinstall): {differ}"
    assert pins["torch"] == "2.13.0"


def test_readme_and_ci_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    for line in block + [c for c in ci.splitlines() if "pip install" in c and "-e " in c]:
        editable = re.findall(r"pip install [^&]*-e \S+", line)
        assert editable and all("-c constraints.txt" in e for e in editable), line
        assert "torch==2.13.0" in line or "torch" not in line


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors |= load_file(f)
    assert tensors, f"no weights in {directory}"
    return tensors


@pytest.mark.parametrize("build_threads", [1, pytest.param(WORLD_THREADS, marks=pytest.mark.slow)])
def test_world_build_is_bit_identical_whatever_the_threads(tmp_path, monkeypatch, build_threads):
    """Two builds of the demo's quick world from processes with other torch thread counts: every
    tensor of the base and of each SFT rung, and every data file, bit for bit (the build runs at
    WORLD_THREADS; unfixed, 1 vs 2 threads differ by up to 3.3e-6). The default run builds at 1 thread
    (~20 s a build on 2 busy cores); the slow suite at WORLD_THREADS itself (2 threads on 2 cores
    shared with other work: minutes)."""
    from rayrejuv.commands.testbed import driver

    monkeypatch.setattr(driver, "WORLD_THREADS", build_threads)
    spec = DemoConfig.model_validate(QUICK).world.model_dump()
    callers = [t for t in (1, 2, 3) if t != build_threads]
    before = torch.get_num_threads()
    worlds = []
    try:
        for threads in callers:
            torch.set_num_threads(threads)
            out = tmp_path / f"caller-{threads}"
            build_testbed(TinyWorldConfig(**spec, out=out, tracking={"enabled": False}), progress=False)
            assert torch.get_num_threads() == threads  # restored after the build
            worlds.append(WorldLayout(out))
    finally:
        torch.set_num_threads(before)
    a, b = worlds
    rungs = spec["train"]["sft_epochs"]
    for part_a, part_b in [(a.base, b.base)] + [(a.sft(e), b.sft(e)) for e in rungs]:
        wa, wb = _weights(part_a), _weights(part_b)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert wa[k].dtype == wb[k].dtype and torch.equal(wa[k], wb[k]), f"{part_a.name}: {k} differs"
    for f in sorted((a.root / "data").glob("*.jsonl")):
        assert f.read_bytes() == (b.root / "data" / f.name).read_bytes(), f.name


def test_the_real_extra_brings_what_reading_a_gguf_needs(monkeypatch, tmp_path):
    """CI installs `.[dev,real]` for the real suite: the extra must list every package transformers needs
    for a GGUF (accelerate was only pulled in by bench, and CI's real suite failed on it); without one, the
    conversion stops with one line naming the extra."""
    from rayrejuv.errors import RejuvError
    from rayrejuv.testbed import gguf

    real = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["real"]
    assert sorted(canonicalize_name(Requirement(r).name) for r in real) == sorted(gguf.REAL_EXTRA)
    # gguf present, accelerate missing (whatever this venv holds: the default run's has neither)
    monkeypatch.setattr(gguf, "find_spec", lambda name: None if name == "accelerate" else object())
    with pytest.raises(RejuvError, match=r"needs accelerate \(not installed\).*\.\[real\]"):
        gguf.convert_gguf(Path("model.gguf"), Path("out"))
    # the fixture build stops before it looks for (or downloads) the wheel
    from rayrejuv.commands.testbed.config import RealFixtureConfig
    from rayrejuv.commands.testbed.real import RealLayout, ensure_base

    monkeypatch.setattr(gguf, "find_gguf", lambda *a: pytest.fail("find_gguf ran without the real extra"))
    with pytest.raises(RejuvError, match=r"needs accelerate"):
        ensure_base(RealLayout(tmp_path), RealFixtureConfig(out=tmp_path))
