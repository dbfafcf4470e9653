"""A persistent, incrementally updated hybrid index (FAISS vectors + BM25 keywords), versioned on disk.

On disk (one folder per collection, under ``subdir("indexes")`` in the app)::

    handbook.lock              beside the folder: the collection's write lock (fcntl, across processes)
    handbook/manifest.json     the pointer: the current version's manifest plus ``"data": "v000007"``
    handbook/v000007/          one complete, never-modified version:
        manifest.json            embedder name/dimension/revision, pipeline spec, files with content hashes, version
        documents.jsonl          extracted text sections per file (re-chunking never needs the originals)
        chunks.jsonl             chunks in vector order (with parent-child: the small pieces that are searched)
        parents.jsonl            with parent-child: the chunks those pieces were cut from, which the model reads
        embeddings.npy           float32 (chunks × dimension), L2-normalised
        vectors.faiss            the FAISS index over those vectors
        originals/<sha256>.pdf   the uploaded PDFs themselves, by content hash, so a citation can show the rendered
                                 page (``rag.pages``); hard links to the previous version's copy when unchanged

Why versions: many visitors share one server. A writer builds the next version in a hidden folder,
renames it into place, then atomically replaces the top-level ``manifest.json`` — so a reader always
opens one consistent set of files, and a reader holding an older version keeps answering from memory.
Why a lock: every change is applied to the latest saved state, read under the collection's lock
(:meth:`RagIndex.edit`); a copy opened earlier that is saved after someone else's change is refused
(:class:`StaleIndexError`) instead of silently dropping their batch. The newest ``KEEP_VERSIONS`` are kept.
Collections in the old single-folder layout (data files beside ``manifest.json``) open as version 0
and move to the versioned layout on their first write.

Why vectors are kept besides FAISS: removing a file or switching flat/HNSW/IVF rebuilds the FAISS
index from stored vectors in well under a second, with no re-embedding; and a re-chunked document
re-uses the vector of every chunk whose text did not change (content hashes). BM25 is rebuilt
from ``chunks.jsonl`` on load (milliseconds), so it can never disagree with the chunk store.

Why originals are kept (PDFs only, up to the Load stage's file limit): the text is enough to retrieve and
re-chunk, but a reader checking a citation wants to see the page itself. A version links the previous version's
copies (same inode, no second copy on disk), so it still holds every file it needs and is pruned as one folder.
Versions written before originals were kept have no ``originals/`` folder: their citations show text only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.chunking import Chunk, preview, split_document, split_parent_child
from rag.embedders import REGISTRY, Embedder, get_embedder
from rag.events import (
    Chunked,
    EmbedProgress,
    FileLoaded,
    FileRefused,
    FileRemoved,
    FileUnchanged,
    IndexEvent,
    IndexUpdated,
    ReadingFile,
    Splitting,
    Writing,
)
from rag.ingest import LoadedDocument, Refusal, Section
from rag.pipeline import PipelineSpec
from rag.stages import IndexSettings

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
KEEP_VERSIONS = 3  # the current version and two older ones, for readers still opening them
DATA_FILES = ("documents.jsonl", "chunks.jsonl", "embeddings.npy", "vectors.faiss")
PARENTS_FILE = "parents.jsonl"  # absent in versions written before parent-child: read as no parents
ORIGINALS_DIR = "originals"  # absent in versions written before originals were kept: citations show text only
KEPT_SUFFIXES = (".pdf",)  # the kinds of file whose original is kept (the ones rag.pages can render)
_COPY_BLOCK = 1024 * 1024
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_OPEN_ATTEMPTS = 5


class IndexError_(RuntimeError):
    """Base class for index problems the UI shows as a message."""


class EmbedderMismatchError(IndexError_):
    """The index was built with another embedder; its vectors cannot be compared with new ones.

    The UI catches this and offers to re-index (:meth:`RagIndex.reindex`) with the new embedder.
    """

    def __init__(self, path: Path, index_embedder: str, requested: str):
        super().__init__(
            f"The collection '{Path(path).name}' was built with '{index_embedder}', but '{requested}' was requested. "
            f"Vectors from different embedders cannot be mixed: re-index the documents with '{requested}', or "
            f"switch the embedder back to '{index_embedder}'."
        )
        self.path = path
        self.index_embedder = index_embedder
        self.requested = requested


class IndexNotFoundError(IndexError_):
    """No index manifest in the folder."""


class CorruptIndexError(IndexError_):
    """The files on disk disagree with each other."""


class StaleIndexError(IndexError_):
    """This copy was opened before someone else saved a newer version; writing it back would undo their change."""

    def __init__(self, path: Path, mine: int, on_disk: int | None):
        now = "no longer exists" if on_disk is None else f"is now at version {on_disk}"
        super().__init__(
            f"The collection '{Path(path).name}' {now}, but this copy is version {mine}: someone else changed it "
            "meanwhile. Nothing was written; open the collection again and repeat the change."
        )
        self.mine, self.on_disk = mine, on_disk


class CollectionExistsError(IndexError_):
    """``create`` found a collection already there (someone else may have just created it)."""


class CollectionBusyError(IndexError_):
    """Another writer holds the collection's lock for longer than the caller wanted to wait."""


