"""Cross-encoder rerankers from the Hugging Face Hub, fetched once with progress through the app's downloader.

A reranker reads the question and each candidate chunk together and scores how well the chunk answers it: slower
than the search, often more precise. No reranker is bundled yet: one trained from the bundled MiniLM on the text
we may use scored worse than no reranker at all (bench/RESULTS.md, "Offline reranker (issue #13)"), so offline
the step says that it needs the Hub and how to leave it out. Hub rerankers come through the application's one
downloader (``rag.embedders.hub_folder``: progress, a disk check, plain errors). Loaded models are read-only and
shared, so one cache per process is right here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

HUB_RERANKERS = ("cross-encoder/ms-marco-MiniLM-L-6-v2", "BAAI/bge-reranker-base")
RERANKER_CHOICES = HUB_RERANKERS
DEFAULT_RERANKER = HUB_RERANKERS[0]
MAX_LENGTH = 512


class RerankerUnavailableError(ValueError):
    """The chosen reranker cannot be loaded here (a Hub model without the Hub)."""


def _load_hub(repo_id: str, on_progress: Callable[[Any], None] | None) -> Any:
    from sentence_transformers import CrossEncoder

    from rag.embedders import EmbedderUnavailableError, hub_folder

    try:
        folder = hub_folder(repo_id, on_progress=on_progress)
    except EmbedderUnavailableError as exc:
        raise RerankerUnavailableError(f"The reranker {repo_id} comes from the Hugging Face Hub, and Hub downloads "
                                       "are not available here (no reranker works offline yet). Leave the rerank "
                                       "step out: in the RAG tab's pipeline, drop it on the line so that it "
                                       "moves into the palette below, and press Apply pipeline.") from exc
    return CrossEncoder(str(folder), local_files_only=True, max_length=MAX_LENGTH)


_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


def get_reranker(name: str = DEFAULT_RERANKER, on_progress: Callable[[Any], None] | None = None) -> Any:
    """Load (once per process) and return a reranker by its name in :data:`RERANKER_CHOICES`."""
    if name not in RERANKER_CHOICES:
        raise RerankerUnavailableError(f"Unknown reranker '{name}'. Known: {', '.join(RERANKER_CHOICES)}.")
    with _LOCK:
        if name not in _CACHE:
            _CACHE[name] = _load_hub(name, on_progress)
        return _CACHE[name]


def rerank_scores(model: Any, query: str, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """One relevance score per text (higher = more relevant to ``query``), the model's own output."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    scores = model.predict([(query, t) for t in texts], batch_size=batch_size, show_progress_bar=False,
                           convert_to_numpy=True)
    return np.asarray(scores, dtype=np.float32).reshape(-1)
