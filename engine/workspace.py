"""Per-user workspaces and who may do what.

Several people share one Space. Each signed-in user gets a workspace: their uploaded datasets,
RAG indexes, comparison reports and exports live in their own folder, and runs carry their owner
in the job database. Every UI handler and API endpoint goes through :class:`Workspace`, so
"someone else's run" is indistinguishable from "no such run" (no id probing).

The access policy (password users from the environment, HF OAuth on a Space, read-only demo mode)
is plain data read from the environment here, so the engine, the CLI and the UI agree on it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.paths import data_dir
from engine.jobs import JobError, JobRecord, JobStore

LOCAL_OWNER = "local"
USERS_ENV = "TUNE_STUDIO_USERS"  # "alice:secret1,bob:secret2"
USERS_FILE_ENV = "TUNE_STUDIO_USERS_FILE"  # one "name:password" per line
DEMO_ENV = "TUNE_STUDIO_DEMO"  # "1": read-only demo (chat and compare only)
DEMO_WORKSPACE_ENV = "TUNE_STUDIO_DEMO_WORKSPACE"  # whose runs and indexes the demo shows
SHARE_ENV = "TUNE_STUDIO_SHARE"  # "1": a public gradio.live link for a local run
OWNER_ENV = "TUNE_STUDIO_OWNER"  # whose jobs may use the server's own HF_TOKEN (default: the Space's author)
SHARE_OWNER_TOKEN_ENV = "TUNE_STUDIO_SHARE_OWNER_TOKEN"  # "1": every visitor's jobs may use the server's HF_TOKEN
SERVER_TOKEN_ENV = "HF_TOKEN"  # the Space owner's secret

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: "Your datasets": at most this many are kept per workspace (their bytes count in the disk quota too).
MAX_SAVED_DATASETS = 30
DATASET_RECORD = "dataset.json"
_DATASET_ID = re.compile(r"^[0-9a-f]{12}$")


class AccessError(PermissionError):
    """The user may not do this here (not signed in, read-only demo, someone else's item)."""


def safe_owner(owner: str) -> str:
    """A folder name for an owner. Distinct owners never collide: a short hash is added when cleaning changed it."""
    cleaned = _SAFE.sub("_", owner).strip("._") or "user"
    if cleaned != owner:
        cleaned += "-" + hashlib.sha256(owner.encode()).hexdigest()[:8]
    return cleaned[:80]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _parse_users(text: str, where: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, password = entry.partition(":")
        if not sep or not name.strip() or not password:
            raise AccessError(f"{where}: entry {number} is not 'name:password'. Write users as "
                              "name:password, separated by commas or new lines.")
        users[name.strip()] = password
    return users


@dataclass(frozen=True)
class AccessPolicy:
    """How people get in and what they may do; read once from the environment at start-up."""

    users: dict[str, str] = field(default_factory=dict, repr=False)  # password sign-in (never logged: repr=False)
    oauth: bool = False  # "Sign in with Hugging Face" on a Space with hf_oauth: true
    demo: bool = False  # read-only: chat and compare, no training, no indexing
    demo_workspace: str = LOCAL_OWNER
    share: bool = False
    space_owner: str | None = None  # the one workspace whose jobs may use the server's own HF_TOKEN
    share_owner_token: bool = False  # the owner chose to let every visitor's jobs use it

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AccessPolicy:
        env = dict(os.environ if env is None else env)
        users = _parse_users(env.get(USERS_ENV, ""), USERS_ENV)
        users_file = env.get(USERS_FILE_ENV)
        if users_file:
            path = Path(users_file).expanduser()
            if not path.is_file():
                raise AccessError(f"{USERS_FILE_ENV} points to {path}, which does not exist.")
            users.update(_parse_users(path.read_text(encoding="utf-8"), str(path)))
        oauth = bool(env.get("SPACE_ID") and env.get("OAUTH_CLIENT_ID"))
        space_author = env.get("SPACE_AUTHOR_NAME") if env.get("SPACE_ID") else None
        local = None if (users or oauth) else LOCAL_OWNER
        return cls(users=users, oauth=oauth, demo=_truthy(env.get(DEMO_ENV)),
                   demo_workspace=env.get(DEMO_WORKSPACE_ENV) or LOCAL_OWNER, share=_truthy(env.get(SHARE_ENV)),
                   space_owner=env.get(OWNER_ENV) or space_author or local,
                   share_owner_token=_truthy(env.get(SHARE_OWNER_TOKEN_ENV)))

    @property
    def requires_sign_in(self) -> bool:
        return bool(self.users) or self.oauth

    def check_password(self, username: str, password: str) -> bool:
        """Gradio's ``auth=`` callback. Constant-time comparison; unknown users compare against a dummy."""
        expected = self.users.get(username)
        ok = hmac.compare_digest((expected or "\0").encode(), (password or "").encode())
        return expected is not None and ok

    def owner_for(self, username: str | None) -> str:
        """The workspace a visitor works in. Raises when sign-in is required and they have not signed in."""
        if self.demo:
            return self.demo_workspace
        if username:
            return username
        if self.requires_sign_in:
            raise AccessError("Sign in first: each person's datasets, runs and indexes are kept in their own "
                              "workspace.")
        return LOCAL_OWNER

    def require_write(self, action: str) -> None:
        """Refuse anything that trains, indexes or writes models in the read-only demo."""
        if self.demo:
            raise AccessError(f"{action} is turned off: this Space is a read-only demo (chat and compare only). "
                              f"Run Tune Studio yourself, or ask the Space owner to unset {DEMO_ENV}, to do this.")


def token_for_job(policy: AccessPolicy, owner: str, visitor_token: str | None) -> str | None:
    """The Hugging Face token a job of ``owner`` may use: the visitor's own if given, else the server's.

    Why: the server's ``HF_TOKEN`` is the Space owner's secret. Handing it to every visitor's job would let
    anyone download the owner's gated or private models in the owner's name, so it is used only for the
    owner's own jobs, or for everyone when the owner turned on ``TUNE_STUDIO_SHARE_OWNER_TOKEN=1``.
    """
    token = (visitor_token or "").strip()
    if token:
        return token
    if policy.share_owner_token or (policy.space_owner is not None and owner == policy.space_owner):
        return os.environ.get(SERVER_TOKEN_ENV) or None
    return None


@dataclass
class DatasetRecord:
    """One of "your datasets": a file kept in the workspace and what the Data tab read from it."""

    id: str  # the first 12 hex digits of the file's sha256: the same file is kept once
    name: str
    format: str = ""
    rows: int = 0
    saved_at: float = 0.0  # time.time() of the last save or use
    kind: str = "sft"
    mapping: dict[str, Any] | None = None  # the column mapping chosen for it (None: detected)
    options: dict[str, Any] = field(default_factory=dict)  # engine.data.DataOptions fields
    path: str = ""  # the file, filled when read (not stored: the workspace can move)

    def label(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.saved_at))
        rows = f"{self.rows} rows · " if self.rows else ""
        return f"{self.name} ({rows}{self.format or 'format not read yet'} · {when})"


class Workspace:
    """One owner's files and runs. Cheap to create per request."""

    def __init__(self, owner: str, root: str | Path | None = None):
        self.owner = owner
        self.data_root = Path(root) if root else data_dir()
        self.root = self.data_root / "workspaces" / safe_owner(owner)

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def datasets(self) -> Path:
        return self._dir("datasets")

    @property
    def indexes(self) -> Path:
        return self._dir("indexes")

    @property
    def reports(self) -> Path:
        return self._dir("reports")

    @property
    def experiments(self) -> Path:
        return self._dir("experiments")

    @property
    def exports(self) -> Path:
        return self._dir("exports")

    def store(self) -> JobStore:
        return JobStore(self.data_root)

    def runs(self) -> list[JobRecord]:
        return self.store().list(owner=self.owner)

    def finished_runs(self) -> list[JobRecord]:
        """The owner's runs that finished with an adapter: the ones Chat, Compare, Share and the Lab can use."""
        return [job for job in self.runs()
                if job.status == "done" and (job.adapter_dir / "adapter_config.json").exists()]

    def run(self, run_id: str) -> JobRecord:
        """The owner's run; someone else's run reads as missing, so ids cannot be probed."""
        job = self.store().get(run_id)
        if job.owner != self.owner:
            raise JobError(f"There is no run with id {run_id!r} in your workspace.")
        return job

    def index_names(self) -> list[str]:
        return sorted(p.name for p in self.indexes.iterdir() if (p / "manifest.json").exists())

    def experiment_path(self, name: str) -> Path:
        """The folder of one of the owner's experiments (may not exist yet); names cannot climb out."""
        cleaned = _SAFE.sub("_", (name or "").strip()).strip("._")
        if not cleaned:
            raise ValueError("Give the experiment a name (letters, digits, '-', '_').")
        return self.experiments / cleaned[:80]

    def index_path(self, name: str) -> Path:
        """The folder of one of the owner's indexes (may not exist yet). Names cannot climb out of the workspace."""
        cleaned = _SAFE.sub("_", (name or "").strip()).strip("._")
        if not cleaned:
            raise ValueError("Give the collection a name (letters, digits, '-', '_').")
        return self.indexes / cleaned[:80]

    # -- "your datasets" ---------------------------------------------------------------------------
    def save_dataset(self, source: str | Path, name: str | None = None, **info: Any) -> DatasetRecord:
        """Keep a data file in the workspace (once per content) with its record; returns the record.

        The caller checked the upload's size and the disk quota (``engine.quotas.accept_upload``); this bounds
        how many are kept (``MAX_SAVED_DATASETS``): saving past it is refused with what to do instead.
        ``info`` sets record fields (format, rows, kind, mapping, options).
        """
        source = Path(source)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        folder = self.datasets / digest
        if not folder.is_dir() and len(self.list_datasets()) >= MAX_SAVED_DATASETS:
            raise ValueError(f"You already keep {MAX_SAVED_DATASETS} datasets: delete one under 'Your datasets' "
                             "in the Data tab, then upload this file again.")
        name = Path(name or source.name).name
        target = folder / name
        folder.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(source, target)
        old = self._read_record(folder)
        record = DatasetRecord(**{**(asdict(old) if old else {}), "id": digest, "name": name,
                                  "saved_at": time.time(), **info})
        self._write_record(folder, record)
        return self.dataset(digest)

    def update_dataset(self, dataset_id: str, **info: Any) -> DatasetRecord:
        """Change fields of a kept dataset's record (format and rows once read, the chosen mapping...)."""
        record = self.dataset(dataset_id)
        record = DatasetRecord(**{**asdict(record), **info, "saved_at": time.time()})
        self._write_record(self.datasets / record.id, record)
        return self.dataset(record.id)

    def list_datasets(self) -> list[DatasetRecord]:
        """The owner's kept datasets, the most recently used first."""
        records = [self._read_record(folder) for folder in self.datasets.iterdir() if folder.is_dir()]
        return sorted((r for r in records if r), key=lambda r: r.saved_at, reverse=True)

    def last_dataset(self) -> DatasetRecord | None:
        """The dataset used last (what a reloaded page loads again), or None."""
        records = self.list_datasets()
        return records[0] if records else None

    def dataset(self, dataset_id: str) -> DatasetRecord:
        """One kept dataset; another owner's id, or a made-up one, reads as missing."""
        folder = self.datasets / dataset_id if _DATASET_ID.match(dataset_id or "") else None
        record = self._read_record(folder) if folder is not None and folder.is_dir() else None
        if record is None:
            raise KeyError("That dataset is not in your workspace any more: pick another one, or upload it again.")
        return record

    def delete_dataset(self, dataset_id: str) -> None:
        """Remove a kept dataset (its file and record). Finished runs keep their own results; a run still
        queued or training reads the file, so the dataset is kept until it ends (the message says which)."""
        folder = self.datasets / self.dataset(dataset_id).id
        busy = [job for job in self.runs() if not job.finished and Path(job.data_path).parent == folder.resolve()]
        if busy:
            raise ValueError(f"The run '{busy[0].name}' is still using this dataset ({busy[0].status}): delete it "
                             "when that run has ended.")
        shutil.rmtree(folder)

    def _read_record(self, folder: Path) -> DatasetRecord | None:
        try:
            raw = json.loads((folder / DATASET_RECORD).read_text(encoding="utf-8"))
            known = {k: v for k, v in raw.items() if k in DatasetRecord.__dataclass_fields__}
            record = DatasetRecord(**known)
        except (OSError, ValueError, TypeError):
            return None
        path = folder / Path(record.name).name
        if record.id != folder.name or not path.is_file():
            return None
        record.path = str(path)
        return record

    @staticmethod
    def _write_record(folder: Path, record: DatasetRecord) -> None:
        data = {k: v for k, v in asdict(record).items() if k != "path"}
        tmp = folder / (DATASET_RECORD + ".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, folder / DATASET_RECORD)
