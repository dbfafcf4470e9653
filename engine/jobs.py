"""Durable training jobs: a SQLite record per job, a worker process per run, a FIFO queue.

Why this shape: training must never live inside a web request. Each run is a separate,
detached process (``python -m engine worker JOB_ID``) that writes its events to the run's
JSONL log, so closing the tab or restarting the web server loses nothing. The database says
who is queued, who runs and how each run ended; whoever looks at it (the UI, the CLI, the
worker that just finished) first reconciles it with reality — a worker that vanished, even
through ``kill -9``, is marked failed with a reason and stays resumable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import TrainConfig
from engine.events import TERMINAL, Cancelled, EventLog, Failed, JobEvent, Queued, Step
from engine.paths import data_dir

ACTIVE = ("running", "cancelling")
FINISHED = ("done", "failed", "cancelled")
STATUSES = ("queued", *ACTIVE, *FINISHED)
TOKEN_ENV = "TUNE_STUDIO_HF_TOKEN"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    config_json TEXT NOT NULL,
    data_path TEXT NOT NULL,
    mapping_json TEXT,
    run_dir TEXT NOT NULL,
    pid INTEGER,
    pid_started REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resume_from TEXT,
    error TEXT,
    last_step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    final_loss REAL
);
"""


class JobError(RuntimeError):
    """An action on a job is not possible right now; the message says why."""


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what it trains, where its files are, and how far it got."""

    id: str
    owner: str
    name: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    config: TrainConfig
    data_path: str
    mapping: dict[str, Any] | None
    data_options: dict[str, Any]
    run_dir: Path
    pid: int | None
    pid_started: float | None
    cancel_requested: bool
    resume_from: str | None
    error: str | None
    last_step: int
    total_steps: int
    final_loss: float | None

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def latest_checkpoint(self) -> Path | None:
        """The newest complete ``checkpoint-N`` folder (one with trainer state), if any."""
        if not self.checkpoints_dir.is_dir():
            return None
        candidates = [
            p for p in self.checkpoints_dir.glob("checkpoint-*")
            if (p / "trainer_state.json").exists() and p.name.split("-")[-1].isdigit()
        ]
        return max(candidates, key=lambda p: int(p.name.split("-")[-1]), default=None)

    @property
    def resumable(self) -> bool:
        return self.status in ("failed", "cancelled")


def _row_to_record(row: sqlite3.Row) -> JobRecord:
    data_spec = json.loads(row["mapping_json"]) if row["mapping_json"] else {}
    return JobRecord(
        id=row["id"], owner=row["owner"], name=row["name"], status=row["status"],
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        config=TrainConfig.from_dict(json.loads(row["config_json"])), data_path=row["data_path"],
        mapping=data_spec.get("mapping"), data_options=data_spec.get("options") or {}, run_dir=Path(row["run_dir"]),
        pid=row["pid"], pid_started=row["pid_started"], cancel_requested=bool(row["cancel_requested"]),
        resume_from=row["resume_from"], error=row["error"], last_step=row["last_step"],
        total_steps=row["total_steps"], final_loss=row["final_loss"],
    )


def process_alive(pid: int | None, started: float | None) -> bool:
    """True while that exact process runs: guards against pid reuse and counts zombies as dead."""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class JobStore:
    """The job database and queue under a data directory. Cheap to create; holds no job state itself."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else data_dir()
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.sqlite"
        self._lock_path = self.root / "jobs.lock"
        with self._connect() as db:
            db.executescript(_SCHEMA)

    # -- storage -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One dispatcher at a time across processes (web server, CLI, finishing workers)."""
        with open(self._lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _update(self, job_id: str, **values: Any) -> None:
        columns = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def _fetch(self, job_id: str) -> JobRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"There is no run with id {job_id!r}.")
        return _row_to_record(row)

    # -- public API ------------------------------------------------------------------------------
    def submit(
        self,
        config: TrainConfig,
        data_path: str | Path,
        *,
        mapping: dict[str, Any] | None = None,
        data_options: dict[str, Any] | None = None,
        owner: str = "local",
        name: str = "",
        hf_token: str | None = None,
        run_dir: str | Path | None = None,
        start: bool = True,
    ) -> JobRecord:
        """Record a new run and queue it; it starts at once when the device is free.

        ``mapping`` overrides format detection and ``data_options`` are the dataset options
        (placeholder values, keeping negative feedback rows) the Data tab chose. ``run_dir`` places
        the run's files somewhere chosen (the CLI's ``--output``); by default they go under the
        data directory's ``runs/``.
        """
        data_path = Path(data_path).resolve()
        if not data_path.is_file():
            raise JobError(f"The data file {data_path} does not exist; upload it again.")
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        run_dir = Path(run_dir).resolve() if run_dir else self.runs_dir / job_id
        if (run_dir / "config.yaml").exists():
            raise JobError(f"{run_dir} already holds a run; choose an empty output folder.")
        run_dir.mkdir(parents=True, exist_ok=True)
        config.to_yaml(run_dir / "config.yaml")
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, name, status, created_at, config_json, data_path, mapping_json, run_dir)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, owner, name or data_path.stem, time.time(), json.dumps(config.to_dict()),
                 str(data_path), json.dumps({"mapping": mapping, "options": data_options or {}}), str(run_dir)),
            )
        EventLog(run_dir / "events.jsonl").append(Queued(job_id, position=self.queue_position(job_id) or 0))
        if start:
            self.dispatch(hf_token=hf_token)
        return self._fetch(job_id)

    def get(self, job_id: str) -> JobRecord:
        self._reconcile_and_continue()
        return self._fetch(job_id)

    def list(self, owner: str | None = None) -> list[JobRecord]:
        """Newest first; only the owner's runs when an owner is given."""
        self._reconcile_and_continue()
        query, args = "SELECT * FROM jobs", ()
        if owner is not None:
            query, args = query + " WHERE owner = ?", (owner,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at DESC", args).fetchall()
        return [_row_to_record(r) for r in rows]

    def queue_position(self, job_id: str) -> int | None:
        """1 = next to start; None when the job is not waiting."""
        with self._connect() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at").fetchall()
        ids = [r["id"] for r in rows]
        return ids.index(job_id) + 1 if job_id in ids else None

    def events(self, job_id: str) -> list[JobEvent]:
        return EventLog(self._fetch(job_id).events_path).read()

    def cancel(self, job_id: str) -> JobRecord:
        """Stop a run: a queued one never starts; a running one saves a checkpoint and stops after its step."""
        job = self.get(job_id)
        if job.status == "queued":
            self._finish(job, "cancelled", None)
            EventLog(job.events_path).append(Cancelled(job.id, step=job.last_step, resumable=True))
        elif job.status == "running":
            self._update(job_id, status="cancelling", cancel_requested=1)
        elif job.status != "cancelling":
            raise JobError(f"Run {job_id} has already ended ({job.status}); there is nothing to stop.")
        return self._fetch(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return self._fetch(job_id).cancel_requested

    def resume(self, job_id: str, hf_token: str | None = None) -> JobRecord:
        """Queue a stopped or failed run again, continuing from its newest checkpoint when there is one."""
        job = self.get(job_id)
        if not job.resumable:
            raise JobError(f"Run {job_id} is {job.status}; only stopped or failed runs can be resumed.")
        checkpoint = job.latest_checkpoint()
        self._update(job_id, status="queued", cancel_requested=0, error=None, finished_at=None, pid=None,
                     resume_from=str(checkpoint) if checkpoint else None, created_at=time.time())
        EventLog(job.events_path).append(Queued(job_id, position=self.queue_position(job_id) or 0))
        self.dispatch(hf_token=hf_token)
        return self._fetch(job_id)

    def wait(self, job_id: str, timeout: float = 3600, poll: float = 0.5) -> JobRecord:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.get(job_id)
            if job.finished:
                return job
            time.sleep(poll)
        raise TimeoutError(f"Run {job_id} did not finish within {timeout:.0f} s.")

    def follow(self, job_id: str, poll: float = 0.5) -> Iterator[JobEvent]:
        """Every event of a job, from the first, until it reaches a terminal event."""
        log = EventLog(self._fetch(job_id).events_path)
        offset = 0
        while True:
            events, offset = log.iter_from(offset)
            for event in events:
                yield event
                if isinstance(event, TERMINAL) and self._fetch(job_id).finished:
                    return
            job = self.get(job_id)  # reconciles: a dead worker turns into a Failed event we then read
            if job.finished:
                tail, offset = log.iter_from(offset)
                yield from tail
                return
            time.sleep(poll)

    # -- worker side -----------------------------------------------------------------------------
    def mark_progress(self, job_id: str, step: int, total_steps: int, loss: float | None = None) -> None:
        values: dict[str, Any] = {"last_step": step, "total_steps": total_steps}
        if loss is not None:
            values["final_loss"] = loss
        self._update(job_id, **values)

    def finish(self, job_id: str, status: str, error: str | None = None, final_loss: float | None = None) -> None:
        job = self._fetch(job_id)
        self._finish(job, status, error, final_loss)

    def _finish(self, job: JobRecord, status: str, error: str | None, final_loss: float | None = None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": time.time(), "error": error, "pid": None}
        if final_loss is not None:
            values["final_loss"] = final_loss
        self._update(job.id, **values)

    # -- queue -----------------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Turn runs whose worker vanished into failed runs with a reason (and a Failed event)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status IN ('running', 'cancelling')").fetchall()
        return sum(self._mark_vanished(job) for job in map(_row_to_record, rows)
                   if not process_alive(job.pid, job.pid_started))

    def _reconcile_and_continue(self) -> None:
        """After a worker vanished nobody else will start the queue's next job: do it here."""
        if self.reconcile():
            self.dispatch()

    def _mark_vanished(self, job: JobRecord) -> bool:
        checkpoint = job.latest_checkpoint()
        where = f"at step {job.last_step} of {job.total_steps}" if job.total_steps else "before its first step"
        kept = (f"The checkpoint from step {checkpoint.name.split('-')[-1]} is kept: press Resume to continue "
                "from there." if checkpoint else "No checkpoint was saved yet: Resume starts the run again.")
        reason = (f"The training process stopped unexpectedly {where} (it was killed, the server restarted, "
                  f"or it ran out of memory). {kept}")
        fixes = [] if checkpoint else ["Lower 'save steps' so checkpoints are written more often."]
        with self._connect() as db:  # conditional, so two processes reconciling at once report it once
            claimed = db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?, pid = NULL"
                " WHERE id = ? AND status IN ('running', 'cancelling') AND pid IS ?",
                (time.time(), reason, job.id, job.pid),
            ).rowcount
        if claimed:
            EventLog(job.events_path).append(Failed(job.id, reason=reason, fixes=fixes, resumable=True))
        return bool(claimed)

    def dispatch(self, hf_token: str | None = None) -> JobRecord | None:
        """Start the oldest queued job if no job is running; returns the job started, if any."""
        with self._exclusive():
            self.reconcile()
            with self._connect() as db:
                running = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('running', 'cancelling')").fetchone()
                if running[0]:
                    return None
                row = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1").fetchone()
            if row is None:
                return None
            job = _row_to_record(row)
            pid, pid_started = self._spawn_worker(job, hf_token)
            self._update(job.id, status="running", started_at=job.started_at or time.time(), pid=pid,
                         pid_started=pid_started)
        return self._fetch(job.id)

    def _spawn_worker(self, job: JobRecord, hf_token: str | None) -> tuple[int, float]:
        """Detached process (own session) so it survives the web server; its output goes to worker.log."""
        import psutil

        env = dict(os.environ)
        env["TUNE_STUDIO_HOME"] = str(self.root)
        env.pop(TOKEN_ENV, None)
        if hf_token:
            env[TOKEN_ENV] = hf_token  # passed in memory only: never written to the job record
        project_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = project_root + os.pathsep + env.get("PYTHONPATH", "")
        log = open(job.run_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", job.id],
            cwd=project_root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it so it never lingers as a zombie
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            started = time.time()
        return proc.pid, started


def last_step_event(events: list[JobEvent]) -> Step | None:
    steps = [e for e in events if isinstance(e, Step)]
    return steps[-1] if steps else None
