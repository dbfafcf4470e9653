"""Cut loaded documents into chunks with LangChain text splitters, and preview the result.

Every chunk keeps its source, page and section from the :class:`~rag.ingest.Section` it came from,
so a citation can point at the page. ``embed_text`` (title and section prepended) is what the
embedder and BM25 see; ``text`` is what the user and the prompt see.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter, TextSplitter

from rag.ingest import LoadedDocument, Section
from rag.stages import ParentChildSettings, SplitSettings

_SENTENCE_SEPARATORS = [r"\n\n", r"(?<=[.!?。！？])\s+", r"\n", r"(?<=[;:])\s+", " ", ""]
_MARKDOWN_HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]


@dataclass(frozen=True)
class Chunk:
    """One retrievable unit of text with everything a citation needs.

    With parent-child retrieval the index holds small chunks (children) whose ``parent`` is the ordinal of
    the larger chunk they were cut from (same source, page and section); that parent is what the model reads.
    """

    text: str
    source: str
    ordinal: int
    page: int | None = None
    section: str | None = None
    title: str | None = None
    prepend_title: bool = True
    parent: int | None = None
    ocr_confidence: float | None = None  # mean OCR confidence (0-1) of the page it came from; None: a text layer

    @property
    def embed_text(self) -> str:
        """Text given to the embedder and BM25: a title line first when enabled (topic words help recall)."""
        if not self.prepend_title:
            return self.text
        head = " — ".join(p for p in (self.title, self.section) if p)
        return f"{head}\n{self.text}" if head else self.text

    @property
    def content_hash(self) -> str:
        """Identity of what gets embedded: equal hashes can share one vector."""
        return hashlib.sha256(self.embed_text.encode("utf-8")).hexdigest()

    @property
    def location(self) -> str:
        parts = [self.source]
        if self.page is not None:
            parts.append(f"p. {self.page}")
        if self.section and not (self.page is not None and self.section.startswith("slide")):
            parts.append(self.section)
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = {"text": self.text, "source": self.source, "ordinal": self.ordinal, "page": self.page,
               "section": self.section, "title": self.title, "prepend_title": self.prepend_title}
        if self.parent is not None:  # only children carry it: collections without parent-child stay as they were
            out["parent"] = self.parent
        if self.ocr_confidence is not None:  # likewise only chunks read by OCR
            out["ocr_confidence"] = self.ocr_confidence
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        return cls(**data)


def make_splitter(settings: SplitSettings, tokenizer: Any | None = None) -> TextSplitter:
    """The LangChain splitter for a method. ``tokenizer`` (a HF tokenizer) is needed for ``token``."""
    size, overlap = settings.chunk_size, settings.chunk_overlap
    if settings.method == "token":
        if tokenizer is None:
            raise ValueError("The token splitter needs the embedder's tokenizer; pass tokenizer=embedder.tokenizer.")
        return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer, chunk_size=size, chunk_overlap=overlap
        )
    if settings.method == "sentence":
        return _sentence_splitter(size, overlap)
    return RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap)


def _sentence_splitter(size: int, overlap: int) -> TextSplitter:
    """Whole sentences first. The separators stay in the pieces (stripped at their ends later): dropped, LangChain
    would join merged pieces with the regex itself, writing a literal ``\\n`` into the text."""
    return RecursiveCharacterTextSplitter(separators=_SENTENCE_SEPARATORS, is_separator_regex=True,
                                          keep_separator=True, chunk_size=size, chunk_overlap=overlap)


def _markdown_sections(section: Section) -> list[Section]:
    """Split on markdown headers first, so each chunk's section names the heading path it sits under."""
    splitter = MarkdownHeaderTextSplitter(_MARKDOWN_HEADERS, strip_headers=False)
    parts = splitter.split_text(section.text)
    out = []
    for part in parts:
        path = " > ".join(part.metadata[k] for _, k in _MARKDOWN_HEADERS if k in part.metadata)
        out.append(Section(part.page_content, section.source, section.page, path or section.section,
                           ocr_confidence=section.ocr_confidence))
    return out or [section]


