"""One training run on several processes (DDP through Hugging Face ``accelerate``), with the same events,
progress, cancel, resume and adapter as a run on one.

How it is built:

* The job's worker (``python -m engine worker``) becomes the *supervisor*: it starts
  ``accelerate launch --multi_gpu --num_processes N -m engine rank JOB`` (torch's elastic launcher underneath),
  forwards a SIGTERM to it, waits, and records the job's one terminal event and status from the records the
  ranks leave in ``ranks/rank-K.json``. The job's pid stays the supervisor's, so the store's liveness checks,
  cancel and shutdown work unchanged.
* Every rank runs the same training code (:func:`engine.train.train`): each reads its own share of every
  batch, DDP averages the adapter's gradients, and rank 0 alone writes events, progress, metrics and the
  adapter (the Trainer saves on the main process only).
* Stop decisions are collective (:func:`any_rank`): a cancel seen by rank 0 in the job store or a SIGTERM
  seen by any rank is OR-ed over the ranks after every step, so all ranks stop after the same step and save
  one checkpoint together. A rank that stopped alone would leave the others waiting in the next all-reduce.
* A rank that dies (kill -9, out of memory) breaks the others' connections; torch's launcher stops the rest
  and exits non-zero; the supervisor names the rank that left no record (:func:`failure_reason`).

Why accelerate rather than spawning processes ourselves: it picks the backend (NCCL on GPUs, gloo on CPUs),
the rendezvous and the environment each rank needs, and the same ``accelerate launch`` with an
``accelerate config`` file runs a job on several machines (README, "Several GPUs and clusters"). FSDP is not
offered: no multi-process test of FSDP with 4-bit weights runs on a CPU, so DDP is the one strategy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import write_atomic
from core.settings import SettingsError
from engine.config import TrainConfig
from engine.events import EventLog, JobEvent, Log
from engine.jobs import PROJECT_ROOT, JobRecord

RANKS_DIR = "ranks"
#: The operator's ``accelerate config`` file (several machines, or launch options of their own): when set, every
#: multi-process run launches with it and takes its process count from it. An environment variable, never a
#: setting: a path on the server is the operator's choice, not a visitor's.
LAUNCH_CONFIG_ENV = "TUNE_STUDIO_ACCELERATE_CONFIG"
#: Seconds between the launcher's checks of its ranks: a dead rank is noticed within this time.
MONITOR_INTERVAL_S = 0.5
#: Words of the errors a rank raises when another rank's connection breaks (gloo and NCCL): such a rank is a
#: casualty, not the cause.
LOST_PEER_WORDS = ("connection closed by peer", "connection reset by peer", "broken pipe",
                   "nccl communicator was aborted", "connection refused")


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in a run: rank ``rank`` of ``world_size`` (local rank: its GPU on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = RankInfo()


def rank_from_environment(env: dict[str, str] | None = None) -> RankInfo:
    """The rank torch's launcher gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    env = dict(os.environ) if env is None else env
    return RankInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def processes_for(requested: int, device: str, gpus: int) -> int:
    """How many processes a run gets: ``requested``, or with 0 one per visible GPU (one on a CPU).

    On a GPU machine each process needs its own GPU, so asking for more than are visible is refused with the
    number there is. On a CPU any number runs (gloo), which is how the multi-process path is tested.
    """
    if requested == 0:
        return max(1, gpus) if device == "cuda" else 1
    if device == "cuda" and requested > gpus:
        raise SettingsError("processes", f"{requested} processes need {requested} GPUs, but this server has "
                                         f"{gpus}. Set it to 0 (one per GPU) or at most {gpus}.")
    return requested


def operator_launch_config() -> Path | None:
    """The operator's accelerate config file (:data:`LAUNCH_CONFIG_ENV`), or None."""
    value = os.environ.get(LAUNCH_CONFIG_ENV, "").strip()
    return Path(value) if value else None


def processes_in_launch_config(path: Path) -> int:
    """All processes of all machines, as an accelerate config file says (``num_processes``)."""
    import yaml

    try:
        processes = int((yaml.safe_load(path.read_text()) or {}).get("num_processes", 0))
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise SettingsError("processes", f"the accelerate config in {LAUNCH_CONFIG_ENV} cannot be read "
                                         f"({type(exc).__name__}); write it with 'accelerate config'.") from None
    if processes < 1:
        raise SettingsError("processes", f"the accelerate config in {LAUNCH_CONFIG_ENV} names no num_processes; "
                                         "write it with 'accelerate config'.")
    return processes


def planned_processes(config: TrainConfig) -> int:
    """The operator's launch config's processes, else :func:`processes_for` on this machine (counting GPUs does not
    start CUDA in this process)."""
    import torch

    from engine.models import pick_device

    launch_config = operator_launch_config()
    if launch_config is not None:
        return processes_in_launch_config(launch_config)

    device = pick_device(config.device)
    return processes_for(config.processes, device, torch.cuda.device_count() if device == "cuda" else 0)