class ReadOnlyIndexError(IndexError_):
    """A shared, cached copy (``read_only=True``) was asked to change."""


@dataclass(frozen=True)
class FileRecord:
    source: str
    sha256: str
    chunks: int
    title: str | None = None


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync: a version folder is renamed into place only once its bytes are on disk."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    _write_file(tmp, data)
    os.replace(tmp, path)


def _copy_verified(source: Path, target: Path, sha256: str) -> bool:
    """Copy ``source`` to ``target`` (fsynced) if its bytes still hash to ``sha256``; else leave no ``target``.

    Why verify: the file was read earlier in the batch; if it changed or vanished since, the copy would not be the
    document whose text was indexed, and showing it beside that text would mislead."""
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, target.open("wb") as out:
            while block := src.read(_COPY_BLOCK):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except OSError:
        target.unlink(missing_ok=True)
        return False
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        return False
    return True


def _link_or_copy(source: Path, target: Path, sha256: str) -> bool:
    """Hard-link a previous version's kept original (no second copy on disk; pruning that version drops only its
    link); copy it where links are not possible. False when the source is gone."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        return False
    except OSError:
        return _copy_verified(source, target, sha256)
    return True


def keeps_original(source: str) -> bool:
    """Whether the index keeps the original of a file named ``source`` (only kinds that ``rag.pages`` renders)."""
    return Path(source).suffix.lower() in KEPT_SUFFIXES


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ----------------------------------------------------------------------------------------- on-disk layout


def lock_path(path: str | Path) -> Path:
    """The lock file of a collection: beside its folder, so copying the folder never copies a lock."""
    path = Path(path)
    return path.parent / f"{path.name}.lock"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The current manifest of the collection at ``path`` (one atomic read of the pointer file)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexNotFoundError(
            f"No index named '{path.name}' (no {MANIFEST}). Build one with `python -m rag index`.") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptIndexError(f"The manifest of '{path.name}' is unreadable ({exc}); rebuild the index.") from exc
    if not isinstance(manifest, dict):
        raise CorruptIndexError(f"The manifest of '{path.name}' is not a JSON object; rebuild the index.")
    return manifest


def current_version(path: str | Path) -> int | None:
    """The saved version of the collection at ``path``; None when there is none (0 = old single-folder layout)."""
    try:
        return int(read_manifest(path).get("version", 0))
    except IndexNotFoundError:
        return None


def _data_dir(path: Path, manifest: dict[str, Any]) -> Path:
    """Where a manifest's data files are: its version folder, or the folder itself in the old layout."""
    data = manifest.get("data")
    if data is None:
        return path
    if not isinstance(data, str) or not _VERSION_DIR.match(data):
        raise CorruptIndexError(f"The manifest of '{path.name}' points to {data!r}; rebuild the index.")
    return path / data


def _version_dirs(path: Path) -> dict[int, Path]:
    if not path.is_dir():
        return {}
    return {int(m.group(1)): p for p in path.iterdir() if p.is_dir() and (m := _VERSION_DIR.match(p.name))}


