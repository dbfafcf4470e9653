"""Everything the app fetches from the Hugging Face Hub goes through here: base models, embedders, rerankers.

Why one module: a visitor waiting for a 3 GB download needs the same things whatever is being
downloaded — bytes done of the total, a rate and an ETA; a refusal *before* the disk fills; and, when
it fails, one plain sentence saying what to do (accept a licence, fix a token, check an id, free disk,
reconnect) instead of a client traceback. Visitors type model ids as free text, so ids are checked
against the Hub's pattern here too: a visitor can never make the server open a local path.

The transport is ``huggingface_hub`` itself (``model_info`` for the file list and sizes,
``hf_hub_download`` per file with a byte-counting progress hook, ``auth_check`` for access), so
``HF_ENDPOINT`` selects another Hub (tests run a local one) and its cache layout, resumption and
integrity checks apply. The token is whatever the visitor gave, in memory only: ``False`` goes to the
client when there is none, so the server's own login or ``HF_TOKEN`` is never used on a visitor's
behalf, and no message built here ever contains a token.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.paths import models_dir
from engine.events import Progress
from engine.model_ids import BUNDLED_ID, ModelError

log = logging.getLogger("tune_studio.hub")

HUB_URL = "https://huggingface.co"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
#: A successful access check is reused this long per (model, token): licences are rarely revoked mid-session.
ACCESS_TTL_SECONDS = 300.0
#: Progress is reported at most this often (each report may append to an fsync'ed event log).
REPORT_EVERY_SECONDS = 0.25
#: Kept free beyond the download itself, so a download never leaves the volume completely full.
DISK_HEADROOM_BYTES = 200 * 2**20
MAX_PARALLEL_FILES = 4

#: What ``transformers`` needs to load a causal LM and its tokenizer (README, ONNX, GGUF... are skipped).
MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*")
#: The tokenizer alone (the Data tab counts tokens with it): no weights.
TOKENIZER_FILES = ("*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*")
#: Older weight formats, skipped when the repo also has ``*.safetensors`` (many repos carry both: 2x the bytes).
LEGACY_WEIGHTS = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".onnx", ".gguf")

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^{_PART}/{_PART}$")
EXAMPLE_ID = "Qwen/Qwen2.5-0.5B-Instruct"


class HubError(ModelError):
    """A Hub download or access check failed; ``kind`` says which way, the message says what to do.

    Kinds: ``bad_id`` (not an ``owner/name`` Hub id), ``gated`` (licence not accepted / no token),
    ``bad_token`` (token refused), ``not_found`` (no such model, revision or loadable files),
    ``no_disk``, ``offline`` (the Hub cannot be reached, or downloads are switched off) and
    ``hub_error`` (the Hub answered with an unexpected error).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DownloadProgress:
    """Where one download stands; bytes already in the cache count as done from the first report."""

    repo_id: str
    done: int
    total: int
    rate: float | None = None  # bytes per second since this download started
    eta_seconds: float | None = None
    files_done: int = 0
    files: int = 0

    @property
    def fraction(self) -> float:
        """Share done in [0, 1] (1 for an empty download)."""
        return 1.0 if not self.total else max(0.0, min(1.0, self.done / self.total))

    def to_event(self, job_id: str) -> Progress:
        """The job event every tab already knows how to show (phase ``download``, unit ``bytes``)."""
        return Progress(job_id, phase="download", done=self.done, total=self.total, unit="bytes",
                        item=self.repo_id, rate=self.rate, eta_seconds=self.eta_seconds,
                        message=f"{self.files_done} of {self.files} files" if self.files else "")


OnProgress = Callable[[DownloadProgress], None]


# ------------------------------------------------------------------------------------------ ids


def check_model_id(text: str | None) -> str:
    """The id, stripped, when it is a Hub model id (``owner/name``); a plain refusal otherwise.

    Ids come from visitors as free text and end up in ``from_pretrained``-like calls, which also
    accept local folders: refusing anything path-like here keeps the server's files out of reach.
    """
    value = (text or "").strip()
    if not value:
        raise HubError("bad_id", f"Type a model id from the Hugging Face Hub, such as {EXAMPLE_ID}.")
    if value.startswith(("/", "~", ".", "\\")) or any(mark in value for mark in ("\\", ":", "..")):
        raise HubError("bad_id", "That looks like a file path. Only Hugging Face Hub model ids can be used here: "
                                 f"owner/name as shown on the model's Hub page, such as {EXAMPLE_ID}.")
    shown = value if len(value) <= 80 else value[:77] + "..."
    if value.count("/") != 1:
        raise HubError("bad_id", f"'{shown}' is not a Hub model id: write it as owner/name with exactly one '/', "
                                 f"such as {EXAMPLE_ID}.")
    if not _HUB_ID.match(value) or "--" in value or value.endswith(".git"):
        raise HubError("bad_id", f"'{shown}' is not a valid Hub model id: owner and name may use letters, digits, "
                                 "'-', '_' and '.', at most 96 characters each, without '--' or '..'.")
    return value