def free_port() -> int:
    """A TCP port free on this machine now, for the ranks' rendezvous (two runs never share one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_command(job_id: str, processes: int, port: int, launch_config: Path | None = None) -> list[str]:
    """``accelerate launch`` of ``python -m engine rank JOB``: with the operator's config file when there is one
    (this machine is then one of those it names), else on ``processes`` processes of this machine."""
    placement = (["--config_file", str(launch_config)] if launch_config is not None else
                 ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--dynamo_backend", "no",
                  "--main_process_port", str(port)])
    return [sys.executable, "-m", "accelerate.commands.launch", *placement,
            "--monitor_interval", str(MONITOR_INTERVAL_S), "--max_restarts", "0", "-m", "engine", "rank", job_id]


# -- what each rank leaves for the supervisor ---------------------------------------------------------------
def rank_record_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / RANKS_DIR / f"rank-{rank}.json"


def write_rank_record(run_dir: Path, rank: int, **fields: Any) -> None:
    """Replace rank ``rank``'s record atomically (the supervisor may read it at any moment)."""
    path = rank_record_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"rank": rank, "time": time.time(), **fields}, default=str))


def read_rank_records(run_dir: Path, processes: int) -> dict[int, dict[str, Any]]:
    """The records the ranks left, by rank (a rank killed before it started has none)."""
    records = {}
    for rank in range(processes):
        with contextlib.suppress(OSError, ValueError):
            records[rank] = json.loads(rank_record_path(run_dir, rank).read_text())
    return records


def clear_rank_records(run_dir: Path) -> None:
    shutil.rmtree(Path(run_dir) / RANKS_DIR, ignore_errors=True)


def lost_peer(exc: BaseException) -> bool:
    """Whether an exception is a rank noticing that another rank went away (not a cause of its own)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return type(exc).__name__ in ("DistBackendError", "DistNetworkError") or any(w in text for w in LOST_PEER_WORDS)


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks; every rank must call this at the same point. Alone: the flags as given."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(flags)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    votes = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return tuple(bool(vote) for vote in votes.tolist())


class SilentLog:
    """The event log of ranks other than 0: one run has one event log, written by rank 0."""

    def append(self, event: JobEvent) -> None:
        pass


# -- the supervisor -----------------------------------------------------------------------------------------
def failure_reason(records: dict[int, dict[str, Any]], processes: int) -> tuple[str, list[str], str]:
    """(reason, fixes, detail) for a run whose ranks did not all finish.

    The cause is, in order: a rank that failed with an error of its own (out of memory, bad data), else a rank
    that left no final record (killed, or ended by the system), else the first rank that failed at all.
    """
    failed = {r: rec for r, rec in records.items() if rec.get("status") == "failed"}
    own = [r for r, rec in sorted(failed.items()) if not rec.get("lost_peer")]
    if own:
        record = failed[own[0]]
        return (f"{record['reason']} (training process {own[0] + 1} of {processes})", record.get("fixes", []),
                record.get("detail", ""))
    vanished = [r for r in range(processes) if records.get(r, {}).get("status", "running") == "running"]
    if vanished:
        which = ", ".join(str(r + 1) for r in vanished)
        return (f"Training process {which} of {processes} stopped unexpectedly (it was killed or ran out of memory), "
                "so the other processes of this run stopped too.", [], "")
    first = failed[min(failed)] if failed else {}
    return (first.get("reason", "The training processes stopped without saying why."), first.get("fixes", []),
            first.get("detail", ""))


class Forwarder:
    """While the launcher runs, a SIGTERM to the supervisor (a server stopping) goes on to the launcher, which
    passes it to every rank: they checkpoint together and stop (``engine.train.Interruption``)."""

    def __init__(self) -> None:
        self.requested = False
        self.launcher: subprocess.Popen | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.launcher is not None and self.launcher.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.launcher.send_signal(signal.SIGTERM)


@dataclass(frozen=True)
class RanksOutcome:
    """How a multi-process run ended, for the worker to record: like a one-process run's result, or a failure."""

    status: str  # "done", "cancelled", "interrupted" or "failed"
    steps: int = 0
    final_loss: float | None = None
    eval_loss: float | None = None
    reason: str = ""
    fixes: tuple[str, ...] = ()
    detail: str = ""


def supervise(job: JobRecord, processes: int, last_step: Callable[[], int]) -> RanksOutcome:
    """Run ``job`` on ``processes`` ranks and say how it ended (``last_step``: the store's, after a SIGTERM)."""
    clear_rank_records(job.run_dir)
    EventLog(job.events_path).append(Log(
        job.id, message=f"Training on {processes} processes at once (DDP through accelerate): each reads "
                        f"{job.config.batch_size} example(s) per batch, so one step learns from "
                        f"{job.config.batch_size * job.config.grad_accum * processes}."))
    forwarder = Forwarder()
    forwarder.install()
    command = launch_command(job.id, processes, free_port(), operator_launch_config())
    forwarder.launcher = subprocess.Popen(command, cwd=PROJECT_ROOT,
                                          env=dict(os.environ), stdin=subprocess.DEVNULL)
    if forwarder.requested:  # the signal came while the launcher was starting
        forwarder.launcher.send_signal(signal.SIGTERM)
    forwarder.launcher.wait()
    records = read_rank_records(job.run_dir, processes)
    statuses = {records.get(rank, {}).get("status") for rank in range(processes)}
    if len(statuses) == 1 and statuses & {"done", "cancelled", "interrupted"}:
        main = records[0]
        return RanksOutcome(main["status"], main["steps"], main.get("final_loss"), main.get("eval_loss"))
    if forwarder.requested:
        return RanksOutcome("interrupted", last_step())
    reason, fixes, detail = failure_reason(records, processes)
    return RanksOutcome("failed", reason=reason, fixes=tuple(fixes), detail=detail)
