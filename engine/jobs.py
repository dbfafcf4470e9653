"""Durable jobs: a SQLite record per job, a worker process per job, a FIFO queue per lane.

Why this shape: long work (training, index builds) must never live inside a web request. Each job is
a separate, detached process (``python -m engine worker JOB_ID``) that writes its events to the job's
JSONL log, so closing the tab or restarting the web server loses nothing. The database says who is
queued, who runs and how each job ended; whoever looks at it (the UI, the CLI, the worker that just
finished) first reconciles it with reality — a worker that vanished, even through ``kill -9``, is
marked failed with a reason and stays resumable.

Kinds and lanes: a job has a ``kind`` ("train", "index", later "generate") whose runner the worker
entry point looks up, and each kind waits in a lane. Training shares the one accelerator (lane
"device"); index builds run in lane "cpu" beside it, so a build never waits behind an hour of training.
One job per lane runs at a time, first in first out.

Tokens: a visitor's Hugging Face token is held in this process's memory (:class:`TokenVault`), keyed by
job id, until that job's worker starts; the record only says ``needs_token``. A process that does not
hold a job's token never starts that job, and after a restart such a job asks for the token again.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.paths import data_dir
from engine.config import TrainConfig
from engine.events import TERMINAL, Cancelled, EventLog, Failed, JobEvent, Log, Queued

log = logging.getLogger("tune_studio.jobs")

WAITING = ("queued", "needs_token")
ACTIVE = ("running", "cancelling")
FINISHED = ("done", "failed", "cancelled", "interrupted")
STATUSES = (*WAITING, *ACTIVE, *FINISHED)
RESUMABLE = ("failed", "cancelled", "interrupted")
TOKEN_ENV = "TUNE_STUDIO_HF_TOKEN"
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])

KIND_LANES: dict[str, str] = {"train": "device", "index": "cpu", "generate": "device", "experiment": "device"}
"""The lane each kind of job waits in: training (and question generation) share the accelerator; index
builds run on the CPU beside them. One job per lane runs at a time."""
LANES: tuple[str, ...] = tuple(dict.fromkeys(KIND_LANES.values()))

DISPATCH_INTERVAL_SECONDS = 2.0  # how soon the server starts the next job after a worker ends
SHUTDOWN_GRACE_SECONDS = 20.0  # how long a stopping server waits for its workers to save a checkpoint

NEEDS_TOKEN_MESSAGE = (
    "This run needs your Hugging Face token again: the server restarted, and tokens are only ever kept in "
    "memory, never saved. Paste your token and press 'Continue with this token' to put the run back in the queue."
)

WORKER_ENV_ALLOWLIST: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LANG", "LC_*", "TZ", "TMPDIR",
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME", "TORCH_HOME",
    "TUNE_STUDIO_MODELS",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
    "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NCCL_*",
    "TUNE_STUDIO_LIMIT_*", "TUNE_STUDIO_ACCELERATE_CONFIG",
)
"""The only variables of the server's environment a worker inherits (``*`` matches any suffix).

Why an allow-list: the server's environment holds the Space owner's secrets (``HF_TOKEN``, the sign-in
passwords in ``TUNE_STUDIO_USERS``, whatever else the owner set) and a worker runs a visitor's job. A
deny-list would leak every secret nobody thought of; this list names what a worker needs: locale, cache
folders, thread counts, the operator's offline switches and Hub endpoint, GPU and distributed-launch
settings, the operator's limits (``TUNE_STUDIO_LIMIT_*``, not secret, so a worker enforces the same
limits the UI shows) and accelerate config file for multi-process runs (``engine.distributed``).
:func:`worker_environment` adds the data directory, ``PYTHONPATH``,
``HF_HUB_DISABLE_IMPLICIT_TOKEN=1`` and the job's own token, nothing else."""

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
# Columns added after the first release; added to older databases on open.
_ADDED_COLUMNS = {
    "kind": "TEXT NOT NULL DEFAULT 'train'",
    "lane": "TEXT NOT NULL DEFAULT 'device'",
    "payload_json": "TEXT",
    "needs_token": "INTEGER NOT NULL DEFAULT 0",
    "token_holder": "TEXT",
    "visitor_hash": "TEXT",
}


