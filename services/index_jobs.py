"""Index builds as background jobs: submit from a request, run in the job worker, follow through events.

Why: embedding a big upload can take minutes to hours; inside a web request it held one of the few
queue slots and died with the connection. Now a request copies the uploads into the visitor's
workspace (Gradio's temporary files may vanish before the job starts), queues a job of kind "index"
(:meth:`engine.jobs.JobStore.submit_task`, lane "cpu": one build at a time, beside training), and
follows its ``events.jsonl``. The worker (``python -m engine worker JOB_ID``) calls
:func:`run_index_job`, which changes the collection inside :meth:`rag.index.RagIndex.edit` — under the
collection's lock, starting from its latest saved version — so two visitors building into one
collection both end up in it. A cancelled or failed job saves nothing: the collection stays as it was.

Payload of an index job (stored as JSON; never a secret)::

    {"collection": "handbook", "workspace_owner": "alice", "action": "add" | "remove" | "reindex" | "apply",
     "files": [[display_name, staged_path], ...],   # add
     "sources": ["a.pdf", ...],                      # remove
     "spec": {...},                                  # add (for a new collection), reindex, apply
     "staging": "/…/workspaces/alice/staging/<id>"}  # add: deleted when the job ends
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.events import Cancelled, Done, EventLog, Interrupted, Log, Progress
from engine.jobs import ACTIVE, WAITING, JobError, JobRecord, JobStore, record_failure
from engine.limits import limits
from engine.quotas import accept_upload
from engine.workspace import Workspace
from rag.embedders import get_embedder
from rag.estimate import admit_documents, read_files
from rag.events import (
    Chunked,
    EmbedProgress,
    FileLoaded,
    FileRefused,
    FileRemoved,
    FileUnchanged,
    IndexUpdated,
    PageRead,
    ReadingFile,
    Splitting,
    Writing,
)
from rag.index import MANIFEST, EmbedderMismatchError, IndexError_, RagIndex, read_manifest
from rag.ingest import unlock_pdf
from rag.pipeline import PipelineSpec

KIND = "index"
ACTIONS = ("add", "remove", "reindex", "apply")
VERBS = {"add": "Build", "remove": "Remove files from", "reindex": "Re-index", "apply": "Apply pipeline to"}
MAX_WAITING_JOBS = 4  # index jobs one workspace may have waiting or running at once
REFIT_THREADS_S = 30.0  # how often a build re-checks the free cores while embedding
RESULT_FILE = "result.json"
STAGING_GRACE_S = 3600
"""A staging folder younger than this is never swept: another request of the same workspace may have staged it
a moment ago and not yet recorded its job (two tabs or two people building at once)."""


class IndexJobError(ValueError):
    """A request for an index job that cannot be queued; the message says why and what to do."""


class _CancelledByUser(Exception):
    """The owner pressed Cancel: leave the collection as it was."""


class _Interrupted(BaseException):
    """The system asked the worker to stop (SIGTERM: a Space restarting or going to sleep)."""


class StopSignal:
    """Turns SIGTERM into a flag checked between batches, so an interrupted build stops before it saves.

    The job then ends as ``interrupted`` and the server queues it again when it starts (a build is
    idempotent: files already indexed are skipped by content hash).
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True


# ----------------------------------------------------------------------------------------- submitting


def staging_dir(ws: Workspace) -> Path:
    """Where uploads wait for their index job, inside the visitor's own workspace."""
    return ws.root / "staging"


def index_jobs(ws: Workspace, *, active_only: bool = False) -> list[JobRecord]:
    """The workspace's index jobs, newest first (only waiting or running ones with ``active_only``)."""
    jobs = ws.store().list(owner=ws.owner, kind=KIND)
    return [j for j in jobs if j.status in (*WAITING, *ACTIVE)] if active_only else jobs