def original_file(path: str | Path, sha256: str) -> Path | None:
    """The kept original with content hash ``sha256`` in the collection at ``path``: the newest saved version
    holding it (any version's copy is the same bytes); None when none does (an old collection, a file too large
    to keep, not a PDF)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        return None
    for _, folder in sorted(_version_dirs(Path(path)).items(), reverse=True):
        candidate = folder / ORIGINALS_DIR / f"{sha256}.pdf"
        if candidate.is_file():
            return candidate
    return None


def _prune(path: Path, current: int) -> None:
    """Delete versions older than the newest ``KEEP_VERSIONS``, crashed writers' leftovers, and the old layout's
    files once they fall out of that window (called under the lock, so nobody is writing them)."""
    oldest_kept = current - KEEP_VERSIONS + 1
    for number, folder in _version_dirs(path).items():
        if number < oldest_kept:
            shutil.rmtree(folder, ignore_errors=True)
    for leftover in path.glob(".tmp-v*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if oldest_kept > 0:
        for name in (*DATA_FILES, *(f"{n}.tmp" for n in (*DATA_FILES, MANIFEST))):
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()


def _acquire(handle: Any, path: Path, timeout: float | None, on_wait: Callable[[], None] | None) -> None:
    """Take the lock at once if free; else say so (``on_wait``) and wait, forever or until ``timeout``."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    if on_wait is not None:
        on_wait()
    if timeout is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise CollectionBusyError(
                    f"The collection '{path.name}' is being changed by someone else right now; try again when "
                    "that change has finished.") from None
            time.sleep(0.05)


