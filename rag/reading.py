"""Reading one file with its pages reported as they are read: what an index build and its job both show.

Apart from ``rag.ingest`` because the page event is ``rag.events``', which imports ingest's refusal reasons.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from rag.events import PageRead
from rag.ingest import LoadedDocument, Refusal, load_file, read_with_pages


def load_file_with_pages(path: str | Path, *, name: str,
                         **kwargs: Any) -> Iterator[PageRead | LoadedDocument | Refusal]:
    """:func:`rag.ingest.load_file` through :func:`rag.ingest.read_with_pages`: a :class:`PageRead` for each page
    as it is read, then the :class:`LoadedDocument` or :class:`Refusal`."""
    yield from read_with_pages(load_file, partial(PageRead, name), path, name=name, **kwargs)