def split_document(
    doc: LoadedDocument, settings: SplitSettings, *, tokenizer: Any | None = None, title: str | None = None,
    children: ParentChildSettings | None = None,
) -> list[Chunk]:
    """All chunks of one document, numbered in reading order; with ``children``, the small pieces that are
    searched (each naming its parent, see :func:`split_parent_child`)."""
    if children is not None:
        return split_parent_child(doc, settings, children, tokenizer=tokenizer, title=title)[0]
    return _split_chunks(doc, settings, tokenizer, title)


def split_parent_child(
    doc: LoadedDocument, settings: SplitSettings, children: ParentChildSettings, *, tokenizer: Any | None = None,
    title: str | None = None,
) -> tuple[list[Chunk], list[Chunk]]:
    """(children, parents) of one document: the parents are the chunks ``settings`` cuts, each child a piece of
    one parent (sentence boundaries first, ``children.child_size`` characters at most) that knows its parent's
    ordinal. A parent no longer than a child is its own only child."""
    parents = _split_chunks(doc, settings, tokenizer, title)
    splitter = _sentence_splitter(children.child_size, children.child_overlap)
    out: list[Chunk] = []
    for parent in parents:
        pieces = [parent.text] if len(parent.text) <= children.child_size else splitter.split_text(parent.text)
        for text in pieces:
            if text.strip():
                out.append(replace(parent, text=text.strip(), ordinal=len(out), parent=parent.ordinal))
    return out, parents


def _split_chunks(doc: LoadedDocument, settings: SplitSettings, tokenizer: Any | None,
                  title: str | None) -> list[Chunk]:
    splitter = make_splitter(settings, tokenizer)
    title = title or doc.title or _title_from_source(doc.source)
    chunks: list[Chunk] = []
    for section in doc.sections:
        pieces = _markdown_sections(section) if settings.method == "markdown" else [section]
        for piece in pieces:
            for text in splitter.split_text(piece.text):
                if text.strip():
                    chunks.append(Chunk(text.strip(), doc.source, len(chunks), piece.page, piece.section, title,
                                        settings.prepend_title, ocr_confidence=piece.ocr_confidence))
    return chunks


def _title_from_source(source: str) -> str:
    stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.replace("_", " ").replace("-", " ").strip()


@dataclass(frozen=True)
class ChunkPreview:
    """What the user sees before indexing: how many chunks, how long, and the first few per file."""

    count: int
    per_file: dict[str, int]
    length_min: int
    length_median: float
    length_mean: float
    length_max: int
    histogram: list[tuple[str, int]]
    first_chunks: dict[str, list[Chunk]] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.count:
            return "No chunks."
        return (f"{self.count} chunks from {len(self.per_file)} file(s); length (characters) min {self.length_min}, "
                f"median {self.length_median:.0f}, mean {self.length_mean:.0f}, max {self.length_max}.")


def preview(chunks: Sequence[Chunk], first_n: int = 3, bins: int = 8) -> ChunkPreview:
    """Summarise chunks: count, length distribution (histogram), first ``first_n`` chunks of each file."""
    per_file: dict[str, int] = defaultdict(int)
    first: dict[str, list[Chunk]] = defaultdict(list)
    for chunk in chunks:
        per_file[chunk.source] += 1
        if len(first[chunk.source]) < first_n:
            first[chunk.source].append(chunk)
    lengths = [len(c.text) for c in chunks]
    if not lengths:
        return ChunkPreview(0, {}, 0, 0.0, 0.0, 0, [], {})
    return ChunkPreview(
        count=len(chunks), per_file=dict(per_file), length_min=min(lengths),
        length_median=float(statistics.median(lengths)), length_mean=float(statistics.fmean(lengths)),
        length_max=max(lengths), histogram=_histogram(lengths, bins), first_chunks=dict(first),
    )


def _histogram(values: Iterable[int], bins: int) -> list[tuple[str, int]]:
    values = list(values)
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, (v - low) // width)] += 1
    return [(f"{low + i * width}-{low + (i + 1) * width - 1}", n) for i, n in enumerate(counts) if n or i < bins]