class JobError(RuntimeError):
    """An action on a job is not possible right now; the message says why."""


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what it does, where its files are, and how far it got.

    ``config``, ``data_path``, ``mapping`` and ``data_options`` describe a training run (kind "train");
    other kinds keep their inputs in ``payload``. ``needs_token`` says the job was submitted with a
    Hugging Face token (the token itself is never stored); ``visitor_hash`` identifies who started it,
    for per-visitor caps, without keeping their name or address.
    """

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
    kind: str = "train"
    payload: dict[str, Any] = field(default_factory=dict)
    lane: str = "device"
    needs_token: bool = False
    token_holder: str | None = None
    visitor_hash: str | None = None
    start_adapter: str | None = None  # preference runs continuing a finished run: that run's adapter folder

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
        return self.status in RESUMABLE


def _row_to_record(row: sqlite3.Row) -> JobRecord:
    data_spec = json.loads(row["mapping_json"]) if row["mapping_json"] else {}
    return JobRecord(
        id=row["id"], owner=row["owner"], name=row["name"], status=row["status"],
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        config=TrainConfig.from_dict(json.loads(row["config_json"])), data_path=row["data_path"],
        mapping=data_spec.get("mapping"), data_options=data_spec.get("options") or {}, run_dir=Path(row["run_dir"]),
        pid=row["pid"], pid_started=row["pid_started"], cancel_requested=bool(row["cancel_requested"]),
        resume_from=row["resume_from"], error=row["error"], last_step=row["last_step"],
        total_steps=row["total_steps"], final_loss=row["final_loss"], kind=row["kind"],
        payload=json.loads(row["payload_json"]) if row["payload_json"] else {}, lane=row["lane"],
        needs_token=bool(row["needs_token"]), token_holder=row["token_holder"], visitor_hash=row["visitor_hash"],
        start_adapter=data_spec.get("start_adapter"),
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


_IDENTITY: dict[int, str] = {}


def process_identity() -> str:
    """"pid:start time" of this process: names who holds a job's token, without the token, across pid reuse."""
    import psutil

    pid = os.getpid()
    if pid not in _IDENTITY:
        _IDENTITY[pid] = f"{pid}:{psutil.Process(pid).create_time():.3f}"
    return _IDENTITY[pid]


def _holder_alive_elsewhere(identity: str | None) -> bool:
    """True when another live process holds the job's token (it, not we, will start the job)."""
    if not identity or identity == process_identity():
        return False
    pid, _, started = identity.partition(":")
    try:
        return process_alive(int(pid), float(started))
    except ValueError:
        return False


class TokenVault:
    """Hugging Face tokens of jobs that have not started yet: in this process's memory only, keyed by job id.

    Why module-level (one per process, :data:`VAULT`): ``JobStore`` objects are created per request and hold
    no state, yet a token must outlive the request until its job's worker starts — maybe an hour later,
    after the jobs ahead of it. Keying by job id makes giving one job's token to another impossible by
    construction: the dispatcher takes exactly the token of the job it starts, and takes it out. Nothing
    here is ever written to disk, a log or an event; a restart empties it, and the jobs that needed a
    token then ask for it again (status ``needs_token``).
    """

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never print a token, even in a traceback
        return f"TokenVault({len(self._tokens)} job(s))"

    def put(self, job_id: str, token: str) -> None:
        with self._lock:
            self._tokens[job_id] = token

    def take(self, job_id: str) -> str | None:
        """Remove and return the job's token: once its worker has it, the server forgets it."""
        with self._lock:
            return self._tokens.pop(job_id, None)

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._tokens

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._tokens.pop(job_id, None)


VAULT = TokenVault()


def _allowed(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in WORKER_ENV_ALLOWLIST)


