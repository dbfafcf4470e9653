"""Rerankers: a second look at the best candidates, offline with the bundled model or with a Hub cross-encoder.

A reranker reads the question against each of the top candidates and re-orders them. Two kinds:

* **Bundled sentence matcher** (:data:`BUNDLED_RERANKER`, works offline, nothing to download): the bundled
  MiniLM embeds each sentence of a candidate and the question; a candidate's score combines its best sentence's
  similarity with its keyword (BM25) score relative to the best candidate's, with weights learned by
  ``python -m rag build-reranker`` (:mod:`rag.build_reranker`) on XQuAD's English questions (CC BY-SA 4.0),
  none of them from the sets we report on. Why not a cross-encoder: no cross-encoder's weights can be
  installed here, and one trained from the bundled MiniLM on the pairs we may use (and the CPU time a build
  step may take) ordered the top 20 worse than no reranker (bench/RESULTS.md, "Offline reranker"). A passage
  is embedded as one vector, which blurs the one sentence a question asks about; matching sentences restores it.
* **Hub cross-encoders** (:data:`HUB_RERANKERS`, sentence-transformers ``CrossEncoder``): downloaded once through
  the app's downloader (``rag.embedders.hub_folder``: progress, a disk check, plain errors).

:data:`AUTO_RERANKER` (the setting's default) is the Hub cross-encoder on a Hugging Face Space, where the Hub is
reachable, and the bundled matcher everywhere else. Loaded models are read-only and shared, so one cache per
process is right; so is the sentence-vector cache, which is keyed by the text itself (no visitor's data is
reachable through it except by holding the same text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.reranker_names import (  # noqa: F401 - re-exported: callers name rerankers through this module
    AUTO_RERANKER,
    BUNDLED_RERANKER,
    DEFAULT_RERANKER,
    HUB_RERANKERS,
    RERANKER_CHOICES,
    SPACE_RERANKER,
)

if TYPE_CHECKING:
    from rag.embedders import Embedder
    from rag.hits import Hit


MAX_LENGTH = 512
WEIGHTS_FILE = Path(__file__).resolve().parent / "models" / "sentence_reranker.json"
#: The matcher's features, in the order of its weights (rag/models/sentence_reranker.json names them too).
FEATURES = ("best_sentence_similarity", "keyword_score_relative")
MAX_SENTENCE_CHARS = 400  # ~90 tokens: longer than 98% of the long-document set's sentences
SENTENCE_CACHE_LIMIT = 50_000  # sentence vectors kept (384 floats each: ~75 MB at most)


class RerankerUnavailableError(ValueError):
    """The chosen reranker cannot be loaded here (a Hub model without the Hub)."""


class Reranker(Protocol):
    def score(self, query: str, hits: Sequence[Hit], *, query_vector: np.ndarray | None = None) -> np.ndarray:
        """One relevance score per hit, higher is better. ``query_vector``: the question already embedded by the
        bundled MiniLM (the search's own vector when the collection uses it), saving a second embedding."""


def resolve_reranker(name: str, env: Mapping[str, str] | None = None) -> str:
    """The reranker ``name`` stands for: ``auto`` is the Hub cross-encoder on a Space with the Hub online, the
    bundled matcher elsewhere (a laptop, an offline server, CI)."""
    if name != AUTO_RERANKER:
        return name
    env = os.environ if env is None else env
    online = env.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")
    return SPACE_RERANKER if env.get("SPACE_ID") and online else BUNDLED_RERANKER


# ---------------------------------------------------------------------------------------------- Hub models
@dataclass
class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder``: reads question and passage together, one score per pair."""

    model: Any
    batch_size: int = 32

    def score(self, query: str, hits: Sequence[Hit], *, query_vector: np.ndarray | None = None) -> np.ndarray:
        return cross_encoder_scores(self.model, query, [h.chunk.text for h in hits], self.batch_size)


def cross_encoder_scores(model: Any, query: str, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """The cross-encoder's own score per text (higher = more relevant to ``query``)."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    scores = model.predict([(query, t) for t in texts], batch_size=batch_size, show_progress_bar=False,
                           convert_to_numpy=True)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def _load_hub(repo_id: str, on_progress: Callable[[Any], None] | None) -> CrossEncoderReranker:
    from sentence_transformers import CrossEncoder

    from rag.embedders import EmbedderUnavailableError, hub_folder

    try:
        folder = hub_folder(repo_id, on_progress=on_progress)
    except EmbedderUnavailableError as exc:
        raise RerankerUnavailableError(f"The reranker {repo_id} comes from the Hugging Face Hub, and Hub downloads "
                                       "are not available here. Choose the bundled reranker "
                                       f"('{BUNDLED_RERANKER}', or 'auto'), which works offline, in the rerank "
                                       "step's settings; or leave the step out: drop it on the line so that it "
                                       "moves into the palette below, and press Apply pipeline.") from exc
    return CrossEncoderReranker(CrossEncoder(str(folder), local_files_only=True, max_length=MAX_LENGTH))


# ---------------------------------------------------------------------------------------------- bundled
def sentence_texts(text: str) -> list[str]:
    """The sentences a passage is matched by (``rag.gold.sentences``: after . ! ? and at line breaks), each cut to
    :data:`MAX_SENTENCE_CHARS`: a "sentence" without punctuation (a table, a list) would otherwise cost a whole
    passage's embedding, and its start says what it is about."""
    from rag.gold import sentences

    return [text[a:b][:MAX_SENTENCE_CHARS] for a, b in sentences(text)] or [text[:MAX_SENTENCE_CHARS]]


