"""torch's CPU kernels pinned to AVX2 (runs.kernels): the same world on every x86-64 machine.

The machines the project runs on (and CI's) are x86-64 with AVX2; these tests assert the pin
there, and that elsewhere nothing is set."""

import os
import subprocess
import sys

import pytest

from rayrejuv.runs.kernels import KERNEL_ENV, pinnable

CLEAN = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}


def _python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=CLEAN | env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


PIN_THEN_TORCH = (
    "from rayrejuv.runs.kernels import pin_cpu_kernels, cpu_kernels; pinned = pin_cpu_kernels(); "
    "import torch; torch.softmax(torch.ones(4), 0); print(sorted(pinned.items()), cpu_kernels())"
)


def test_pin_sets_avx2_before_torch_runs_a_kernel():
    out = _python(PIN_THEN_TORCH)
    assert pinnable(), "this suite runs on x86-64 machines with AVX2"
    assert out == f"{sorted(KERNEL_ENV.items())} AVX2/mkl:AVX2"


def test_a_users_own_setting_is_kept():
    out = _python(PIN_THEN_TORCH, ATEN_CPU_CAPABILITY="default")
    assert "('ATEN_CPU_CAPABILITY', 'default')" in out and out.endswith(" DEFAULT/mkl:AVX2"), out


def test_the_cli_pins_first_of_all():
    code = (
        "import os, sys; sys.argv = ['rayrejuv', '--help']; from rayrejuv.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('|', os.environ['ATEN_CPU_CAPABILITY'], os.environ['MKL_CBWR'])"
    )
    assert _python(code).rsplit("|", 1)[1].split() == ["avx2", "AVX2"]


def test_the_world_cache_keys_on_the_kernels(tmp_path, monkeypatch):
    from rayrejuv.commands.testbed import cache
    from rayrejuv.commands.testbed.config import TinyWorldConfig

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = TinyWorldConfig(out=tmp_path / "w")
    pinned = cache.cached_world(cfg)
    monkeypatch.setattr(cache, "cpu_kernels", lambda: "AVX512/mkl:auto")
    assert cache.cached_world(cfg) != pinned
    assert pinned.parent == tmp_path / "rayrejuv"


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_nothing_is_pinned_off_x86(monkeypatch, machine):
    from rayrejuv.runs import kernels

    monkeypatch.setattr(kernels.platform, "machine", lambda: machine)
    for name in KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    assert kernels.pin_cpu_kernels() == {} and not any(name in os.environ for name in KERNEL_ENV)