def worker_environment(root: str | Path, token: str | None, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of one job's worker: the allow-listed server variables plus what the job needs.

    ``HF_HUB_DISABLE_IMPLICIT_TOKEN=1`` keeps huggingface_hub from picking up a token file or variable by
    itself, so the only token a worker can use is the one its own job was given (``TOKEN_ENV``).
    """
    source = os.environ if source is None else source
    env = {name: value for name, value in source.items() if _allowed(name)}
    env["TUNE_STUDIO_HOME"] = str(Path(root).resolve())
    env["PYTHONPATH"] = PROJECT_ROOT
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    if token:
        env[TOKEN_ENV] = token
    return env


def _new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class JobStore:
    """The job database and its queues under a data directory. Cheap to create; holds no job state itself."""

    def __init__(self, root: str | Path | None = None):
        self.root = (Path(root) if root else data_dir()).resolve()
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.sqlite"
        self._lock_path = self.root / "jobs.lock"
        with self._connect() as db:
            db.executescript(_SCHEMA)
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, spec in _ADDED_COLUMNS.items():
                if column not in present:
                    with contextlib.suppress(sqlite3.OperationalError):  # another process added it just now
                        db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {spec}")

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
        """One dispatcher at a time across processes (web server, CLI, finishing workers). Not re-entrant."""
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

    def _update_if(self, job_id: str, statuses: tuple[str, ...], **values: Any) -> bool:
        """Update only while the job is still in one of ``statuses``; True when it was."""
        columns = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in statuses)
        with self._connect() as db:
            return db.execute(f"UPDATE jobs SET {columns} WHERE id = ? AND status IN ({marks})",
                              (*values.values(), job_id, *statuses)).rowcount > 0

    def _fetch(self, job_id: str) -> JobRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"There is no run with id {job_id!r}.")
        return _row_to_record(row)

    def _select(self, where: str, args: tuple[Any, ...] = ()) -> list[JobRecord]:
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE {where}", args).fetchall()
        return [_row_to_record(r) for r in rows]

    def load(self, job_id: str) -> JobRecord:
        """The record as stored, without reconciling: what a worker reads about its own job."""
        return self._fetch(job_id)

    # -- visitors and caps -----------------------------------------------------------------------
    def visitor_hash(self, visitor: str) -> str:
        """A keyed sha256 of a visitor id (user name or IP): caps can count their runs, nobody can read who.

        Keyed with a random salt kept in the data directory, because a plain hash of an IPv4 address is
        reversed by trying all four billion of them.
        """
        return hmac.new(self._salt(), visitor.encode("utf-8"), hashlib.sha256).hexdigest()

    def _salt(self) -> bytes:
        path = self.root / "visitor.salt"
        if not path.exists():
            tmp = self.root / f".visitor.salt.{uuid.uuid4().hex}"
            tmp.write_bytes(secrets.token_bytes(32))
            tmp.chmod(0o600)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic: the first process to get here decides the salt
            tmp.unlink()
        return path.read_bytes()

    def _check_step_cap(self, config: TrainConfig, data_path: Path) -> None:
        """Refuse a run longer than the 'Steps per run' limit, estimating epochs from the row count."""
        from engine.limits import LimitError, limits

        bounds = limits()
        fix = f"Set 'Max steps' to {bounds.max_steps:,} or fewer"
        if config.max_steps > 0:
            bounds.check("max_steps", config.max_steps, "This run's 'Max steps'", fix + ".")
            return
        estimate = _estimated_steps(config, data_path)
        if estimate is not None and estimate[0] > bounds.max_steps:
            steps, rows = estimate
            raise LimitError(
                f"{config.num_epochs:g} epoch(s) over {rows:,} rows at batch {config.batch_size} × "
                f"{config.grad_accum} is about {steps:,} steps; the limit here (Steps per run) is "
                f"{bounds.max_steps:,}. Lower 'Epochs', or {fix[0].lower()}{fix[1:]}.")

    def _check_queue_cap(self, visitor_hash: str, starting: str = "this run") -> None:
        """Refuse when the visitor already has as many runs waiting or training as the limit allows."""
        from engine.limits import limits

        with self._connect() as db:
            busy = db.execute("SELECT COUNT(*) FROM jobs WHERE visitor_hash = ? AND kind = 'train' AND status IN "
                              "('queued', 'running', 'cancelling')", (visitor_hash,)).fetchone()[0]
        limits().check("max_queued_runs", busy + 1, f"Counting {starting}, the number of your runs waiting or "
                       "training", "Wait for one of them to finish, or stop one, then try again.")

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
        visitor: str | None = None,
        queued_after: bool = False,
    ) -> JobRecord:
        """Record a new training run and queue it; it starts at once when the device is free.

        ``queued_after`` lets ``config.from_run`` name a run that is still queued or running in the same lane:
        this one is queued behind it, so it starts after it ends (the Experiment's pre-training → SFT chain);
        if that run does not finish with an adapter, this one fails at its start and says why.

        ``mapping`` overrides format detection and ``data_options`` are the dataset options the Data tab
        chose. ``run_dir`` places the run's files somewhere chosen (the CLI's ``--output``). ``visitor``
        (who asked: a user name or address) turns on the per-visitor caps of ``engine.limits``; the CLI,
        run by the operator, passes none. ``hf_token`` is held in memory for this job only.
        """
        data_path = Path(data_path).resolve()
        if not data_path.is_file():
            raise JobError(f"The data file {data_path.name} is no longer on the server; upload it again.")
        visitor_hash = self.visitor_hash(visitor) if visitor is not None else None
        if visitor_hash:
            self._check_step_cap(config, data_path)
        start_adapter = self._start_adapter(config, owner, queued_after=queued_after) if config.from_run else None
        job_id = _new_job_id()
        run_dir = Path(run_dir).resolve() if run_dir else self.runs_dir / job_id
        if (run_dir / "config.yaml").exists():
            raise JobError(f"{run_dir} already holds a run; choose an empty output folder.")
        with self._exclusive():
            if visitor_hash:
                self._check_queue_cap(visitor_hash)
            run_dir.mkdir(parents=True, exist_ok=True)
            config.to_yaml(run_dir / "config.yaml")
            self._insert(job_id, kind="train", owner=owner, name=name or data_path.stem, run_dir=run_dir,
                         config_json=json.dumps(config.to_dict()), data_path=str(data_path),
                         data_spec={"mapping": mapping, "options": data_options or {},
                                    "start_adapter": start_adapter}, payload=None,
                         visitor_hash=visitor_hash, token=hf_token)
        return self._queued(job_id, start)

    def _start_adapter(self, config: TrainConfig, owner: str, queued_after: bool = False) -> str:
        """The adapter folder a run continuing ``config.from_run`` starts from, after checking that the run is
        finished (or, with ``queued_after``, still ahead in the queue), belongs to ``owner`` (the operator —
        owners "local" and "cli" — may use any run here) and has the same base model."""
        try:
            source = self.load(config.from_run)
        except JobError:
            raise JobError(f"There is no run {config.from_run!r} to start from; pick one of your finished runs.") \
                from None
        if source.kind != "train" or (owner not in ("local", "cli") and source.owner != owner):
            raise JobError(f"There is no run {config.from_run!r} to start from; pick one of your finished runs.")
        ahead = queued_after and source.status in ("queued", "running")
        if not ahead and (source.status != "done" or not (source.adapter_dir / "adapter_config.json").is_file()):
            raise JobError(f"The run '{source.name}' has not finished with an adapter (it is {source.status}); "
                           "start from a finished run.")
        if source.config.base_model != config.base_model:
            raise JobError(f"The run '{source.name}' was trained on {source.config.base_model}, not "
                           f"{config.base_model}; a run can only continue an adapter of the same base model.")
        return str(source.adapter_dir)

    def submit_task(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        owner: str,
        visitor: str | None = None,
        name: str,
        hf_token: str | None = None,
        start: bool = True,
    ) -> JobRecord:
        """Record a job of another kind ("index", ...) and queue it in its kind's lane.

        ``payload`` is the job's input as JSON (paths, names, settings — never a secret: it is stored);
        the kind's runner reads it back from ``JobRecord.payload``. Its files go to ``run_dir`` as a
        training run's do.
        """
        if kind not in KIND_LANES:
            raise JobError(f"Unknown kind of job {kind!r}; this server runs: {', '.join(KIND_LANES)}.")
        try:
            payload_json = json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise JobError(f"The {kind} job's settings cannot be stored: {exc}.") from exc
        job_id = _new_job_id()
        run_dir = self.runs_dir / job_id
        with self._exclusive():
            run_dir.mkdir(parents=True, exist_ok=True)
            self._insert(job_id, kind=kind, owner=owner, name=name or kind, run_dir=run_dir, config_json="{}",
                         data_path="", data_spec=None, payload=payload_json, token=hf_token,
                         visitor_hash=self.visitor_hash(visitor) if visitor is not None else None)
        return self._queued(job_id, start)

    def _insert(self, job_id: str, *, kind: str, owner: str, name: str, run_dir: Path, config_json: str,
                data_path: str, data_spec: dict[str, Any] | None, payload: str | None, visitor_hash: str | None,
                token: str | None) -> None:
        """One new queued row. The token goes into the vault *before* the row exists, so no dispatcher of
        this process can see the job without its token and wrongly ask for it again."""
        if token:
            VAULT.put(job_id, token)
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO jobs (id, owner, name, status, created_at, config_json, data_path, mapping_json,"
                    " run_dir, kind, lane, payload_json, needs_token, token_holder, visitor_hash)"
                    " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, owner, name, time.time(), config_json, data_path,
                     json.dumps(data_spec) if data_spec is not None else None, str(run_dir), kind, KIND_LANES[kind],
                     payload, int(bool(token)), process_identity() if token else None, visitor_hash),
                )
        except BaseException:
            VAULT.discard(job_id)
            raise

    def _queued(self, job_id: str, start: bool) -> JobRecord:
        job = self._fetch(job_id)
        EventLog(job.events_path).append(Queued(job_id, position=self.queue_position(job_id) or 0))
        if start:
            self.dispatch()
        return self._fetch(job_id)

    def get(self, job_id: str) -> JobRecord:
        self._reconcile_and_continue()
        return self._fetch(job_id)

    def list(self, owner: str | None = None, kind: str | None = "train") -> list[JobRecord]:
        """Newest first; only the owner's when an owner is given; only training runs unless ``kind`` says
        otherwise (None: every kind), so the tabs that list runs never see an index build."""
        self._reconcile_and_continue()
        clauses, args = ["1 = 1"], []
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        return self._select(" AND ".join(clauses) + " ORDER BY created_at DESC", tuple(args))

    def queue_position(self, job_id: str) -> int | None:
        """1 = next to start in its lane; None when the job is not waiting."""
        with self._connect() as db:
            row = db.execute("SELECT lane FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            rows = db.execute("SELECT id FROM jobs WHERE status = 'queued' AND lane = ? ORDER BY created_at",
                              (row["lane"],)).fetchall()
        ids = [r["id"] for r in rows]
        return ids.index(job_id) + 1 if job_id in ids else None

    def events(self, job_id: str) -> list[JobEvent]:
        return EventLog(self._fetch(job_id).events_path).read()

    def cancel(self, job_id: str) -> JobRecord:
        """Stop a job: a waiting one never starts; a running one saves a checkpoint and stops after its step."""
        self.get(job_id)  # reconcile first (it may dispatch, so not under the lock below)
        with self._exclusive():  # never between a dispatcher's spawn and its "running" mark
            job = self._fetch(job_id)
            if job.status in WAITING:
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
        """Queue a stopped, failed or interrupted job again, from its newest checkpoint when there is one.

        It goes to the back of its lane's queue. ``hf_token`` is held in memory for this job only.
        """
        job = self.get(job_id)
        if not job.resumable:
            raise JobError(f"Run {job_id} is {job.status}; only stopped, failed or interrupted runs can be resumed.")
        if job.visitor_hash:
            self._check_queue_cap(job.visitor_hash, "this one")
        checkpoint = job.latest_checkpoint()
        if hf_token:
            VAULT.put(job_id, hf_token)
        if not self._update_if(job_id, RESUMABLE, status="queued", cancel_requested=0, error=None, finished_at=None,
                               pid=None, resume_from=str(checkpoint) if checkpoint else None, created_at=time.time(),
                               needs_token=int(bool(hf_token)),
                               token_holder=process_identity() if hf_token else None):
            VAULT.discard(job_id)
            raise JobError(f"Run {job_id} changed while resuming it; look at it again.")
        EventLog(job.events_path).append(Queued(job_id, position=self.queue_position(job_id) or 0))
        self.dispatch()
        return self._fetch(job_id)

    def provide_token(self, job_id: str, token: str) -> JobRecord:
        """Give a job waiting in ``needs_token`` its token again; it goes back to its old place in the queue."""
        token = (token or "").strip()
        if not token:
            raise JobError("Paste your Hugging Face token first (huggingface.co/settings/tokens, read access), "
                           "then press 'Continue with this token'.")
        job = self.get(job_id)
        if job.status != "needs_token":
            raise JobError(f"Run {job_id} is {job.status}; it is not waiting for a token.")
        VAULT.put(job_id, token)
        if not self._update_if(job_id, ("needs_token",), status="queued", error=None, finished_at=None,
                               needs_token=1, token_holder=process_identity()):
            VAULT.discard(job_id)
            raise JobError(f"Run {job_id} changed meanwhile; look at it again.")
        EventLog(job.events_path).append(Queued(job_id, position=self.queue_position(job_id) or 0))
        self.dispatch()
        return self._fetch(job_id)

    def wait(self, job_id: str, timeout: float = 3600, poll: float = 0.5) -> JobRecord:
        """Until the job ends or waits for a person (``needs_token``)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.get(job_id)
            if job.finished or job.status == "needs_token":
                return job
            time.sleep(poll)
        raise TimeoutError(f"Run {job_id} did not finish within {timeout:.0f} s.")

    def follow(self, job_id: str, poll: float = 0.5) -> Iterator[JobEvent]:
        """Every event of a job, from the first, until it ends (or waits for a token).

        While the job waits, this process dispatches too: it may be the one holding the job's token.
        """
        log_file = EventLog(self._fetch(job_id).events_path)
        offset = 0
        while True:
            events, offset = log_file.iter_from(offset)
            for event in events:
                yield event
                if isinstance(event, TERMINAL) and self._fetch(job_id).finished:
                    return
            job = self.get(job_id)  # reconciles: a dead worker turns into a Failed event we then read
            if job.status == "queued":
                self.dispatch()
            if job.finished or job.status == "needs_token":
                tail, offset = log_file.iter_from(offset)
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
        """Record how a job ended (a worker calls this before its terminal event's process exits)."""
        if status not in FINISHED:
            raise JobError(f"{status!r} is not an end state; use one of {', '.join(FINISHED)}.")
        job = self._fetch(job_id)
        self._finish(job, status, error, final_loss)

    def _finish(self, job: JobRecord, status: str, error: str | None, final_loss: float | None = None) -> None:
        VAULT.discard(job.id)
        values: dict[str, Any] = {"status": status, "finished_at": time.time(), "error": error, "pid": None}
        if final_loss is not None:
            values["final_loss"] = final_loss
        self._update(job.id, **values)

    # -- queue -----------------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Turn jobs whose worker vanished into failed jobs with a reason (and a Failed event)."""
        jobs = self._select("status IN ('running', 'cancelling')")
        return sum(self._mark_vanished(job) for job in jobs if not process_alive(job.pid, job.pid_started))

    def _reconcile_and_continue(self) -> None:
        """After a worker vanished nobody else will start the queue's next job: do it here."""
        if self.reconcile():
            self.dispatch()

    def _mark_vanished(self, job: JobRecord) -> bool:
        checkpoint = job.latest_checkpoint()
        where = f"at step {job.last_step} of {job.total_steps}" if job.total_steps else "before its first step"
        kept = (f"The checkpoint from step {checkpoint.name.split('-')[-1]} is kept: press Resume to continue "
                "from there." if checkpoint else "No checkpoint was saved yet: Resume starts the run again.")
        what = "training process" if job.kind == "train" else f"{job.kind} process"
        reason = (f"The {what} stopped unexpectedly {where} (it was killed, the server restarted, "
                  f"or it ran out of memory). {kept}")
        fixes = ["Lower 'save steps' so checkpoints are written more often."] if job.kind == "train" else []
        fixes = [] if checkpoint else fixes
        with self._connect() as db:  # conditional, so two processes reconciling at once report it once
            claimed = db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?, pid = NULL"
                " WHERE id = ? AND status IN ('running', 'cancelling') AND pid IS ?",
                (time.time(), reason, job.id, job.pid),
            ).rowcount
        if claimed:
            EventLog(job.events_path).append(Failed(job.id, reason=reason, fixes=fixes, resumable=True))
        return bool(claimed)

    def dispatch(self) -> list[JobRecord]:
        """In every lane with nothing running, start the oldest queued job this process may start.

        A job submitted with a token starts only where its token is: in this process's vault. When another
        live process holds it (the web server, while a finishing worker dispatches), the lane waits for that
        process, which dispatches every few seconds. When the holder is gone (a restart), the job moves to
        ``needs_token`` and the queue moves on past it. Returns the jobs started.
        """
        started = []
        with self._exclusive():
            self.reconcile()
            for lane in LANES:
                job = self._start_next(lane)
                if job is not None:
                    started.append(job)
        return [self._fetch(job.id) for job in started]

    def _start_next(self, lane: str) -> JobRecord | None:
        with self._connect() as db:
            busy = db.execute("SELECT COUNT(*) FROM jobs WHERE lane = ? AND status IN ('running', 'cancelling')",
                              (lane,)).fetchone()[0]
        if busy:
            return None
        for job in self._select("status = 'queued' AND lane = ? ORDER BY created_at", (lane,)):
            token = VAULT.take(job.id) if job.needs_token else None
            if job.needs_token and token is None:
                if _holder_alive_elsewhere(job.token_holder):
                    return None  # its holder starts it; starting the next one instead would jump the queue
                self._park_for_token(job)
                continue
            return self._start(job, token)
        return None

    def _start(self, job: JobRecord, token: str | None) -> JobRecord | None:
        """Spawn the job's worker and mark it running (unless the worker already finished it)."""
        try:
            pid, pid_started = self._spawn_worker(job, token)
        except OSError as exc:
            reason = f"The worker process could not be started: {exc.strerror or exc}. Press Resume to try again."
            self._finish(job, "failed", reason)
            EventLog(job.events_path).append(Failed(job.id, reason=reason, resumable=True))
            return None
        self._update_if(job.id, ("queued",), status="running", started_at=job.started_at or time.time(), pid=pid,
                        pid_started=pid_started, token_holder=None)
        return job

    def _park_for_token(self, job: JobRecord) -> None:
        """The job's token is gone with the process that held it: wait, visibly, for its owner to give it again."""
        if self._update_if(job.id, ("queued", "interrupted"), status="needs_token", error=NEEDS_TOKEN_MESSAGE,
                           token_holder=None, pid=None, resume_from=_resume_point(job)):
            EventLog(job.events_path).append(Log(job.id, level="warning", message=NEEDS_TOKEN_MESSAGE))

    def recover_after_restart(self, token_for: Callable[[JobRecord], str | None] | None = None) -> list[str]:
        """At server start: queue interrupted jobs again from their newest checkpoint; ask for lost tokens.

        ``token_for(job)`` may supply a token the server is allowed to use for that job again (the Space
        owner's own jobs); a job that needs a token and gets none moves to ``needs_token``. Returns the ids
        queued again.
        """
        requeued = []
        with self._exclusive():
            waiting = self._select("status IN ('interrupted', 'needs_token') OR (status = 'queued' AND needs_token = 1)"
                                   " ORDER BY created_at")
            for job in waiting:
                if job.status == "queued" and (VAULT.holds(job.id) or _holder_alive_elsewhere(job.token_holder)):
                    continue
                token = token_for(job) if (token_for and job.needs_token) else None
                if job.needs_token and not token:
                    self._park_for_token(job)
                elif self._requeue(job, token):
                    requeued.append(job.id)
        return requeued

    def _requeue(self, job: JobRecord, token: str | None) -> bool:
        """Back in the queue at its old place (it was there first), continuing from its newest checkpoint."""
        if token:
            VAULT.put(job.id, token)
        done = self._update_if(job.id, (job.status,), status="queued", error=None, finished_at=None, pid=None,
                               cancel_requested=0, resume_from=_resume_point(job), needs_token=int(bool(token)),
                               token_holder=process_identity() if token else None)
        if not done:
            VAULT.discard(job.id)
        elif job.status != "queued":
            EventLog(job.events_path).append(Queued(job.id, position=self.queue_position(job.id) or 0))
        return done

    def interrupt_workers(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> list[str]:
        """Ask every running worker to checkpoint and stop (SIGTERM), and wait up to ``grace`` seconds.

        Why the server forwards the signal: workers run in their own session so that they survive a closed
        terminal or a web-server crash, which also means the container's SIGTERM never reaches them.
        Returns the ids of the jobs asked to stop.
        """
        asked = []
        for job in self._select("status IN ('running', 'cancelling')"):
            if process_alive(job.pid, job.pid_started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(job.pid, signal.SIGTERM)  # type: ignore[arg-type]
                    asked.append(job)
        deadline = time.monotonic() + grace
        while any(process_alive(j.pid, j.pid_started) for j in asked) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [j.id for j in asked]

    def start_dispatcher(self, interval: float = DISPATCH_INTERVAL_SECONDS) -> threading.Event:
        """A daemon thread that dispatches every ``interval`` seconds; set the returned event to stop it.

        The web server runs it because it holds the visitors' tokens: a finishing worker may not start a
        job whose token it does not have, so the server must notice the free lane and start it itself.
        """
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.dispatch()
                except Exception:  # a locked database or a full disk must not end the loop for good
                    log.warning("Dispatching queued jobs failed; trying again", exc_info=True)

        threading.Thread(target=loop, name="tune-studio-dispatcher", daemon=True).start()
        return stop

    def _spawn_worker(self, job: JobRecord, token: str | None) -> tuple[int, float]:
        """Detached process (own session) so it survives the web server; its output goes to worker.log."""
        import psutil

        log_file = open(job.run_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "worker", job.id],
                cwd=PROJECT_ROOT, env=worker_environment(self.root, token), stdout=log_file,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log_file.close()
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it so it never lingers as a zombie
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            started = time.time()
        return proc.pid, started


def _resume_point(job: JobRecord) -> str | None:
    """Where a job continues: its newest checkpoint after an interruption, else what it already had."""
    if job.status == "interrupted":
        checkpoint = job.latest_checkpoint()
        if checkpoint is not None:
            return str(checkpoint)
    return job.resume_from


def _estimated_steps(config: TrainConfig, data_path: Path) -> tuple[int, int] | None:
    """(steps, rows): optimizer steps an epochs-based run takes before packing (rows ÷ batch × epochs).

    None when the file cannot be read here; the worker then reports the data problem itself.
    """
    from engine.data import DatasetError, load_dataset_file

    try:
        rows = len(load_dataset_file(data_path).records)
    except (DatasetError, OSError):
        return None
    train_rows = max(1, rows - math.floor(rows * config.val_fraction))
    per_epoch = math.ceil(train_rows / (config.batch_size * config.grad_accum))
    return max(1, math.ceil(per_epoch * config.num_epochs)), rows


def record_failure(store: JobStore, job_id: str, reason: str, exc: BaseException) -> None:
    """End a job as failed: the Failed event (with the traceback's tail for the log view), then the status.

    Shared by the runners of every kind, so a failure reads the same in every tab and the traceback reaches
    the worker's own output too.
    """
    detail = "".join(traceback.format_exception(exc))[-4000:]
    EventLog(store.load(job_id).events_path).append(Failed(job_id, reason=reason, resumable=False, detail=detail))
    store.finish(job_id, "failed", error=reason)
    print(detail, flush=True)
