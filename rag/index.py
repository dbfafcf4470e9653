"""A persistent, incrementally updated hybrid index (FAISS vectors + BM25 keywords).

On disk (one folder per index, under ``subdir("indexes")`` in the app)::

    manifest.json     embedder name/dimension/revision, pipeline spec, files with content hashes
    documents.jsonl   extracted text sections per file (re-chunking never needs the originals)
    chunks.jsonl      chunks in vector order
    embeddings.npy    float32 (chunks × dimension), L2-normalised
    vectors.faiss     the FAISS index over those vectors

Why vectors are kept besides FAISS: removing a file or switching flat/HNSW/IVF rebuilds the FAISS
index from stored vectors in well under a second, with no re-embedding; and a re-chunked document
re-uses the vector of every chunk whose text did not change (content hashes). BM25 is rebuilt
from ``chunks.jsonl`` on load (milliseconds), so it can never disagree with the chunk store.
Each file is written to a temporary name and renamed, so a crash never leaves a half-written index.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.chunking import Chunk, preview, split_document
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
)
from rag.ingest import LoadedDocument, Refusal, Section, load_file
from rag.pipeline import PipelineSpec
from rag.stages import IndexSettings

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class IndexError_(RuntimeError):
    """Base class for index problems the UI shows as a message."""


class EmbedderMismatchError(IndexError_):
    """The index was built with another embedder; its vectors cannot be compared with new ones.

    The UI catches this and offers to re-index (:meth:`RagIndex.reindex`) with the new embedder.
    """

    def __init__(self, path: Path, index_embedder: str, requested: str):
        super().__init__(
            f"The index at {path} was built with '{index_embedder}', but '{requested}' was requested. Vectors "
            f"from different embedders cannot be mixed: re-index the documents with '{requested}', or switch "
            f"the embedder back to '{index_embedder}'."
        )
        self.path = path
        self.index_embedder = index_embedder
        self.requested = requested


class IndexNotFoundError(IndexError_):
    """No index manifest in the folder."""


class CorruptIndexError(IndexError_):
    """The files on disk disagree with each other."""


@dataclass(frozen=True)
class FileRecord:
    source: str
    sha256: str
    chunks: int
    title: str | None = None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


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
    """One document collection: chunks, vectors, BM25, manifest — loaded from and saved to ``path``."""

    def __init__(self, path: Path, spec: PipelineSpec, embedder_name: str, files: dict[str, FileRecord],
                 documents: dict[str, list[Section]], chunks: list[Chunk], vectors: np.ndarray,
                 created: float | None = None):
        self.path = Path(path)
        self.spec = spec
        self.embedder_name = embedder_name
        self.files = files
        self.documents = documents
        self.chunks = chunks
        self.vectors = vectors
        self.created = created or time.time()
        self._embedder: Embedder | None = None
        self._faiss: Any = None
        self._bm25: Bm25 | None = None
        self._reuse: dict[str, np.ndarray] = {}  # vectors carried over during reindex()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | Path, spec: PipelineSpec | None = None) -> RagIndex:
        """A new empty index at ``path`` (refuses to overwrite an existing one)."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise IndexError_(f"An index already exists at {path}; open it, or delete it first.")
        spec = spec or PipelineSpec()
        info = REGISTRY[spec.embed.model]
        index = cls(path, spec, info.name, {}, {}, [], np.zeros((0, info.dimension), dtype=np.float32))
        index.save()
        return index

    @classmethod
    def open(cls, path: str | Path, *, embedder: str | None = None) -> RagIndex:
        """Load an index. Passing ``embedder`` asserts which one the caller will query with.

        Raises :class:`EmbedderMismatchError` when it differs from the index's: the caller should
        offer to re-index rather than silently compare incompatible vectors.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise IndexNotFoundError(f"No index at {path} (no {MANIFEST}). Build one with `python -m rag index`.")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            spec = PipelineSpec.from_dict(manifest["pipeline"])
            emb = manifest["embedder"]
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise CorruptIndexError(
                f"The manifest at {manifest_path} is unreadable ({exc}); rebuild the index."
            ) from exc
        if embedder is not None and embedder != emb["name"]:
            raise EmbedderMismatchError(path, emb["name"], embedder)
        if emb["name"] not in REGISTRY:
            raise EmbedderMismatchError(path, emb["name"], spec.embed.model)
        files = {f["source"]: FileRecord(**f) for f in manifest["files"]}
        docs = {row["source"]: [Section.from_dict(s) for s in row["sections"]]
                for row in _read_jsonl(path / "documents.jsonl")}
        chunks = [Chunk.from_dict(row) for row in _read_jsonl(path / "chunks.jsonl")]
        vectors = np.load(path / "embeddings.npy") if chunks else np.zeros((0, emb["dimension"]), dtype=np.float32)
        if len(vectors) != len(chunks) or (chunks and vectors.shape[1] != emb["dimension"]):
            raise CorruptIndexError(f"{path}: {len(chunks)} chunks but {len(vectors)} vectors; rebuild the index.")
        index = cls(path, spec, emb["name"], files, docs, chunks, vectors.astype(np.float32), manifest.get("created"))
        index._faiss = index._read_faiss()
        return index

    @classmethod
    def open_or_create(cls, path: str | Path, spec: PipelineSpec | None = None) -> RagIndex:
        path = Path(path)
        if (path / MANIFEST).exists():
            return cls.open(path, embedder=spec.embed.model if spec else None)
        return cls.create(path, spec)

    def manifest(self) -> dict[str, Any]:
        info = REGISTRY[self.embedder_name]
        return {
            "manifest_version": MANIFEST_VERSION,
            "created": self.created,
            "updated": time.time(),
            "embedder": {"name": info.name, "dimension": info.dimension, "revision": info.revision,
                         "hub_id": info.hub_id},
            "pipeline": self.spec.to_dict(),
            "files": [vars(r) for r in self.files.values()],
            "counts": {"files": len(self.files), "chunks": len(self.chunks)},
        }

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / "documents.jsonl", _jsonl(
            {"source": s, "sections": [sec.to_dict() for sec in secs]} for s, secs in self.documents.items()))
        _write_atomic(self.path / "chunks.jsonl", _jsonl(c.to_dict() for c in self.chunks))
        tmp = self.path / "embeddings.npy.tmp"
        with tmp.open("wb") as handle:
            np.save(handle, self.vectors)
        os.replace(tmp, self.path / "embeddings.npy")
        self._write_faiss()
        # The manifest goes last: it is what marks the folder as a complete index.
        _write_atomic(self.path / MANIFEST, json.dumps(self.manifest(), indent=2, ensure_ascii=False).encode())

    def _write_faiss(self) -> None:
        import faiss

        tmp = self.path / "vectors.faiss.tmp"
        faiss.write_index(self.faiss, str(tmp))
        os.replace(tmp, self.path / "vectors.faiss")

    def _read_faiss(self) -> Any:
        import faiss

        try:
            index = faiss.read_index(str(self.path / "vectors.faiss"))
        except RuntimeError:
            return None  # rebuilt from stored vectors on first use
        if index.ntotal != len(self.chunks):
            return None
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = max(128, self.spec.retrieve.candidates)
        return index

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
        never describes chunks the index does not hold.

        Raises :class:`EmbedderMismatchError` if the spec names another embedder.
        """
        if spec.embed.model != self.embedder_name:
            raise EmbedderMismatchError(self.path, self.embedder_name, spec.embed.model)
        if spec.index_fingerprint() != self.spec.index_fingerprint():
            return True
        if spec.stages["index"] != self.spec.stages["index"]:
            self._faiss = None
        self.spec = spec
        self.save()
        return False

    def add_files(self, paths: Iterable[str | Path | tuple[str, str | Path]]) -> Iterator[IndexEvent]:
        """Index files (paths, or ``(display_name, path)`` pairs for uploads with temporary names).

        Unchanged files are skipped, changed files replace their old chunks, unusable files are
        refused with a message; the rest of the batch is indexed either way.
        """
        load = self.spec.stages["load"]
        loaded: list[LoadedDocument | Refusal] = []
        for item in paths:
            name, path = (item if isinstance(item, tuple) else (Path(item).name, item))
            loaded.append(load_file(path, name=str(name), pdf_password=load.pdf_password, max_mb=load.max_file_mb))
        yield from self.add_documents(loaded)

    def add_documents(self, items: Iterable[LoadedDocument | Refusal],
                      titles: dict[str, str] | None = None) -> Iterator[IndexEvent]:
        """Core of incremental indexing; ``titles`` optionally names documents (e.g. a corpus's titles)."""
        start = time.perf_counter()
        refused: list[FileRefused] = []
        added: list[str] = []
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
            yield FileLoaded(item.source, len(item.sections), item.n_chars, item.encoding)
            new_docs[item.source] = item
        titles = titles or {}
        new_chunks: list[Chunk] = []
        for doc in new_docs.values():
            title = titles.get(doc.source) or doc.title
            chunks = split_document(doc, self.spec.split, tokenizer=self._tokenizer_if_needed(), title=title)
            self.documents[doc.source] = doc.sections
            self.files[doc.source] = FileRecord(doc.source, doc.sha256, len(chunks), title)
            new_chunks.extend(chunks)
            added.append(doc.source)
        if new_docs:
            yield Chunked(preview(new_chunks))
        embedded, reused = 0, 0
        if new_chunks:
            for event in self._embed(new_chunks, carried):
                embedded, reused = event.done - event.reused, event.reused
                yield event
        self._invalidate()
        self.save()
        yield IndexUpdated(len(self.files), len(self.chunks), added, [], refused, embedded, reused,
                           time.perf_counter() - start)

    def remove(self, sources: Iterable[str]) -> Iterator[IndexEvent]:
        """Remove files and all their chunks."""
        start = time.perf_counter()
        removed = []
        for source in sources:
            if source in self.files:
                yield FileRemoved(source, self._drop_source(source))
                removed.append(source)
        self._invalidate()
        self.save()
        yield IndexUpdated(len(self.files), len(self.chunks), [], removed, [], 0, 0, time.perf_counter() - start)

    def reindex(self, spec: PipelineSpec | None = None) -> Iterator[IndexEvent]:
        """Re-chunk and re-embed every stored document under ``spec`` (e.g. a new embedder or splitter).

        Uses the extracted sections kept in the index, so the original files are not needed.
        Vectors are reused for unchanged chunks when the embedder stays the same.
        """
        spec = spec or self.spec
        docs = [LoadedDocument(src, rec.sha256, self.documents[src]) for src, rec in self.files.items()]
        titles = {src: rec.title for src, rec in self.files.items() if rec.title}
        keep_vectors = spec.embed.model == self.embedder_name
        cache = self._vector_cache() if keep_vectors else {}
        self.spec, self.embedder_name = spec, spec.embed.model
        self._embedder = None
        self.files, self.documents, self.chunks = {}, {}, []
        self.vectors = np.zeros((0, REGISTRY[spec.embed.model].dimension), dtype=np.float32)
        self._reuse = cache
        try:
            yield from self.add_documents(docs, titles)
        finally:
            self._reuse = {}

    # ------------------------------------------------------------------ internals
    def _tokenizer_if_needed(self) -> Any | None:
        return self.embedder.tokenizer if self.spec.split.method == "token" else None

    def _vector_cache(self, source: str | None = None) -> dict[str, np.ndarray]:
        return {c.content_hash: self.vectors[i] for i, c in enumerate(self.chunks)
                if source is None or c.source == source}

    def _drop_source(self, source: str) -> int:
        keep = [i for i, c in enumerate(self.chunks) if c.source != source]
        dropped = len(self.chunks) - len(keep)
        self.chunks = [self.chunks[i] for i in keep]
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
        step = max(batch, 256)  # progress granularity; the model still batches by ``batch``
        for lo in range(0, len(todo), step):
            ids = todo[lo:lo + step]
            out[ids] = self.embedder.embed_passages([chunks[i].embed_text for i in ids], batch_size=batch)
            yield EmbedProgress(reused + lo + len(ids), len(chunks), reused)
        self.chunks.extend(chunks)
        self.vectors = np.concatenate([self.vectors, out]) if len(self.vectors) else out
