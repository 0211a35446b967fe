"""``trainer.threads``: how many threads torch's CPU operators use in this process.

torch starts with one thread per core. On a machine other work already keeps busy, that oversubscribes
the cores: the default digits run took ~6x longer with 2 threads than with 1 on a 2-core machine at load
3-4 (every thread waits for the slowest at each operator's barrier). ``auto`` therefore takes:

* ``OMP_NUM_THREADS`` when it is set (torchrun sets 1 per process, a SLURM script its own share);
* on CUDA, torch's default (the CPU only feeds the GPU; data and augmentation live on the device);
* on the CPU, the cores this process may use minus the other work running there (the 1-minute load
  average, rounded), at least 1.

An integer sets the count exactly. The count used is printed and recorded in ``metrics.json``
(``compute.threads``): CPU results can differ in the last bits between thread counts.
"""
from __future__ import annotations

import os

import torch


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_threads(device_type: str, env: dict | None = None, cpus: int | None = None,
                 load: float | None = None) -> tuple[int | None, str]:
    """``(threads or None for torch's default, why)`` for ``trainer.threads=auto``."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS", "").strip().isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return int(env["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    if device_type == "cuda":
        return None, "torch's default on CUDA"
    cpus = available_cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cpus, cpus - round(load))), f"{cpus} CPUs, load {load:.1f}"


def set_threads(setting, device_type: str) -> tuple[int, str]:
    """Apply ``trainer.threads`` (``auto`` or an integer >= 1); return ``(threads now, why)``."""
    if setting == "auto":
        threads, why = auto_threads(device_type)
    else:
        threads, why = int(setting), "trainer.threads"
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads(), why