def index_job(ws: Workspace, job_id: str) -> JobRecord:
    """One of the workspace's index jobs; anyone else's id reads as missing."""
    job = ws.store().get(job_id)
    if job.owner != ws.owner or job.kind != KIND:
        raise JobError(f"There is no index job with id {job_id!r} in your workspace.")
    return job


def stage_uploads(ws: Workspace, uploads: Iterable[tuple[str, str | Path]],
                  pdf_password: str = "") -> tuple[Path, list[list[str]]]:
    """Copy uploaded files into a fresh staging folder; returns it and ``[display_name, staged_path]`` pairs.

    Sizes are checked against the server's upload limit first, so a too-large file is refused with the
    limit's name before anything is copied. An encrypted PDF that ``pdf_password`` opens is staged
    unlocked: the password is used here, in the request, and never reaches the job, its payload or a file.
    """
    items = [(str(name), Path(path)) for name, path in uploads]
    if not items:
        raise IndexJobError("Drop one or more documents on the upload area first.")
    bound = limits()
    for name, path in items:
        if not path.is_file():
            raise IndexJobError(f"The upload '{name}' is no longer on the server; drop it again.")
        accept_upload(path, ws, name, bound)  # its size, and the room left in the visitor's workspace
    folder = staging_dir(ws) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    staged = []
    for number, (name, path) in enumerate(items):
        target = folder / f"{number:04d}{path.suffix.lower()[:16]}"
        unlocked = unlock_pdf(path.read_bytes(), pdf_password) if pdf_password and target.suffix == ".pdf" else None
        if unlocked is not None:
            target.write_bytes(unlocked)
        else:
            shutil.copyfile(path, target)
        staged.append([name, str(target)])
    return folder, staged


def sweep_staging(ws: Workspace, grace_s: float = STAGING_GRACE_S) -> None:
    """Delete staging folders no waiting or running job needs (e.g. of a job cancelled before it started).

    Only folders older than ``grace_s``: a fresh one may belong to a build another request is submitting right
    now, between staging its files and recording its job (it was swept there once, and that batch was lost).
    """
    root = staging_dir(ws)
    if not root.is_dir():
        return
    keep = (*WAITING, *ACTIVE, "interrupted")  # an interrupted build runs again after a restart
    needed = {str(j.payload.get("staging")) for j in index_jobs(ws) if j.status in keep}
    cutoff = time.time() - grace_s
    for folder in root.iterdir():
        if folder.is_dir() and str(folder) not in needed and _modified(folder) < cutoff:
            shutil.rmtree(folder, ignore_errors=True)


