"""Shared read access to RAG collections: one loaded copy per collection version, reused by every visitor.

Why: Chat, Compare and the RAG tab's search all answer from collections, and loading one (chunks,
vectors, FAISS, BM25) costs from milliseconds to seconds. Each request used to load its own copy; now
they share one per saved version. A collection's version changes only through
:meth:`rag.index.RagIndex.edit` (an index job), which swaps in a complete new version atomically; the
next :func:`open_collection` notices the new ``manifest.json`` and loads it, while requests that already
hold the old copy keep answering from it. The copies are read-only (``read_only=True``): changing one
raises, so no visitor can write shared state back over someone else's change. The cache is bounded
(least recently used copies are dropped; a request still holding one keeps it alive until it ends).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from rag.index import MANIFEST, IndexNotFoundError, RagIndex

MAX_OPEN = 8  # collections kept loaded at once (a 12k-chunk MiniLM collection is ~25 MB in memory)


@dataclass(frozen=True)
class _Entry:
    stamp: tuple[int, int, int]  # (inode, mtime_ns, size) of manifest.json: replaced atomically on every save
    index: RagIndex


_cache: OrderedDict[str, _Entry] = OrderedDict()
_cache_lock = threading.Lock()
_path_locks: dict[str, threading.Lock] = {}


def _stamp(path: Path) -> tuple[int, int, int]:
    """A cheap fingerprint of the collection's pointer file; a new version always gives a new one."""
    try:
        st = os.stat(path / MANIFEST)
    except FileNotFoundError:
        raise IndexNotFoundError(f"There is no collection named '{path.name}' yet; build it in the RAG tab.") from None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _cached(key: str, stamp: tuple[int, int, int]) -> RagIndex | None:
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None or entry.stamp != stamp:
            return None
        _cache.move_to_end(key)
        return entry.index


def _remember(key: str, stamp: tuple[int, int, int], index: RagIndex) -> None:
    with _cache_lock:
        _cache[key] = _Entry(stamp, index)
        _cache.move_to_end(key)
        while len(_cache) > MAX_OPEN:
            _cache.popitem(last=False)


def open_collection(path: str | Path) -> RagIndex:
    """The current version of the collection at ``path``, shared and read-only.

    Returns the cached object while the version on disk is unchanged; loads the new version once
    when it changed (one loader per collection at a time, so ten visitors asking at once load it once).
    """
    path = Path(path)
    key = str(path.resolve())
    stamp = _stamp(path)
    index = _cached(key, stamp)
    if index is not None:
        return index
    with _cache_lock:
        loader = _path_locks.setdefault(key, threading.Lock())
    with loader:
        stamp = _stamp(path)
        index = _cached(key, stamp)
        if index is None:
            with _cache_lock:
                old = _cache.get(key)
            index = RagIndex.open(path, read_only=True)
            if old is not None and old.index.version == index.version:
                index = old.index  # the pointer was rewritten by nobody we know of, but the version is the same
            _remember(key, stamp, index)
        return index


def cached_version(path: str | Path) -> int | None:
    """The version of the cached copy of a collection, if one is loaded (for tests and status lines)."""
    with _cache_lock:
        entry = _cache.get(str(Path(path).resolve()))
    return entry.index.version if entry else None


def forget(path: str | Path | None = None) -> None:
    """Drop one collection's cached copy (e.g. after deleting it), or every copy when ``path`` is None."""
    with _cache_lock:
        if path is None:
            _cache.clear()
        else:
            _cache.pop(str(Path(path).resolve()), None)
