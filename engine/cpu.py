"""How many CPU threads a job should compute with: the cores free when it starts, not all of them.

Why: PyTorch's CPU kernels split work over all cores and wait for the slowest thread at every step. When
another process keeps one of two cores busy, a 2-thread job waits on the thread that shares that core: the
taste preset's steps took 51 s with 2 threads against 2.1 s with 1 (4-bit SmolLM2, 2 x 128 tokens per step,
measured 2026-12-02 on the 2-core development machine; idle, 2 threads were 1.7 s and 1 thread 2.8 s). So a
worker counts the cores other processes use over half a second before it starts, and uses the rest (at least
one). An operator's ``OMP_NUM_THREADS`` is left alone.
"""

from __future__ import annotations

import math
import os
import time

SAMPLE_S = 0.5
#: A core counts as free when other processes use less than this share of it (a little background is normal).
BUSY_SLACK = 0.3


def free_cores(sample_s: float = SAMPLE_S) -> tuple[int, int]:
    """(cores free of other processes now, cores in all), measured over ``sample_s`` while this process sleeps."""
    import psutil

    total = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    own = psutil.Process()
    own.cpu_percent(None)
    psutil.cpu_percent(None)
    time.sleep(sample_s)
    machine_busy = psutil.cpu_percent(None) / 100 * (os.cpu_count() or total)  # in cores
    others = max(0.0, machine_busy - own.cpu_percent(None) / 100)
    return max(1, min(total, math.floor(total - others + BUSY_SLACK))), total


def fit_threads_to_free_cores() -> str | None:
    """Set torch's thread count to the free cores; returns a line for the job's log, or None if unchanged."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None  # the operator chose
    import torch

    free, total = free_cores()
    if free >= torch.get_num_threads():
        return None
    torch.set_num_threads(free)
    return (f"Computing with {free} of {total} CPU cores: the others are busy with other programs "
            "(a job waiting on a shared core runs many times slower).")
