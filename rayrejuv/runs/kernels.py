"""The CPU kernels torch runs on x86-64: pinned to AVX2, so a float computation gives the same
bits on every machine with the same package versions (and thread count).

A float result depends on the vector width of the kernels that compute it: torch's own kernels
(ATen: softmax, norms, attention, elementwise ops) pick AVX-512 where the CPU has it, and MKL's
GEMMs pick a code path per CPU. Measured (session 14, an AVX-512 machine; docs/testbed.md,
"The same world on every machine"): the demo's world built with torch's default kernels was
another world (pre-training's last loss 0.4993 instead of 0.4915; OverSFT's OOD score before RL
0.125 instead of 0.305), while with ATen pinned to AVX2 it was, bit for bit, the world sessions
12-13 built on AVX2 machines (every before-RL and after-RL number of the README's table equal).

`pin_cpu_kernels` sets the variables before torch runs its first kernel (torch reads
ATEN_CPU_CAPABILITY once, at its first dispatch; MKL reads MKL_CBWR at its first call): the CLI
calls it first thing, and Ray's workers get the same variables (runs.cluster). A variable the
user set is kept (ATEN_CPU_CAPABILITY=default, say, for torch's own choice).
"""

from __future__ import annotations

import os
import platform

# ATen's dispatch level; MKL's conditional numerical reproducibility branch; oneDNN's ISA ceiling
KERNEL_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pinnable() -> bool:
    """An x86-64 CPU with AVX2 (elsewhere torch's kernels are its only choice)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:  # not Linux: x86-64 CPUs of the last decade have AVX2
        return True


def pin_cpu_kernels() -> dict[str, str]:
    """Set KERNEL_ENV's variables the user has not set, in this process's environment (so also in
    the processes it starts); returns the kernel variables now in effect (empty: none apply)."""
    if not pinnable():
        return {}
    for name, value in KERNEL_ENV.items():
        os.environ.setdefault(name, value)
    return kernel_env()


def kernel_env() -> dict[str, str]:
    """The kernel variables of this process's environment (for Ray's workers on other machines)."""
    return {name: os.environ[name] for name in KERNEL_ENV if name in os.environ}


def cpu_kernels() -> str:
    """What torch's kernels run on in this process ("AVX2", "AVX512", "DEFAULT", ...): part of what
    decides a float result's bits (the world cache's key)."""
    import torch

    return f"{torch.backends.cpu.get_cpu_capability()}/mkl:{os.environ.get('MKL_CBWR', 'auto')}"
