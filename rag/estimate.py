"""Limits and estimates around an index build: how long it will take, and what a build may take in.

Why: on a shared server one visitor's 2,000-page upload must not take the embedder for an hour unasked,
nor grow a collection without bound. Two moments:

* before a build is queued (in the request): :func:`plan_build` estimates characters → chunks → seconds
  at this server's measured embedding rate, from the files' sizes and page counts only (reading them is
  the job's work), so the UI can ask "this will take about N minutes — go on?";
* while the build job reads the files: :func:`read_files` refuses a document over the size limits and
  :func:`admit_documents` one that would take the collection past its chunk limit — *per file*, the rest
  of the batch is kept.

The limits come in as any object with ``check(name, value, what, fix)`` that raises ``ValueError`` with a
message naming the limit (the app passes ``engine.limits.limits()``); this package does not import the
engine's limits, so the numbers and their labels stay defined once, there.
"""

from __future__ import annotations

import math
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rag.chunking import split_document
from rag.events import PageRead, ReadingFile
from rag.ingest import LoadedDocument, Refusal, RefusalReason, file_sha256
from rag.pipeline import PipelineSpec
from rag.reading import load_file_with_pages

if TYPE_CHECKING:
    from rag.index import RagIndex

MB = 1024 * 1024
#: Characters per token assumed when the token splitter's chunk count is estimated (counting exactly
#: would tokenise every document twice; the other splitters are counted exactly, they are fast).
CHARS_PER_TOKEN = 4
#: Characters a PDF page yields, for estimates (a page of running text holds 2,000-3,000).
CHARS_PER_PDF_PAGE = 2500
#: Chunks per second no server embeds slower than (a busy CPU with a large model): builds that would be
#: short even at this rate need no measurement.
SLOWEST_RATE = 1.0
#: Chunks embedded to measure this server's rate (once per process and embedder).
RATE_SAMPLE = 8
_RATES: dict[str, float] = {}


class LimitChecker(Protocol):
    """``engine.limits.Limits`` as this package uses it (``max_upload_mb``, ``max_document_chars``,
    ``max_chunks_per_collection``)."""

    def check(self, name: str, value: float, what: str, fix: str) -> None:
        """Raise ``ValueError`` with a message naming the limit when ``value`` is over limit ``name``."""


def _over(limits: LimitChecker, name: str, value: float, what: str, fix: str) -> str:
    """The limit's refusal message, or "" when ``value`` is within it."""
    try:
        limits.check(name, value, what, fix)
    except ValueError as exc:
        return str(exc)
    return ""


def read_files(items: Sequence[tuple[str, str | Path]], limits: LimitChecker, *, pdf_password: str = "",
               max_mb: float = 0, load: Any = None) -> Iterator[ReadingFile | PageRead | LoadedDocument | Refusal]:
    """Read ``(name, path)`` uploads one by one (a :class:`ReadingFile` before each, a :class:`PageRead` after
    each page of a PDF or image as it is read), within the limits; ``load`` is the Load stage's settings (OCR).

    A file over the upload size is refused before it is read; a document with more text than
    ``max_document_chars`` is refused after. ``pdf_password`` opens encrypted PDFs of this batch only.
    """
    for number, (name, path) in enumerate(items, start=1):
        yield ReadingFile(name, number, len(items))
        try:
            size_mb = round(Path(path).stat().st_size / MB, 1)
        except OSError:
            size_mb = 0.0  # load_file reports the unreadable file itself
        refusal = _over(limits, "max_upload_mb", size_mb, f"The size of '{name}' in MB",
                        "Upload a smaller file, or split it into several.")
        if refusal:
            yield Refusal(name, RefusalReason.TOO_LARGE, refusal)
            continue
        doc: Any = None
        for doc in load_file_with_pages(path, name=name, pdf_password=pdf_password, max_mb=max_mb, load=load):
            if isinstance(doc, PageRead):
                yield doc
        if isinstance(doc, LoadedDocument):
            refusal = _over(limits, "max_document_chars", doc.n_chars, f"The text of '{name}' in characters",
                            "Split it into smaller files, or upload only the part you need.")
            doc = Refusal(name, RefusalReason.TOO_LARGE, refusal) if refusal else doc
        yield doc


def count_chunks(doc: LoadedDocument, spec: PipelineSpec) -> int:
    """Chunks ``doc`` will be cut into: exact for the character splitters, estimated for the token one."""
    split = spec.split
    if split.method == "token":
        step = max(1, split.chunk_size - split.chunk_overlap) * CHARS_PER_TOKEN
        return sum(max(1, math.ceil(len(s.text) / step)) for s in doc.sections if s.text.strip())
    return len(split_document(doc, split, children=spec.child_split()))


def _is_new(doc: LoadedDocument | Refusal, index: RagIndex | None) -> bool:
    """A document the build will embed (not a refusal, not a file the collection holds unchanged)."""
    if not isinstance(doc, LoadedDocument):
        return False
    old = index.files.get(doc.source) if index is not None else None
    return old is None or old.sha256 != doc.sha256


