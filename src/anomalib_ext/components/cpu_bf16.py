"""Whether bfloat16 autocast is worth asking for on this CPU, and a warning when it is not.

bf16 autocast speeds training up only where oneDNN has bf16 kernels: x86 CPUs with AVX-512 (native
on AVX-512 BF16 and AMX). On an x86 CPU without AVX-512 (PyTorch reports ``AVX2``) the bf16
convolutions and matrix products fall back to slow paths: on a 2-core AMD EPYC a training epoch of
RD4AD or RSTPM's stage 1 at 256 px measured 7-8x slower than in float32 (``docs/benchmarks.md``,
"Training speed"). The package's own
commands that accept a bf16 option, and every anomalib-ext model when its trainer's precision is bf16
(``anomalib train --trainer.precision bf16-mixed`` included), warn on such CPUs instead of silently
taking that cost; once per process and precision, however many of those paths a run goes through.
"""

from __future__ import annotations

import logging
import platform

import torch

logger = logging.getLogger(__name__)

X86_MACHINES = ("x86_64", "amd64", "i386", "i686")

_warned: set[str] = set()
"""The precisions already warned about in this process (a benchmark row passes two paths that warn)."""


def cpu_lacks_fast_bf16(machine: str | None = None, capability: str | None = None) -> bool:
    """True on an x86 CPU without AVX-512, where bf16 autocast is slower than float32.

    ``machine`` and ``capability`` default to ``platform.machine()`` and
    ``torch.backends.cpu.get_cpu_capability()``; they are arguments so that the rule can be tested
    on any machine. Other architectures are not judged (no measurement here).
    """
    machine = (machine or platform.machine()).lower()
    capability = capability or torch.backends.cpu.get_cpu_capability()
    return machine in X86_MACHINES and not capability.upper().startswith("AVX512")


def warn_if_bf16_is_slow(precision: str, device: str | torch.device = "cpu") -> bool:
    """Warn when ``precision`` asks for bf16 on a CPU that has no fast bf16; return whether it does.

    ``precision`` is a Lightning precision (``"bf16-mixed"``) or a plain ``"bf16"``; anything
    without ``bf16`` in it, and any non-CPU device, passes silently. The warning is logged once per
    process and precision; the return value answers every call.
    """
    if "bf16" not in str(precision) or torch.device(device).type != "cpu" or not cpu_lacks_fast_bf16():
        return False
    if str(precision) in _warned:
        return True
    _warned.add(str(precision))
    logger.warning(
        "bf16 training was asked for (%s), but this CPU has no AVX-512 (PyTorch reports %s): its bf16 "
        "kernels are slow here and training will be several times slower than in float32 (32-true). "
        "bf16 pays off on CPUs with AVX-512 BF16 or AMX and on GPUs.",
        precision,
        torch.backends.cpu.get_cpu_capability(),
    )
    return True