def _modified(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except FileNotFoundError:
        return time.time()  # being removed by someone else: leave it to them


def submit_index_job(ws: Workspace, collection: str, action: str, *,
                     uploads: Iterable[tuple[str, str | Path]] | None = None, sources: Iterable[str] | None = None,
                     spec: PipelineSpec | None = None, visitor: str | None = None,
                     pdf_password: str = "") -> JobRecord:
    """Queue one change to one of the workspace's collections and return its job (it starts when the lane is free).

    ``pdf_password`` unlocks encrypted PDFs of this upload while they are staged; it is not stored.
    """
    if action not in ACTIONS:
        raise IndexJobError(f"Unknown index action {action!r}; use one of {', '.join(ACTIONS)}.")
    name = ws.index_path(collection).name
    busy = index_jobs(ws, active_only=True)
    if len(busy) >= MAX_WAITING_JOBS:
        raise IndexJobError(f"You already have {len(busy)} index jobs waiting or running (the most at once is "
                            f"{MAX_WAITING_JOBS}); wait for one to finish, or cancel one.")
    sweep_staging(ws)
    payload: dict[str, Any] = {"collection": name, "workspace_owner": ws.owner, "action": action}
    if spec is not None:
        payload["spec"] = spec.to_dict()
    if action == "remove":
        payload["sources"] = sorted(set(sources or []))
        if not payload["sources"]:
            raise IndexJobError("Pick the files to remove in 'Indexed files' first.")
    if action == "add":
        folder, payload["files"] = stage_uploads(ws, uploads or [], pdf_password)
        payload["staging"] = str(folder)
    try:
        return ws.store().submit_task(KIND, payload, owner=ws.owner, visitor=visitor,
                                      name=f"{VERBS[action]} {name}")
    except BaseException:
        if "staging" in payload:
            shutil.rmtree(payload["staging"], ignore_errors=True)
        raise


DEMO_COLLECTION = "demo-docs"
DEMO_DOCS_DIR = Path(__file__).resolve().parents[1] / "ui" / "demo_data" / "docs"
"""Short documents about Tune Studio itself, written for the app (a folder, read by path: no ui import)."""


def demo_documents() -> list[tuple[str, Path]]:
    """The bundled demo documents as ``(display name, path)`` pairs, in a stable order."""
    return [(path.name, path) for path in sorted(DEMO_DOCS_DIR.glob("*.md"))]


def start_demo_collection(ws: Workspace, visitor: str | None = None) -> str:
    """Build the collection ``demo-docs`` from the bundled demo documents, as an ordinary index job.

    Returns the id of the job building it (a new one, or one of the workspace's that is already waiting or
    running for it), or the collection's name, :data:`DEMO_COLLECTION`, when it already holds every demo
    document (nothing is queued then). Raises :class:`IndexJobError` or the limit's own error when the
    workspace cannot take another collection or job; the message says why.
    """
    path = ws.index_path(DEMO_COLLECTION)
    running = [j for j in index_jobs(ws, active_only=True) if j.payload.get("collection") == path.name]
    if running:
        return running[-1].id  # index_jobs lists newest first: follow the one that started first
    documents = demo_documents()
    if (path / MANIFEST).exists():
        held = {str(record.get("source")) for record in read_manifest(path).get("files") or []}
        if {name for name, _ in documents} <= held:
            return path.name
    else:
        limits().check("max_collections", len(ws.index_names()) + 1, "Counting the demo collection, the number "
                       "of your collections", "Delete a collection you no longer need, or add the documents to "
                       "an existing one.")
    return submit_index_job(ws, DEMO_COLLECTION, "add", uploads=documents, visitor=visitor, spec=PipelineSpec()).id


def read_result(job: JobRecord) -> dict[str, Any] | None:
    """What a finished index job changed (counts, version, refusals), or None before it finished."""
    path = job.run_dir / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------------- running


@dataclass
class _Reporter:
    """Turns rag's indexing events into the job's Progress and Log events (with rate and ETA while embedding)."""

    job_id: str
    log: EventLog
    embed_start: tuple[float, float] | None = None  # (time, chunks done) at the first embedding event
    final: IndexUpdated | None = None
    notes: list[str] = field(default_factory=list)
    refit_threads: bool = False  # in a worker process: re-check free cores while embedding (engine.cpu)
    last_fit: float = field(default_factory=time.monotonic)
    reading: ReadingFile | None = None  # the file being read, for the page lines of a long (OCR) read

    def progress(self, phase: str, **values: Any) -> None:
        self.log.append(Progress(self.job_id, phase=phase, **values))

    def note(self, message: str, level: str = "info") -> None:
        self.log.append(Log(self.job_id, message=message, level=level))

    def __call__(self, event: Any) -> None:
        """One event from rag's indexer, as job progress or a log line; events not listed are not shown."""
        handle = _REPORTER_HANDLERS.get(type(event))
        if handle is not None:
            handle(self, event)

    def _reading(self, event: ReadingFile) -> None:  # "Reading report.pdf: 3 of 7 files" while it reads the 3rd
        self.reading = event
        self.progress("read", done=event.number, total=event.total, unit="files", item=event.source)

    def _page(self, event: PageRead) -> None:  # "Reading scan.pdf: 1 of 2 files (page 3 of 40) — OCR, 93%"
        file = self.reading
        how = "" if event.method != "ocr" else "OCR" + (
            f", confidence {event.confidence:.0%}" if event.confidence is not None else "")
        self.progress("read", done=file.number if file else 0, total=file.total if file else None, unit="files",
                      item=event.source, page=event.page, pages=event.pages, message=how)

    def _loaded(self, event: FileLoaded) -> None:
        self.note(f"{event.source}: {event.sections} section(s), {event.chars:,} characters"
                  + (f", {event.pages} page(s)" if event.pages else ""))
        for note in event.notes:  # pages OCR could not read or a limit skipped: the rest of the file is kept
            self.note(f"{event.source}: {note[:1].upper()}{note[1:]}", "warning")

    def _refused(self, event: FileRefused) -> None:
        self.note(event.message, "warning")

    def _unchanged(self, event: FileUnchanged) -> None:
        self.note(f"{event.source} is already indexed with the same content.")

    def _removed(self, event: FileRemoved) -> None:
        verb = "replaced (old chunks removed)" if event.replaced else "removed"
        self.note(f"{event.source} {verb}: {event.chunks} chunk(s)")

    def _splitting(self, event: Splitting) -> None:
        self.progress("split", done=event.number, total=event.total, unit="documents", item=event.source)

    def _chunked(self, event: Chunked) -> None:
        self.note(event.preview.summary())

    def _writing(self, event: Writing) -> None:
        self.progress("index", done=event.chunks, unit="chunks")

    def _updated(self, event: IndexUpdated) -> None:
        self.final = event

    def _embedded(self, event: EmbedProgress) -> None:
        now = time.monotonic()
        if self.embed_start is None:
            self.embed_start = (now, event.done)
        t0, done0 = self.embed_start
        rate = (event.done - done0) / (now - t0) if now > t0 and event.done > done0 else None
        eta = (event.total - event.done) / rate if rate else (0.0 if event.done >= event.total else None)
        self.progress("embed", done=event.done, total=event.total, unit="chunks", rate=rate, eta_seconds=eta,
                      message=f"{event.reused:,} reused" if event.reused else "")
        if self.refit_threads and now - self.last_fit >= REFIT_THREADS_S:
            self._refit(now)

    def _refit(self, now: float) -> None:
        """Drop to the cores still free when another program started after this build did.

        The worker fits torch's threads once at its start (``engine.__main__``); a long build can outlive that
        moment, and 2 threads sharing a busy core embed many times slower than 1 (bench/RESULTS.md, issue #13).
        Half a second of sampling every ``REFIT_THREADS_S`` costs about 1%.
        """
        from engine.cpu import fit_threads_to_free_cores

        self.last_fit = now
        try:
            line = fit_threads_to_free_cores()
        except Exception:  # never a reason for a build to fail: it keeps its threads
            return
        if line:
            self.note(line)


# Which _Reporter method turns each indexing event into the job's log; events not listed are not shown.
_REPORTER_HANDLERS: dict[type, Callable[[_Reporter, Any], None]] = {
    ReadingFile: _Reporter._reading, PageRead: _Reporter._page, FileLoaded: _Reporter._loaded,
    FileRefused: _Reporter._refused,
    FileUnchanged: _Reporter._unchanged, FileRemoved: _Reporter._removed, Splitting: _Reporter._splitting,
    Chunked: _Reporter._chunked, EmbedProgress: _Reporter._embedded, Writing: _Reporter._writing,
    IndexUpdated: _Reporter._updated,
}


def collection_path(payload: dict[str, Any], root: Path) -> Path:
    """The collection a payload names, inside its owner's workspace (a name can never climb out of it)."""
    try:
        return Workspace(str(payload["workspace_owner"]), root=root).index_path(str(payload["collection"]))
    except KeyError as exc:
        raise IndexJobError(f"The index job names no {exc.args[0]}; submit it again.") from None


def _staged_files(payload: dict[str, Any]) -> list[tuple[str, str]]:
    staging = Path(str(payload.get("staging") or ""))
    files = [(str(name), str(path)) for name, path in payload.get("files") or []]
    if not files:
        raise IndexJobError("The build names no files; drop documents and press Build again.")
    if any(not Path(path).resolve().is_relative_to(staging.resolve()) for _, path in files):
        raise IndexJobError("The build's files are not in its staging folder; drop them again.")
    if not any(Path(path).is_file() for _, path in files):
        raise IndexJobError("The uploaded files of this build are no longer on the server (they were cleaned up "
                            "before it started); nothing was changed. Drop them again and press Build.")
    return files


@dataclass(frozen=True)
class ApplyNeedsReindex:
    """The applied spec cuts chunks differently: nothing was saved, the collection needs a re-index."""

    message: str = ("The chunking settings changed: the stored chunks no longer match them, so nothing was saved. "
                    "Press Re-index to rebuild the chunks (unchanged chunks keep their vectors).")


def _read(index: RagIndex, payload: dict[str, Any]) -> Generator[Any, None, list[Any]]:
    """Read the staged files within the server's limits (a document over ``max_document_chars`` is refused
    by itself, the rest of the batch is kept); yields the reading events, returns the documents."""
    documents = []
    load = index.spec.stages["load"]
    for item in read_files(_staged_files(payload), limits(), max_mb=load.max_file_mb, load=load):
        if isinstance(item, (ReadingFile, PageRead)):
            yield item
        else:
            documents.append(item)
    return documents


def action_events(index: RagIndex, payload: dict[str, Any]) -> Iterator[Any]:
    """The rag events of the payload's change, applied to ``index`` (the latest version, held under the lock)."""
    action = payload.get("action")
    spec = PipelineSpec.from_dict(payload["spec"]) if payload.get("spec") else None
    if action == "add":
        documents = yield from _read(index, payload)
        yield from index.add_documents(admit_documents(index, documents, limits()))
    elif action == "remove":
        yield from index.remove(list(payload.get("sources") or []))
    elif action == "reindex":
        yield from index.reindex(spec or index.spec)
    elif action == "apply":
        if spec is None:
            raise IndexJobError("The pipeline to apply is missing; press Apply pipeline again.")
        start = time.perf_counter()
        stale = index.set_spec(spec)
        yield IndexUpdated(len(index.files), len(index.chunks), seconds=time.perf_counter() - start,
                           version=index.version)
        if stale:
            yield ApplyNeedsReindex()
    else:
        raise IndexJobError(f"Unknown index action {action!r}; use one of {', '.join(ACTIONS)}.")


def _needed_embedder(payload: dict[str, Any], path: Path, spec: PipelineSpec | None) -> str | None:
    """The embedder the job will run (None when it embeds nothing): loaded up front, with download progress."""
    action = payload.get("action")
    if action == "reindex" and spec is not None:
        return spec.embed.model
    if action != "add":
        return None
    if (path / MANIFEST).exists():
        return str(read_manifest(path)["embedder"]["name"])
    return spec.embed.model if spec is not None else PipelineSpec().embed.model


def perform(job: JobRecord, store: JobStore, reporter: _Reporter, stop: StopSignal | None = None) -> dict[str, Any]:
    """Apply the job's change under the collection's lock; stop without saving when cancel is requested.

    Returns the result record (also written to ``result.json``). Raises :class:`_CancelledByUser` or
    :class:`_Interrupted` (SIGTERM) when asked to stop before the new version was saved.
    """
    payload = job.payload
    path = collection_path(payload, store.root)
    spec = PipelineSpec.from_dict(payload["spec"]) if payload.get("spec") else None
    embedder = _needed_embedder(payload, path, spec)
    if embedder is not None:
        get_embedder(embedder, on_progress=lambda p: reporter.log.append(p.to_event(job.id)))

    def waiting() -> None:
        reporter.progress("waiting", message=f"another change to '{path.name}' is being saved first")

    needs_reindex = False
    with RagIndex.edit(path, spec=spec, on_wait=waiting) as index:
        events = action_events(index, payload)
        try:
            for event in events:
                if isinstance(event, ApplyNeedsReindex):
                    needs_reindex = True
                    reporter.note(event.message, "warning")
                reporter(event)
                if reporter.final is None and stop is not None and stop.received:
                    raise _Interrupted
                if reporter.final is None and store.cancel_requested(job.id):
                    raise _CancelledByUser
        finally:
            events.close()  # a cancelled generator never reaches its save
    return _result(job, path, reporter.final, needs_reindex)


def _result(job: JobRecord, path: Path, final: IndexUpdated | None, needs_reindex: bool) -> dict[str, Any]:
    if final is None:
        raise IndexJobError("The index job ended without a result; try again.")
    result = {"collection": path.name, "action": job.payload.get("action"), "version": final.version,
              "files": final.files, "chunks": final.chunks, "added": final.added_files,
              "removed": final.removed_files, "embedded": final.embedded, "reused": final.reused,
              "refused": [{"file": r.source, "reason": str(r.reason), "message": r.message} for r in final.refused],
              "seconds": round(final.seconds, 3), "needs_reindex": needs_reindex}
    (job.run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def explain_failure(exc: BaseException) -> str:
    """One sentence for the person who pressed the button (their own words for known problems)."""
    if isinstance(exc, (IndexError_, IndexJobError, EmbedderMismatchError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Indexing ran out of memory. Upload fewer or smaller documents at once, or use larger chunks."
    if isinstance(exc, FileNotFoundError):  # name the file, never its folder on the server
        return f"Indexing stopped: the file '{Path(exc.filename or '?').name}' is missing; upload it again."
    if isinstance(exc, ValueError):
        return f"Indexing stopped: {exc}"
    return f"Indexing stopped with an error: {type(exc).__name__}: {exc}"


def run_index_job(job_id: str, store: JobStore | None = None) -> int:
    """Worker entry point for kind "index": do the change, record how it ended, then start the next job.

    Same contract as :func:`engine.train.run_job`: the terminal event (Done / Failed / Cancelled, or
    Interrupted after a SIGTERM) is appended before ``store.finish``; 0 means done or cancelled, 1 failed,
    75 interrupted (queued again when the server starts; its staged files are kept for that).
    """
    from services.hub import connect_downloads

    connect_downloads()
    store = store or JobStore()
    job = store.load(job_id)
    log = EventLog(job.events_path)
    reporter = _Reporter(job.id, log, refit_threads=True)
    t0, exit_code, keep_staging = time.time(), 0, False
    try:
        with StopSignal() as stop:
            if job.kind != KIND:
                raise IndexJobError(f"Job {job.id} is a {job.kind} job, not an index job.")
            perform(job, store, reporter, stop)
        log.append(Done(job.id, duration_seconds=time.time() - t0))
        store.finish(job.id, "done")
    except _CancelledByUser:
        reporter.note("Cancelled: the collection is unchanged.")
        log.append(Cancelled(job.id, resumable=False))
        store.finish(job.id, "cancelled")
    except _Interrupted:
        reason = "The server restarted or went to sleep during this build; nothing was saved, and it runs again " \
                 "when the server is back."
        log.append(Interrupted(job.id, reason=reason, resumable=True))
        store.finish(job.id, "interrupted", error=reason)
        keep_staging, exit_code = True, 75
    except BaseException as exc:
        record_failure(store, job.id, explain_failure(exc), exc)
        exit_code = 1
    finally:
        if job.payload.get("staging") and not keep_staging:
            shutil.rmtree(job.payload["staging"], ignore_errors=True)
        if exit_code != 75:  # a stopping server starts nothing new
            store.dispatch()
    return exit_code