def matcher_features(query_vector: np.ndarray, sentence_vectors: Sequence[np.ndarray],
                     keyword_scores: Sequence[float | None]) -> np.ndarray:
    """Features (:data:`FEATURES`) of each candidate: its best sentence's cosine with the question, and its BM25
    score divided by the best candidate's (0 when keyword search did not find it). One function for the build
    and the step, so the weights always meet the features they were learned on."""
    best = [float((vecs @ query_vector).max()) if len(vecs) else 0.0 for vecs in sentence_vectors]
    keyword = [float(s) if s is not None and s > 0 else 0.0 for s in keyword_scores]
    top = max(keyword, default=0.0)
    relative = [k / top if top > 0 else 0.0 for k in keyword]
    return np.asarray([best, relative], dtype=np.float32).T.reshape(len(best), len(FEATURES))


class SentenceMatchReranker:
    """The bundled reranker: see the module docstring. Sentence vectors are cached by text (content hash), so a
    passage met again (the next question, another visitor's same document) costs a dot product."""

    def __init__(self, embedder: Embedder, weights: np.ndarray, cache_limit: int = SENTENCE_CACHE_LIMIT):
        self.embedder = embedder
        self.weights = np.asarray(weights, dtype=np.float32)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cached_sentences = 0
        self._cache_limit = cache_limit
        self._lock = threading.Lock()

    def score(self, query: str, hits: Sequence[Hit], *, query_vector: np.ndarray | None = None) -> np.ndarray:
        if not hits:
            return np.zeros(0, dtype=np.float32)
        vectors = self.sentence_vectors([h.chunk.text for h in hits])
        qvec = self.embedder.embed_query(query) if query_vector is None else query_vector
        features = matcher_features(qvec, vectors, [h.bm25_score for h in hits])
        return features @ self.weights

    def sentence_vectors(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's sentence vectors (normalised), embedding in one batch only the texts not cached."""
        keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        with self._lock:
            found = {k: self._cache[k] for k in keys if k in self._cache}
            for k in found:
                self._cache.move_to_end(k)
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if missing:
            pieces = {k: sentence_texts(t) for k, t in missing.items()}
            flat = [s for k in pieces for s in pieces[k]]
            embedded = self.embedder.embed_passages(flat)
            start = 0
            for k, sents in pieces.items():
                found[k] = embedded[start:start + len(sents)]
                start += len(sents)
            self._remember({k: found[k] for k in pieces})
        return [found[k] for k in keys]

    def _remember(self, new: dict[str, np.ndarray]) -> None:
        with self._lock:
            for key, vecs in new.items():
                if key not in self._cache:
                    self._cache[key] = vecs
                    self._cached_sentences += len(vecs)
            while self._cached_sentences > self._cache_limit and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached_sentences -= len(old)


def load_weights(path: Path = WEIGHTS_FILE) -> np.ndarray:
    """The learned weights, checked against :data:`FEATURES` (a file from another feature set is refused)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if tuple(data.get("features", ())) != FEATURES or len(data.get("weights", ())) != len(FEATURES):
        raise RerankerUnavailableError(f"{path.name} was built for features {data.get('features')}, not "
                                       f"{list(FEATURES)}: rebuild it with `python -m rag build-reranker`.")
    return np.asarray(data["weights"], dtype=np.float32)


def _load_bundled() -> SentenceMatchReranker:
    from rag.embedders import BUNDLED, get_embedder

    return SentenceMatchReranker(get_embedder(BUNDLED), load_weights())


# ---------------------------------------------------------------------------------------------- access
_CACHE: dict[str, Reranker] = {}
_LOCK = threading.Lock()


def get_reranker(name: str = DEFAULT_RERANKER, on_progress: Callable[[Any], None] | None = None) -> Reranker:
    """Load (once per process) and return a reranker by its name in :data:`RERANKER_CHOICES`."""
    if name not in RERANKER_CHOICES:
        raise RerankerUnavailableError(f"Unknown reranker '{name}'. Known: {', '.join(RERANKER_CHOICES)}.")
    resolved = resolve_reranker(name)
    with _LOCK:
        if name == AUTO_RERANKER and name in _CACHE:
            return _CACHE[name]
        if resolved not in _CACHE:
            try:
                _CACHE[resolved] = _load_bundled() if resolved == BUNDLED_RERANKER else _load_hub(resolved, on_progress)
            except RerankerUnavailableError:
                if name != AUTO_RERANKER:
                    raise
                # auto on a Space whose Hub download failed: rerank offline rather than fail every question.
                logging.getLogger("tune_studio.rag").warning("The Hub reranker %s could not be loaded; using the "
                                                             "bundled sentence matcher instead.", resolved)
                _CACHE[name] = _CACHE.get(BUNDLED_RERANKER) or _load_bundled()
                return _CACHE[name]
        return _CACHE[resolved]


def rerank_scores(model: Reranker, query: str, hits: Sequence[Hit], *,
                  query_vector: np.ndarray | None = None) -> np.ndarray:
    """One relevance score per hit (higher = more relevant to ``query``), the reranker's own output."""
    return np.asarray(model.score(query, hits, query_vector=query_vector), dtype=np.float32).reshape(-1)
