"""What the training device offers, and the speed settings that follow from it.

bfloat16 autocast pays on CUDA and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX);
elsewhere the CPU would emulate it, so it stays off unless asked for. channels_last pays on
both devices (oneDNN and cuDNN convolutions prefer it). Figures: ``benchmarks/bench_train.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch

#: CPU feature flags (as /proc/cpuinfo and torch.cpu.get_capabilities name them) that mean
#: native bf16 arithmetic.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_flags() -> frozenset:
    """The CPU's feature flags: torch's own detection where this torch has it, else /proc/cpuinfo (Linux)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return frozenset(name for name, value in capabilities().items() if value is True)
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes in bf16 natively (AVX512-BF16 or AMX) and torch has oneDNN to use it."""
    return torch.backends.mkldnn.is_available() and any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def use_bf16(device: torch.device, requested: Optional[bool]) -> bool:
    """Whether to train under bf16 autocast: as ``requested`` (``--amp``/``--no-amp``), else
    on CUDA and on CPUs with native bf16."""
    if requested is not None:
        return requested
    return device.type == "cuda" or cpu_has_native_bf16()


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def configure_cpu_threads() -> None:
    """Use no more intra-op threads than the CPUs this process may use.

    torch sizes its pool by the machine's cores, which in a container limited to a few CPUs
    oversubscribes them; an explicit ``OMP_NUM_THREADS`` is left alone.
    """
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())


def configure_cuda() -> None:
    """cuDNN autotuning and TF32: the recipe needs no fp32-exact convolutions or matmuls."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