@contextlib.contextmanager
def collection_lock(path: str | Path, *, timeout: float | None = None,
                    on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the collection's exclusive write lock (fcntl ``flock`` on ``<name>.lock``), across processes and threads.

    ``timeout`` None waits as long as it takes; otherwise :class:`CollectionBusyError` after that many
    seconds. ``on_wait`` is called once when the lock is taken by someone else (e.g. to say "waiting").
    Not re-entrant: hold it once, around the whole read-modify-write (:meth:`RagIndex.edit`).
    """
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        _acquire(handle, path, timeout, on_wait)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_vector_index(vectors: np.ndarray, settings: IndexSettings, ef_search: int = 128) -> Any:
    """A FAISS inner-product index (cosine on normalised vectors) of the chosen kind over ``vectors``."""
    import faiss

    n, dim = vectors.shape if vectors.ndim == 2 else (0, 0)
    if settings.kind == "hnsw" and n:
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = ef_search
    elif settings.kind == "ivf" and n:
        # IVF needs training points per cluster (FAISS warns under 39); shrink nlist for small sets.
        nlist = settings.ivf_nlist or int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nlist, max(8, nlist // 8))
    else:
        index = faiss.IndexFlatIP(dim or 1)
    if n:
        index.add(vectors)
    return index


class Bm25:
    """BM25 (bm25s) over chunks' ``embed_text``, with a tokenizer that keeps its vocabulary for queries."""

    def __init__(self, texts: Sequence[str]):
        import bm25s
        from bm25s.tokenization import Tokenizer

        self.size = len(texts)
        self.tokenizer = Tokenizer(stopwords="en")
        self.model = bm25s.BM25()
        if texts:
            tokens = self.tokenizer.tokenize(list(texts), return_as="tuple", show_progress=False)
            self.model.index(tokens, show_progress=False)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` chunk positions and BM25 scores (only chunks sharing a word with the query)."""
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if not self.size:
            return empty
        ids = self.tokenizer.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)[0]
        known = [i for i in ids if i in self._known_ids]
        if not known:
            return empty
        scores = self.model.get_scores(known)
        k = min(k, int(np.count_nonzero(scores)))
        if k <= 0:
            return empty
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top.astype(np.int64), scores[top].astype(np.float32)

    @property
    def _known_ids(self) -> set[int]:
        cached = getattr(self, "_known", None)
        if cached is None:
            empty_id = self.tokenizer.word_to_id.get("")
            cached = {i for i in self.tokenizer.word_to_id.values() if i != empty_id}
            self._known = cached
        return cached


class RagIndex:
    """One document collection: chunks, vectors, BM25, manifest — one saved version of the folder at ``path``.

    ``version`` is the saved version this object holds (0: not saved yet, or the old layout). Read it
    with :meth:`open`; change it inside :meth:`edit`, which holds the collection's lock and starts from
    the latest saved version. An object opened outside ``edit`` may still change and save, but its save
    is refused when someone else saved in between (:class:`StaleIndexError`).
    """

    def __init__(self, path: Path, spec: PipelineSpec, embedder_name: str, files: dict[str, FileRecord],
                 documents: dict[str, list[Section]], chunks: list[Chunk], vectors: np.ndarray,
                 created: float | None = None, version: int = 0, read_only: bool = False):
        self.path = Path(path)
        self.spec = spec
        self.embedder_name = embedder_name
        self.files = files
        self.documents = documents
        self.chunks = chunks
        self.parents: list[Chunk] = []  # parent-child: what the chunks (children) were cut from, in reading order
        self.vectors = vectors
        self.created = created or time.time()
        self.version = version
        self.read_only = read_only
        self._embedder: Embedder | None = None
        self._faiss: Any = None
        self._bm25: Bm25 | None = None
        self._parents_by_id: dict[tuple[str, int], Chunk] | None = None
        self._reuse: dict[str, np.ndarray] = {}  # vectors carried over during reindex()
        self._reindexing = False
        self._holds_lock = False  # True inside edit(): saves need not (and must not) take the lock again
        self._originals_from: Path | None = None  # the saved version folder whose kept originals the next one links
        self._new_originals: dict[str, Path] = {}  # by content hash: files read in this batch, copied at the save

    @property
    def name(self) -> str:
        """The collection's name (its folder name): what messages show instead of a server path."""
        return self.path.name

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def _empty(cls, path: Path, spec: PipelineSpec | None) -> RagIndex:
        spec = spec or PipelineSpec()
        info = REGISTRY[spec.embed.model]
        return cls(path, spec, info.name, {}, {}, [], np.zeros((0, info.dimension), dtype=np.float32))

    @classmethod
    def create(cls, path: str | Path, spec: PipelineSpec | None = None, *, timeout: float | None = None) -> RagIndex:
        """A new empty collection at ``path``, saved as version 1 (refuses to overwrite an existing one)."""
        path = Path(path)
        with collection_lock(path, timeout=timeout):
            if (path / MANIFEST).exists():
                raise CollectionExistsError(f"A collection named '{path.name}' already exists; open it, or delete it "
                                            "first.")
            index = cls._empty(path, spec)
            index._commit()
        return index

    @classmethod
    def open(cls, path: str | Path, *, embedder: str | None = None, read_only: bool = False) -> RagIndex:
        """Load the current version. Passing ``embedder`` asserts which one the caller will query with.

        Raises :class:`EmbedderMismatchError` when it differs from the index's: the caller should
        offer to re-index rather than silently compare incompatible vectors. ``read_only`` marks a copy
        shared between visitors (any change to it is refused).
        """
        path = Path(path)
        for attempt in range(_OPEN_ATTEMPTS):
            manifest = read_manifest(path)
            try:
                return cls._load(path, manifest, embedder, read_only)
            except FileNotFoundError:
                # That version was pruned while we read it (several writes in a row): a newer one is current.
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise CorruptIndexError(f"The files of collection '{path.name}' are missing; rebuild it.") from None
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, path: Path, manifest: dict[str, Any], embedder: str | None, read_only: bool) -> RagIndex:
        """Read the files of the version ``manifest`` points to (FileNotFoundError when it was pruned meanwhile)."""
        try:
            spec = PipelineSpec.from_dict(manifest["pipeline"])
            emb = manifest["embedder"]
            files = {f["source"]: FileRecord(**f) for f in manifest["files"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndexError(
                f"The manifest of collection '{path.name}' is unreadable ({exc}); rebuild the index.") from exc
        if embedder is not None and embedder != emb["name"]:
            raise EmbedderMismatchError(path, emb["name"], embedder)
        if emb["name"] not in REGISTRY:
            raise EmbedderMismatchError(path, emb["name"], spec.embed.model)
        folder = _data_dir(path, manifest)
        docs = {row["source"]: [Section.from_dict(s) for s in row["sections"]]
                for row in _read_jsonl(folder / "documents.jsonl")}
        chunks = [Chunk.from_dict(row) for row in _read_jsonl(folder / "chunks.jsonl")]
        parents = ([Chunk.from_dict(row) for row in _read_jsonl(folder / PARENTS_FILE)]
                   if (folder / PARENTS_FILE).exists() else [])
        vectors = (np.load(folder / "embeddings.npy") if chunks
                   else np.zeros((0, emb["dimension"]), dtype=np.float32))
        if len(vectors) != len(chunks) or (chunks and vectors.shape[1] != emb["dimension"]):
            raise CorruptIndexError(f"Collection '{path.name}': {len(chunks)} chunks but {len(vectors)} vectors; "
                                    "rebuild the index.")
        index = cls(path, spec, emb["name"], files, docs, chunks, vectors.astype(np.float32), manifest.get("created"),
                    version=int(manifest.get("version", 0)), read_only=read_only)
        index.parents = parents
        index._faiss = index._read_faiss(folder)
        index._originals_from = folder
        return index

    @classmethod
    def open_or_create(cls, path: str | Path, spec: PipelineSpec | None = None) -> RagIndex:
        path = Path(path)
        with collection_lock(path):
            if (path / MANIFEST).exists():
                return cls.open(path, embedder=spec.embed.model if spec else None)
            index = cls._empty(path, spec)
            index._commit()
            return index

    @classmethod
    @contextlib.contextmanager
    def edit(cls, path: str | Path, *, spec: PipelineSpec | None = None, timeout: float | None = None,
             on_wait: Callable[[], None] | None = None) -> Iterator[RagIndex]:
        """Hold the collection's lock and yield its latest saved version (created with ``spec`` when missing).

        The one safe way to change a shared collection: every change made inside is applied to what is
        on disk now, and each save becomes the next version. Leaving without saving (an exception, a
        cancelled build) leaves the collection exactly as it was.
        """
        path = Path(path)
        with collection_lock(path, timeout=timeout, on_wait=on_wait):
            if (path / MANIFEST).exists():
                index = cls.open(path)
            else:
                index = cls._empty(path, spec)
                index._holds_lock = True
                index._commit()
            index._holds_lock = True
            try:
                yield index
            finally:
                index._holds_lock = False

    def manifest(self) -> dict[str, Any]:
        info = REGISTRY[self.embedder_name]
        return {
            "manifest_version": MANIFEST_VERSION,
            "version": self.version,
            "created": self.created,
            "updated": time.time(),
            "embedder": {"name": info.name, "dimension": info.dimension, "revision": info.revision,
                         "hub_id": info.hub_id},
            "pipeline": self.spec.to_dict(),
            "files": [vars(r) for r in self.files.values()],
            "counts": {"files": len(self.files), "chunks": len(self.chunks)},
        }

    def save(self) -> None:
        """Write this state as the collection's next version and make it current in one atomic step.

        Takes the lock unless inside :meth:`edit`. Refused (:class:`StaleIndexError`) when the saved
        version is no longer the one this object started from: writing would undo someone else's change.
        """
        self._check_writable()
        if self._holds_lock:
            self._commit()
            return
        with collection_lock(self.path):
            self._commit()

    def _commit(self) -> None:
        """Under the lock: write ``v<N+1>/`` in a hidden folder, rename it into place, swap the pointer, prune."""
        on_disk = current_version(self.path)
        if (on_disk or 0) != self.version:
            raise StaleIndexError(self.path, self.version, on_disk)
        self.path.mkdir(parents=True, exist_ok=True)
        new = max(self.version, *_version_dirs(self.path), 0) + 1
        tmp = self.path / f".tmp-v{new:06d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = self._write_version(tmp, new)
            final = self.path / f"v{new:06d}"
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The pointer goes last: until it is replaced, every reader opens the previous complete version.
        _write_atomic(self.path / MANIFEST, json.dumps({**manifest, "data": final.name}, indent=2,
                                                       ensure_ascii=False).encode())
        self.version = new
        self._originals_from, self._new_originals = final, {}
        _prune(self.path, new)

    def _write_version(self, folder: Path, version: int) -> dict[str, Any]:
        import faiss

        _write_file(folder / "documents.jsonl", _jsonl(
            {"source": s, "sections": [sec.to_dict() for sec in secs]} for s, secs in self.documents.items()))
        _write_file(folder / "chunks.jsonl", _jsonl(c.to_dict() for c in self.chunks))
        _write_file(folder / PARENTS_FILE, _jsonl(p.to_dict() for p in self.parents))
        with (folder / "embeddings.npy").open("wb") as handle:
            np.save(handle, self.vectors)
            handle.flush()
            os.fsync(handle.fileno())
        faiss.write_index(self.faiss, str(folder / "vectors.faiss"))
        self._write_originals(folder / ORIGINALS_DIR)
        manifest = {**self.manifest(), "version": version}
        _write_file(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        return manifest

    def _write_originals(self, target: Path) -> None:
        """Put the original of every kept file of this version in ``target``, once per content hash: linked from
        the version this copy was opened from, else copied from the file a new document was read from. A file
        with neither (an old collection, a batch of bytes without a file) simply has none."""
        wanted = sorted({r.sha256 for r in self.files.values() if keeps_original(r.source)})
        for sha in wanted:
            previous = self._originals_from / ORIGINALS_DIR / f"{sha}.pdf" if self._originals_from else None
            new = self._new_originals.get(sha)
            if previous is None and new is None:
                continue
            target.mkdir(exist_ok=True)
            dest = target / f"{sha}.pdf"
            if previous is not None and _link_or_copy(previous, dest, sha):
                continue
            if new is not None:
                _copy_verified(new, dest, sha)

    def _keep_original(self, doc: LoadedDocument) -> None:
        """Note a new document's file for the next save, when it is a kind rendered for citations and within the
        Load stage's file limit (the build also refuses larger uploads before they are read)."""
        if doc.original is None or not keeps_original(doc.source):
            return
        limit_mb = self.spec.stages["load"].max_file_mb
        try:
            size = Path(doc.original).stat().st_size
        except OSError:
            return
        if not limit_mb or size <= limit_mb * 1024 * 1024:
            self._new_originals[doc.sha256] = Path(doc.original)

    def _read_faiss(self, folder: Path) -> Any:
        import faiss

        try:
            index = faiss.read_index(str(folder / "vectors.faiss"))
        except RuntimeError:
            return None  # rebuilt from stored vectors on first use
        if index.ntotal != len(self.chunks):
            return None
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = max(128, self.spec.retrieve.candidates)
        return index

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyIndexError(f"This copy of collection '{self.name}' is shared read-only; change the "
                                     "collection through RagIndex.edit (the RAG tab's buttons do).")

    # ------------------------------------------------------------------ components
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self.embedder_name)
        return self._embedder

    @property
    def faiss(self) -> Any:
        if self._faiss is None:
            self._faiss = build_vector_index(self.vectors, self.spec.stages["index"],
                                             ef_search=max(128, self.spec.retrieve.candidates))
        return self._faiss

    @property
    def bm25(self) -> Bm25:
        if self._bm25 is None:
            self._bm25 = Bm25([c.embed_text for c in self.chunks])
        return self._bm25

    def _invalidate(self) -> None:
        self._faiss = None
        self._bm25 = None
        self._parents_by_id = None

    def parent_of(self, chunk: Chunk) -> Chunk | None:
        """The parent a child chunk was cut from (parent-child retrieval); None for an ordinary chunk."""
        if chunk.parent is None:
            return None
        if self._parents_by_id is None:
            self._parents_by_id = {(p.source, p.ordinal): p for p in self.parents}
        return self._parents_by_id.get((chunk.source, chunk.parent))

    def dense_search(self, query_vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.chunks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        import faiss

        # One query: a single OpenMP thread. Measured at 12k chunks on 2 shared cores: p50 ~1-2 ms on
        # one thread vs ~15 ms on two (thread start-up and spinning cost more than the scan).
        # omp_set_num_threads applies to the calling thread only, so indexing elsewhere keeps its threads.
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.faiss.search(query_vector.reshape(1, -1).astype(np.float32),
                                            min(k, len(self.chunks)))
        finally:
            faiss.omp_set_num_threads(before)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep]

    # ------------------------------------------------------------------ changes
    def set_spec(self, spec: PipelineSpec) -> bool:
        """Adopt a new pipeline spec and save it; returns False. Returns True, adopting nothing, when the
        spec changes how chunks are cut: the caller must call :meth:`reindex` with it, so the manifest
        never describes chunks the index does not hold. An identical spec saves nothing.

        Raises :class:`EmbedderMismatchError` if the spec names another embedder.
        """
        self._check_writable()
        if spec.embed.model != self.embedder_name:
            raise EmbedderMismatchError(self.path, self.embedder_name, spec.embed.model)
        if spec.index_fingerprint() != self.spec.index_fingerprint():
            return True
        if spec == self.spec:
            return False
        before = self.spec
        self.spec = spec
        if spec.stages["index"] != before.stages["index"]:
            self._faiss = None
        try:
            self.save()
        except BaseException:
            self.spec, self._faiss = before, None  # a refused save leaves this copy as it was
            raise
        return False

    def add_files(self, paths: Iterable[str | Path | tuple[str, str | Path]], *,
                  pdf_password: str = "") -> Iterator[IndexEvent]:
        """Index files (paths, or ``(display_name, path)`` pairs for uploads with temporary names).

        ``pdf_password`` opens encrypted PDFs of this batch only; it is never stored with the collection.

        Unchanged files are skipped, changed files replace their old chunks, unusable files are
        refused with a message; the rest of the batch is indexed either way. A :class:`ReadingFile`
        event comes before each file is read, and a :class:`PageRead` after each page of a PDF or image
        (text layer or OCR), so a long read shows where it is.
        """
        from rag.events import PageRead
        from rag.reading import load_file_with_pages

        self._check_writable()
        load = self.spec.stages["load"]
        items = [item if isinstance(item, tuple) else (Path(item).name, item) for item in paths]
        loaded: list[LoadedDocument | Refusal] = []
        for number, (name, path) in enumerate(items, start=1):
            yield ReadingFile(str(name), number, len(items))
            for item in load_file_with_pages(path, name=str(name), pdf_password=pdf_password,
                                             max_mb=load.max_file_mb, load=load):
                if isinstance(item, PageRead):
                    yield item
                else:
                    loaded.append(item)
        yield from self.add_documents(loaded)

    def add_documents(self, items: Iterable[LoadedDocument | Refusal],
                      titles: dict[str, str] | None = None) -> Iterator[IndexEvent]:
        """Core of incremental indexing; ``titles`` optionally names documents (e.g. a corpus's titles).

        Nothing is saved until every chunk has its vector, so stopping the generator early (a
        cancelled build) leaves the saved collection as it was. A batch that changes nothing saves
        nothing (the version stays).
        """
        self._check_writable()
        start = time.perf_counter()
        new_docs, refused, carried = yield from self._sort_documents(items)
        new_chunks, added = yield from self._split(new_docs, titles or {})
        if new_docs:
            yield Chunked(preview(new_chunks))
        embedded, reused = 0, 0
        if new_chunks:
            for event in self._embed(new_chunks, carried):
                embedded, reused = event.done - event.reused, event.reused
                yield event
        self._invalidate()
        if new_docs or self._reindexing:  # a re-index saves its new spec even with no documents
            yield Writing(len(self.chunks))
            self.save()
        yield IndexUpdated(len(self.files), len(self.chunks), added, [], refused, embedded, reused,
                           time.perf_counter() - start, self.version)

    def _sort_documents(self, items: Iterable[LoadedDocument | Refusal]) -> Generator[
            IndexEvent, None, tuple[dict[str, LoadedDocument], list[FileRefused], dict[str, np.ndarray]]]:
        """Refusals, unchanged files and replacements (their old chunks dropped, their vectors kept for reuse)."""
        refused: list[FileRefused] = []
        new_docs: dict[str, LoadedDocument] = {}  # by source: a name given twice in one batch counts once
        carried: dict[str, np.ndarray] = {}  # vectors of replaced files: an edited file re-embeds only what changed
        for item in items:
            if isinstance(item, Refusal):
                event = FileRefused(item.source, item.reason, item.message)
                refused.append(event)
                yield event
                continue
            if item.source in new_docs:
                new_docs.pop(item.source)  # the later copy wins, as if the two were added one after the other
            old = self.files.get(item.source)
            if old is not None and old.sha256 == item.sha256:
                yield FileUnchanged(item.source)
                continue
            if old is not None:
                carried.update(self._vector_cache(item.source))
                yield FileRemoved(item.source, self._drop_source(item.source), replaced=True)
            pages = max((s.page for s in item.sections if s.page is not None), default=None)
            yield FileLoaded(item.source, len(item.sections), item.n_chars, item.encoding, pages, tuple(item.notes))
            new_docs[item.source] = item
        return new_docs, refused, carried

    def _split(self, new_docs: dict[str, LoadedDocument],
               titles: dict[str, str]) -> Generator[IndexEvent, None, tuple[list[Chunk], list[str]]]:
        new_chunks: list[Chunk] = []
        added: list[str] = []
        for number, doc in enumerate(new_docs.values(), start=1):
            yield Splitting(doc.source, number, len(new_docs))
            title = titles.get(doc.source) or doc.title
            chunks = self._split_one(doc, title)
            self.documents[doc.source] = doc.sections
            self.files[doc.source] = FileRecord(doc.source, doc.sha256, len(chunks), title)
            self._keep_original(doc)
            new_chunks.extend(chunks)
            added.append(doc.source)
        return new_chunks, added

    def remove(self, sources: Iterable[str]) -> Iterator[IndexEvent]:
        """Remove files and all their chunks (saves a new version only when something was removed)."""
        self._check_writable()
        start = time.perf_counter()
        removed = []
        for source in sources:
            if source in self.files:
                yield FileRemoved(source, self._drop_source(source))
                removed.append(source)
        self._invalidate()
        if removed:
            self.save()
        yield IndexUpdated(len(self.files), len(self.chunks), [], removed, [], 0, 0, time.perf_counter() - start,
                           self.version)

    def reindex(self, spec: PipelineSpec | None = None) -> Iterator[IndexEvent]:
        """Re-chunk and re-embed every stored document under ``spec`` (e.g. a new embedder or splitter).

        Uses the extracted sections kept in the index, so the original files are not needed.
        Vectors are reused for unchanged chunks when the embedder stays the same.
        """
        self._check_writable()
        spec = spec or self.spec
        docs = [LoadedDocument(src, rec.sha256, self.documents[src]) for src, rec in self.files.items()]
        titles = {src: rec.title for src, rec in self.files.items() if rec.title}
        keep_vectors = spec.embed.model == self.embedder_name
        cache = self._vector_cache() if keep_vectors else {}
        self.spec, self.embedder_name = spec, spec.embed.model
        self._embedder = None
        self.files, self.documents, self.chunks, self.parents = {}, {}, [], []
        self.vectors = np.zeros((0, REGISTRY[spec.embed.model].dimension), dtype=np.float32)
        self._reuse, self._reindexing = cache, True
        try:
            yield from self.add_documents(docs, titles)
        finally:
            self._reuse, self._reindexing = {}, False

    # ------------------------------------------------------------------ internals
    def _split_one(self, doc: LoadedDocument, title: str | None) -> list[Chunk]:
        """The chunks to embed for one document; with parent-child, its parents are kept beside them."""
        children = self.spec.child_split()
        if children is None:
            return split_document(doc, self.spec.split, tokenizer=self._tokenizer_if_needed(), title=title)
        chunks, parents = split_parent_child(doc, self.spec.split, children, tokenizer=self._tokenizer_if_needed(),
                                             title=title)
        self.parents.extend(parents)
        return chunks

    def _tokenizer_if_needed(self) -> Any | None:
        return self.embedder.tokenizer if self.spec.split.method == "token" else None

    def _vector_cache(self, source: str | None = None) -> dict[str, np.ndarray]:
        return {c.content_hash: self.vectors[i] for i, c in enumerate(self.chunks)
                if source is None or c.source == source}

    def _drop_source(self, source: str) -> int:
        keep = [i for i, c in enumerate(self.chunks) if c.source != source]
        dropped = len(self.chunks) - len(keep)
        self.chunks = [self.chunks[i] for i in keep]
        self.parents = [p for p in self.parents if p.source != source]
        self.vectors = self.vectors[keep] if keep else self.vectors[:0]
        self.files.pop(source, None)
        self.documents.pop(source, None)
        self._invalidate()
        return dropped

    def _embed(self, chunks: list[Chunk], carried: dict[str, np.ndarray] | None = None) -> Iterator[EmbedProgress]:
        """Embed new chunks in batches (yielding progress), reusing vectors of identical content."""
        cache = {**self._vector_cache(), **self._reuse, **(carried or {})}
        todo = [i for i, c in enumerate(chunks) if c.content_hash not in cache]
        reused = len(chunks) - len(todo)
        out = np.zeros((len(chunks), REGISTRY[self.embedder_name].dimension), dtype=np.float32)
        for i, c in enumerate(chunks):
            if c.content_hash in cache:
                out[i] = cache[c.content_hash]
        yield EmbedProgress(reused, len(chunks), reused)
        batch = self.spec.embed.batch_size
        # One model batch per step: progress, cancel and shutdown checks come every few seconds even on a CPU.
        step = batch
        for lo in range(0, len(todo), step):
            ids = todo[lo:lo + step]
            out[ids] = self.embedder.embed_passages([chunks[i].embed_text for i in ids], batch_size=batch)
            yield EmbedProgress(reused + lo + len(ids), len(chunks), reused)
        self.chunks.extend(chunks)
        self.vectors = np.concatenate([self.vectors, out]) if len(self.vectors) else out