def admit_documents(index: RagIndex, documents: Iterable[LoadedDocument | Refusal],
                    limits: LimitChecker) -> list[LoadedDocument | Refusal]:
    """Keep documents in order while the collection stays within ``max_chunks_per_collection``.

    A document that would take the collection past the limit becomes a per-file refusal naming it; the
    ones after it may still fit. A replaced file frees its old chunks first.
    """
    total = len(index.chunks)
    out: list[LoadedDocument | Refusal] = []
    for doc in documents:
        if not _is_new(doc, index):
            out.append(doc)
            continue
        old = index.files.get(doc.source)
        n = count_chunks(doc, index.spec)
        after = total - (old.chunks if old else 0) + n
        refusal = _over(limits, "max_chunks_per_collection", after,
                        f"With '{doc.source}' ({n:,} chunks) the number of chunks in '{index.path.name}'",
                        "Put these files in a new collection, or remove files this one no longer needs.")
        if refusal:
            out.append(Refusal(doc.source, RefusalReason.TOO_LARGE, refusal))
            continue
        total = after
        out.append(doc)
    return out


def embedding_rate(model: str, chunk_chars: int) -> float:
    """Chunks per second this process embeds with ``model``: measured once on a few chunk-sized texts, then cached.

    Measured here rather than written down because it depends on the machine (a GPU Space embeds ~50× a
    laptop CPU) and on how busy it is. The embedder is the one search uses, so loading it is not extra work.
    """
    if model in _RATES:
        return _RATES[model]
    from rag.embedders import get_embedder

    embedder = get_embedder(model)
    words = "Measuring how fast this server embeds ordinary text before a long build starts. "
    text = (words * (chunk_chars // len(words) + 1))[:chunk_chars]
    embedder.embed_passages([text])  # warm-up: the first call pays for lazy initialisation
    start = time.perf_counter()
    embedder.embed_passages([text] * RATE_SAMPLE)
    _RATES[model] = RATE_SAMPLE / max(time.perf_counter() - start, 1e-6)
    return _RATES[model]


def estimate_chars(path: str | Path) -> int:
    """Characters of text a file will probably yield, without reading it through (that is the job's work).

    Text formats: about one character per byte. PDF: its page count (read from the page tree, no text
    extraction) times :data:`CHARS_PER_PDF_PAGE`. HTML and zipped Office/EPUB files: their (uncompressed)
    markup, of which about a third is text. Only an estimate: it decides whether to ask before a build.
    """
    path = Path(path)
    size = path.stat().st_size
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        try:
            from pypdf import PdfReader

            return len(PdfReader(path).pages) * CHARS_PER_PDF_PAGE
        except Exception:  # encrypted or damaged: the job reports it; guess from the size
            return size // 20
    if suffix in (".docx", ".pptx", ".xlsx", ".xlsm", ".odt", ".epub"):
        try:
            with zipfile.ZipFile(path) as archive:
                return sum(i.file_size for i in archive.infolist() if i.filename.endswith((".xml", ".html",
                                                                                            ".xhtml"))) // 3
        except (zipfile.BadZipFile, OSError):
            return size
    if suffix in (".html", ".htm", ".xhtml"):
        return size // 3
    return size


@dataclass(frozen=True)
class BuildEstimate:
    """What a build of some files will take: characters → chunks → seconds at ``rate`` chunks per second."""

    files: int
    chars: int
    chunks: int
    seconds: float
    rate: float

    def added_bytes(self, dimension: int) -> int:
        """Disk the build adds, roughly: the text twice (documents, chunks), two float32 copies of each vector."""
        return 2 * self.chars + self.chunks * (8 * dimension + 200)


def plan_build(files: Sequence[tuple[str, str | Path]], spec: PipelineSpec, *,
               known: Mapping[str, str] | None = None, rate: float | None = None,
               ask_after: float | None = None) -> BuildEstimate:
    """The estimate for uploads ``(name, path)`` under ``spec``; files already indexed with the same content
    (``known``: name → sha256 of the collection's files) are skipped, as the build will skip them.

    ``rate`` defaults to :func:`embedding_rate`, except when even :data:`SLOWEST_RATE` would finish within
    ``ask_after`` seconds: then the answer to "ask first?" cannot change, and nothing is measured.
    """
    split = spec.split
    step = max(1, split.chunk_size - split.chunk_overlap) * (CHARS_PER_TOKEN if split.method == "token" else 1)
    n_files = chars = chunks = 0
    for name, path in files:
        if known and name in known and file_sha256(Path(path).read_bytes()) == known[name]:
            continue
        n = estimate_chars(path)
        n_files, chars, chunks = n_files + 1, chars + n, chunks + max(1, math.ceil(n / step))
    chunk_chars = split.chunk_size * (CHARS_PER_TOKEN if split.method == "token" else 1)
    if rate is None:
        short = not chunks or (ask_after is not None and chunks / SLOWEST_RATE <= ask_after)
        rate = SLOWEST_RATE if short else embedding_rate(spec.embed.model, chunk_chars)
    return BuildEstimate(n_files, chars, chunks, chunks / rate, rate)


def estimate_build(files: Sequence[tuple[str, str | Path]], spec: PipelineSpec, **options: Any) -> tuple[int, float]:
    """(chunks, seconds) a build of ``files`` will take; see :func:`plan_build` for ``options``."""
    estimate = plan_build(files, spec, **options)
    return estimate.chunks, estimate.seconds
