"""One cache of loaded chat models for the web UI, the CLI and the demo Space.

Why a cache at all: loading a base model takes seconds to minutes and its weights are the largest
thing the server holds, so every visitor's chat, comparison and try-it share one copy per base model
(adapters are switched per request by :class:`engine.infer.ChatModel`'s gate).

Why it is careful: on a shared Space the cache is the one place where one visitor's access could
leak to another. A model that is not the bundled one is served to a request only after
``engine.hub.require_access`` confirms that request's own token can read it (a gated model loaded
with one visitor's token is not handed to a visitor without access). And memory is bounded: beyond
the budget (``engine.limits``: ``model_memory_mb``) the least recently used model is unloaded,
through its gate, so no answer in progress loses its model.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from engine.hub import require_access
from engine.infer import ChatModel
from engine.limits import limits
from engine.models import BUNDLED_ID, model_info

log = logging.getLogger("tune_studio.models")

#: Bytes per parameter when a model's size must be guessed before it is loaded (fp32 on CPU, 16-bit on GPU).
CPU_BYTES_PER_PARAM = 4
GPU_BYTES_PER_PARAM = 2


def automatic_budget() -> int:
    """80% of the GPU's memory when there is one, else half of the machine's RAM."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory * 0.8)
    return int(psutil.virtual_memory().total * 0.5)


class ModelCache:
    """Loaded chat models and tokenizers by base model id, access-checked per request, bounded by memory."""

    def __init__(self, budget_bytes: int | None = None, loader: Callable[..., Any] = ChatModel,
                 tokenizer_loader: Callable[..., Any] | None = None):
        self._budget = budget_bytes
        self._loader = loader
        self._tokenizer_loader = tokenizer_loader
        self._lock = threading.Lock()
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._tokenizers: dict[str, Any] = {}
        self._loading: dict[str, threading.Lock] = {}

    @property
    def budget_bytes(self) -> int:
        if self._budget is not None:
            return self._budget
        configured = limits().model_memory_mb
        return configured * 2**20 if configured else automatic_budget()

    def chat_model(self, model_id: str | None = None, token: str | None = None) -> Any:
        """The shared ChatModel of ``model_id``, after checking this request's access; loads it when needed."""
        model_id = model_id or BUNDLED_ID
        require_access(model_id, token)
        with self._lock:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # one load per model, however many visitors ask at once; other models stay available
            with self._lock:
                if model_id in self._models:
                    return self._models[model_id]
            self._make_room(self._estimate(model_id), keep=model_id)
            model = self._loader(model_id, token=token or None)
            with self._lock:
                self._models[model_id] = model
                self._loading.pop(model_id, None)
            self._make_room(0, keep=model_id)
        return model

    def tokenizer(self, model_id: str | None = None, token: str | None = None) -> Any:
        """The tokenizer of ``model_id`` (cheap, never evicted), after checking this request's access."""
        from engine.models import load_tokenizer

        model_id = model_id or BUNDLED_ID
        require_access(model_id, token)
        with self._lock:
            cached = self._tokenizers.get(model_id)
        if cached is None:
            cached = (self._tokenizer_loader or load_tokenizer)(model_id, token or None)
            with self._lock:
                cached = self._tokenizers.setdefault(model_id, cached)
        return cached

    def loaded(self) -> list[str]:
        """Model ids loaded now, least recently used first."""
        with self._lock:
            return list(self._models)

    def memory_bytes(self) -> int:
        with self._lock:
            models = list(self._models.values())
        return sum(m.memory_bytes for m in models)

    def evict(self, model_id: str) -> bool:
        """Unload one model once the answers it is giving end; True if it was loaded."""
        with self._lock:
            model = self._models.pop(model_id, None)
        if model is None:
            return False
        log.info("Unloading %s from the model cache", model_id)
        model.close()  # waits, through the model's gate, for running answers to finish
        return True

    def _estimate(self, model_id: str) -> int:
        import torch

        per_param = GPU_BYTES_PER_PARAM if torch.cuda.is_available() else CPU_BYTES_PER_PARAM
        return int(model_info(model_id).params_b * 1e9 * per_param)

    def _make_room(self, needed: int, keep: str) -> None:
        """Evict least recently used models until the loaded ones plus ``needed`` fit the budget."""
        budget = self.budget_bytes
        while self.memory_bytes() + needed > budget:
            with self._lock:
                victims = [m for m in self._models if m != keep]
            if not victims:
                return
            self.evict(victims[0])


_shared: ModelCache | None = None
_shared_lock = threading.Lock()


def shared_models() -> ModelCache:
    """The process's one model cache (models are shared read-only; per-visitor state lives elsewhere)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ModelCache()
        return _shared