# --------------------------------------------------------------------------------------- errors


def endpoint_host() -> str:
    """The Hub being talked to, for messages: huggingface.co, or the host ``HF_ENDPOINT`` names."""
    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).netloc or "huggingface.co"


def _unreachable(exc: BaseException) -> bool:
    """Whether an error (or one it wraps) means no answer came from the Hub at all."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (httpx2.TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _offline_error(repo: str) -> HubError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return HubError("offline", f"Downloading {repo} is switched off: this server runs offline. Offline, only "
                                   "the bundled model works; choose it, or ask the operator to allow Hub downloads.")
    return HubError("offline", f"Cannot reach {endpoint_host()} to fetch {repo}. Check the internet connection and "
                               "try again; offline, only the bundled model works.")


def gated_error(repo: str, had_token: bool) -> HubError:
    """The refusal for a gated repo: which licence page to accept, and that the token needs read access."""
    page = f"{HUB_URL}/{repo}"
    if had_token:
        return HubError("gated", f"{repo} is a gated model and the account of this token has no access yet: sign in "
                                 f"on {page} with that account, accept the licence (some need approval, which can "
                                 "take a while), then try again with a token that has read access.")
    return HubError("gated", f"{repo} is a gated model: accept its licence on {page}, then paste a Hugging Face "
                             f"access token with read access (create one at {TOKENS_PAGE}) into the token field.")


def _status_error(exc: BaseException, repo: str, had_token: bool) -> HubError:
    """An HTTP refusal from the Hub in the visitor's terms (``exc`` is a ``HfHubHTTPError``)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401 and had_token:
        return HubError("bad_token", "The Hugging Face token was refused (mistyped, revoked or expired). Create a "
                                     f"token with read access at {TOKENS_PAGE} and paste it again.")
    if status == 403 and had_token:
        return HubError("bad_token", f"This token may not read {repo}. Use a token with read access (a fine-grained "
                                     f"token needs read access to this repo), created at {TOKENS_PAGE}.")
    if status in (401, 403):
        return HubError("not_found", f"Access to {repo} was refused. If it is private, paste a token of an account "
                                     "that can read it; otherwise check the id.")
    return HubError("hub_error", f"The Hub answered with an error (HTTP {status}) while fetching {repo}. "
                                 "Try again in a few minutes.")


def explain(exc: BaseException, repo: str, had_token: bool) -> HubError:
    """Turn any failure of a Hub call into a :class:`HubError` whose message says what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        return explain(exc.__cause__, repo, had_token)  # "not in the cache" hides why the Hub call failed
    if isinstance(exc, GatedRepoError):
        return gated_error(repo, had_token)
    if isinstance(exc, RevisionNotFoundError):
        return HubError("not_found", f"{repo} has no such revision (branch, tag or commit): check it, or leave it "
                                     "empty for the latest version.")
    if isinstance(exc, RepositoryNotFoundError):
        private = " If it is private, paste a token of an account that can read it." if not had_token else ""
        return HubError("not_found", f"There is no model {repo} on the Hub: check the id (owner/name, exactly as on "
                                     f"the model's page, e.g. {EXAMPLE_ID}).{private}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError("not_found", f"A file of {repo} disappeared from the Hub while downloading; try again.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return HubError("no_disk", f"The disk filled up while downloading {repo}. Free some space (delete old runs "
                                   "or models) or choose a smaller model.")
    if _unreachable(exc):
        return _offline_error(repo)
    if isinstance(exc, HfHubHTTPError):
        return _status_error(exc, repo, had_token)
    return HubError("hub_error", f"Fetching {repo} failed ({type(exc).__name__}). Try again; if it keeps failing, "
                                 "choose another model.")


# --------------------------------------------------------------------------------------- access


_access_ok: dict[tuple[str, str, str], float] = {}
_access_lock = threading.Lock()


def _token_arg(token: str | None) -> str | bool:
    """The visitor's token, or ``False`` so huggingface_hub never falls back to the server's own token."""
    value = (token or "").strip()
    return value or False


def _access_key(repo: str, token: str | bool) -> tuple[str, str, str]:
    """Cache key: the Hub, the repo and a hash of the token, so the token itself is never kept."""
    from huggingface_hub import constants

    secret = hashlib.sha256(token.encode()).hexdigest() if isinstance(token, str) else ""
    return constants.ENDPOINT, repo.lower(), secret


def require_access(model_id: str, token: str | None) -> None:
    """Raise the gated / bad-token / not-found :class:`HubError` unless ``token`` (or no token) can read the repo.

    Cached models are served without any Hub call, so whoever serves a cached gated model to a
    request must call this first with that request's token. Successes are remembered for
    :data:`ACCESS_TTL_SECONDS` per (model, sha256 of the token); refusals are not, so a licence
    accepted a minute ago works at once. When the Hub cannot be reached this raises ``offline``:
    access cannot be confirmed. Models that do not come from the Hub (the bundled one, an absolute
    folder the code made itself, as ``engine.models.model_folder`` accepts) need no check.
    """
    from huggingface_hub import HfApi

    if model_id == BUNDLED_ID or (Path(model_id).is_absolute() and Path(model_id).is_dir()):
        return
    repo = check_model_id(model_id)
    secret = _token_arg(token)
    key = _access_key(repo, secret)
    with _access_lock:
        if _access_ok.get(key, 0.0) > time.monotonic():
            return
    try:
        HfApi().auth_check(repo, token=secret)
    except Exception as exc:  # every failure becomes one plain message
        raise _logged(explain(exc, repo, bool(secret)), exc) from None
    with _access_lock:
        _access_ok[key] = time.monotonic() + ACCESS_TTL_SECONDS


def forget_access() -> None:
    """Drop every remembered access check (after a token is revoked, and between tests)."""
    with _access_lock:
        _access_ok.clear()


def _logged(error: HubError, cause: BaseException) -> HubError:
    """Keep the client's own error type in the server log; its text can hold URLs, never shown to visitors."""
    log.info("hub: %s (%s, HTTP %s)", error.kind, type(cause).__name__,
             getattr(getattr(cause, "response", None), "status_code", "-"))
    return error


