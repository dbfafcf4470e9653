"""Typed events emitted by indexing and answering; the UI and CLI only format them.

Long operations are generators of these events, so the same code drives a Gradio progress view,
a CLI log line and a test assertion, and none of them needs to know about the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag.hits import Citation, Hit
from rag.ingest import RefusalReason

if TYPE_CHECKING:
    from rag.chunking import ChunkPreview


@dataclass(frozen=True)
class ReadingFile:
    """About to read file ``number`` of ``total``: a long PDF or a big text file can take a while."""

    source: str
    number: int
    total: int


@dataclass(frozen=True)
class PageRead:
    """Page ``page`` of ``pages`` of a PDF or image was read: from its text layer, or by OCR with its mean line
    confidence (0-1; None where OCR found no line). A scanned page takes seconds, so a long scan shows progress."""

    source: str
    page: int
    pages: int
    method: str  # "text" or "ocr"
    confidence: float | None = None


@dataclass(frozen=True)
class FileLoaded:
    source: str
    sections: int
    chars: int
    encoding: str | None = None
    pages: int | None = None  # pages read, for paged formats (PDF); None where a file has no pages
    notes: tuple[str, ...] = ()  # e.g. pages OCR could not read or a limit skipped (the rest of the file is kept)


@dataclass(frozen=True)
class FileRefused:
    source: str
    reason: RefusalReason
    message: str


@dataclass(frozen=True)
class FileUnchanged:
    """Same name and same content hash as what the index holds: nothing to do."""

    source: str


@dataclass(frozen=True)
class FileRemoved:
    source: str
    chunks: int
    replaced: bool = False


@dataclass(frozen=True)
class Splitting:
    """About to cut document ``number`` of ``total`` into chunks (token splitting of a long text is slow)."""

    source: str
    number: int
    total: int


@dataclass(frozen=True)
class Chunked:
    preview: ChunkPreview


@dataclass(frozen=True)
class EmbedProgress:
    done: int
    total: int
    reused: int = 0

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else self.done / self.total


@dataclass(frozen=True)
class Writing:
    """Every chunk has its vector; the collection's next version is being written (FAISS + files)."""

    chunks: int


@dataclass(frozen=True)
class IndexUpdated:
    """Final event of an indexing run: what the index holds now and what this run changed."""

    files: int
    chunks: int
    added_files: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    refused: list[FileRefused] = field(default_factory=list)
    embedded: int = 0
    reused: int = 0
    seconds: float = 0.0
    version: int = 0  # the collection's version after this run (unchanged when nothing changed)


IndexEvent = (ReadingFile | PageRead | FileLoaded | FileRefused | FileUnchanged | FileRemoved | Splitting | Chunked
              | EmbedProgress | Writing | IndexUpdated)


@dataclass(frozen=True)
class RetrievedEvent:
    hits: list[Hit]


@dataclass(frozen=True)
class PromptEvent:
    prompt: str


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class AnswerEvent:
    text: str
    citations: list[Citation]
    invalid_citations: list[int] = field(default_factory=list)
    quotes: dict[int, str] = field(default_factory=dict)  # citation number → the span of its chunk quoted


AnswerStreamEvent = RetrievedEvent | PromptEvent | TokenEvent | AnswerEvent
