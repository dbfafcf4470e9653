"""A job computes with the cores other programs leave free (engine.cpu): a busy core is not one of them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from engine.cpu import fit_threads_to_free_cores, free_cores

SPIN = "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) % 2**31\n"


def test_a_core_kept_busy_by_another_process_is_not_counted_free() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)  # let it take its core
        free, total = free_cores(sample_s=1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert 1 <= free <= max(1, total - 1), (free, total)


def test_the_operators_thread_count_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert fit_threads_to_free_cores() is None and torch.get_num_threads() == before