# ------------------------------------------------------------------------------------- download


def hub_cache_dir() -> Path:
    """Where Hub downloads live: next to the converted bundled model, on the persistent volume on a Space."""
    path = models_dir() / "hub"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pick_files(files: Iterable[tuple[str, int]], allow_patterns: Iterable[str] | None) -> list[tuple[str, int]]:
    """The (path, size) pairs to fetch: those matching the patterns, minus legacy weight copies of safetensors."""
    from huggingface_hub.utils import filter_repo_objects

    patterns = list(allow_patterns) if allow_patterns is not None else None
    chosen = list(filter_repo_objects(list(files), allow_patterns=patterns, key=lambda item: item[0]))
    if any(path.endswith(".safetensors") for path, _ in chosen):
        has_shards = any(path.endswith(".safetensors") and not path.rsplit("/", 1)[-1].startswith("consolidated")
                         for path, _ in chosen)
        chosen = [(path, size) for path, size in chosen if not path.endswith(LEGACY_WEIGHTS)
                  and not (has_shards and path.rsplit("/", 1)[-1].startswith("consolidated"))]
    return chosen


def _format_bytes(value: float) -> str:
    for scale, name in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "kB")):
        if value >= scale:
            return f"{value / scale:.1f} {name}"
    return f"{value:.0f} B"


def check_disk(repo: str, needed: int, folder: Path) -> None:
    """Refuse before downloading when ``needed`` bytes (plus headroom) do not fit where models are kept."""
    free = shutil.disk_usage(folder).free
    if needed and free < needed + DISK_HEADROOM_BYTES:
        raise HubError("no_disk", f"Not enough disk space to download {repo}: it needs {_format_bytes(needed)} and "
                                  f"only {_format_bytes(free)} is free where models are stored. Free some space "
                                  "(delete old runs or downloaded models) or choose a smaller model.")


@dataclass(frozen=True)
class _Plan:
    repo: str
    sha: str
    files: list[tuple[str, int]]
    total: int
    cached: int


def _plan(repo: str, revision: str | None, secret: str | bool, allow_patterns: Iterable[str] | None,
          cache: Path) -> _Plan:
    """Resolve the revision to a commit and list what to fetch, with sizes, from the repo's file metadata."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    info = HfApi().model_info(repo, revision=revision, files_metadata=True, token=secret)
    listing = [(s.rfilename, int(s.size or 0)) for s in info.siblings or []]
    files = pick_files(listing, allow_patterns)
    if not any(path.endswith((".json", ".safetensors", ".bin")) for path, _ in files):
        raise HubError("not_found", f"{repo} has no files Tune Studio can load (config.json, *.safetensors): is it "
                                    "a transformers model? Check the id.")
    sha = str(info.sha)
    cached = sum(size for path, size in files
                 if isinstance(try_to_load_from_cache(repo, path, cache_dir=cache, revision=sha), str))
    return _Plan(repo, sha, files, sum(size for _, size in files), cached)


class _CallbackFailed(Exception):
    """Carries an exception raised by ``on_progress`` through the client, to be re-raised as it was."""


class _ByteCounter:
    """Sums the bytes of every file of one download and reports them, throttled, from any worker thread."""

    def __init__(self, plan: _Plan, on_progress: OnProgress | None):
        self.plan = plan
        self.on_progress = on_progress
        self.lock = threading.Lock()
        self.done = plan.cached
        self.files_done = 0
        self.started = time.monotonic()
        self.last_report = 0.0

    def add(self, n: int, *, file_finished: bool = False) -> None:
        with self.lock:
            self.done += n
            self.files_done += int(file_finished)
            now = time.monotonic()
            if now - self.last_report >= REPORT_EVERY_SECONDS:
                self.last_report = now
                self._report(now, final=False)

    def finish(self) -> None:
        with self.lock:
            self.done = self.plan.total
            self.files_done = len(self.plan.files)
            self._report(time.monotonic(), final=True)

    def _report(self, now: float, *, final: bool) -> None:
        if self.on_progress is None:
            return
        elapsed = now - self.started
        fetched = self.done - self.plan.cached
        rate = fetched / elapsed if elapsed > 0 and fetched > 0 else None
        eta = 0.0 if final else ((self.plan.total - self.done) / rate if rate else None)
        report = DownloadProgress(self.plan.repo, min(self.done, self.plan.total), self.plan.total, rate,
                                  max(0.0, eta) if eta is not None else None, self.files_done, len(self.plan.files))
        try:
            self.on_progress(report)
        except Exception as exc:  # the caller's own error (a stop request...): not a Hub failure
            raise _CallbackFailed() from exc


def _bar_class(counter: _ByteCounter) -> type:
    """A stand-in for the tqdm bar huggingface_hub opens per file: it only forwards bytes to ``counter``.

    It has the methods the client calls on a bar (the same set as the client's own aggregating bar
    in ``snapshot_download``). ``update`` counts bytes written; ``update_transfer`` (network bytes,
    which Xet downloads report separately) is ignored so nothing is counted twice.
    """

    class _Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any):
            self.n = int(initial or 0)
            self.total = total
            if self.n:
                counter.add(self.n)

        def update(self, n: float | None = 1) -> None:
            step = int(n or 0)
            self.n += step
            counter.add(step)

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes: already counted through ``update``."""

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            """Rates are computed over the whole download instead."""

        set_transfer_postfix_str = set_postfix_str
        refresh = set_postfix_str
        close = set_postfix_str

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    return _Bar


def _fetch(plan: _Plan, secret: str | bool, cache: Path, counter: _ByteCounter) -> Path:
    """Download every planned file (a few at a time) and return the snapshot folder that holds them."""
    from huggingface_hub import hf_hub_download

    bar = _bar_class(counter)

    def one(path: str) -> Path:
        local = hf_hub_download(plan.repo, path, revision=plan.sha, cache_dir=cache, token=secret, tqdm_class=bar)
        counter.add(0, file_finished=True)
        return Path(local).parents[path.count("/")]

    paths = [path for path, _ in plan.files]
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_FILES, len(paths)))) as pool:
        folders = list(pool.map(one, paths))
    return folders[0]


def download(repo_id: str, *, token: str | None, revision: str | None = None,
             on_progress: OnProgress | None = None, allow_patterns: Iterable[str] | None = None) -> Path:
    """Fetch a Hub repo (only the files matching ``allow_patterns``) into the cache; return its local folder.

    In order: the id is checked, access is confirmed with the visitor's token (also when the files
    are cached, so a cached gated model is never handed to someone without access), the revision is
    resolved to a commit and the file sizes are read, free disk is checked against what is missing,
    then the files are fetched with ``on_progress`` called (from worker threads, one call at a time)
    with bytes done of the total, rate and ETA. Every failure is a :class:`HubError`.
    """
    repo = check_model_id(repo_id)
    require_access(repo, token)
    secret = _token_arg(token)
    cache = hub_cache_dir()
    try:
        plan = _plan(repo, revision, secret, allow_patterns, cache)
        check_disk(repo, plan.total - plan.cached, cache)
        counter = _ByteCounter(plan, on_progress)
        counter.add(0)
        folder = _fetch(plan, secret, cache, counter)
        counter.finish()
    except _CallbackFailed as wrapped:
        raise wrapped.__cause__ from None  # type: ignore[misc]
    except Exception as exc:
        raise _logged(explain(exc, repo, bool(secret)), exc) from None
    return folder
