"""Streaming answers from a base model with or without a fine-tuned adapter.

One copy of the base weights serves every arm: adapters are loaded onto the same PEFT wrapper
under their own names and switched on per request, and the base answers with all adapters
disabled. This keeps a four-arm comparison at the memory of one model and makes the arms
differ only by the adapter — the honest comparison users come for.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.config import GenerationSettings
from engine.models import BUNDLED_ID, load_base_model, load_tokenizer


def adapter_name(adapter_dir: str | Path) -> str:
    """A stable PEFT adapter name for a folder (PEFT names may not contain dots or slashes)."""
    return "a" + hashlib.sha1(str(Path(adapter_dir).resolve()).encode()).hexdigest()[:12]


class ChatModel:
    """A base model plus any number of adapters. Requests that use the same adapter (or all the base) generate
    concurrently; a request for another adapter waits until those finish, then switches."""

    def __init__(self, base_model: str = BUNDLED_ID, *, device: str = "auto", dtype: str = "auto",
                 token: str | None = None):
        self.base_model = base_model
        self.tokenizer = load_tokenizer(base_model, token)
        self.model: Any = load_base_model(base_model, device=device, dtype=dtype, token=token)
        self.model.eval()
        self._adapters: dict[str, str] = {}
        # Which adapter the running generations use and how many run; loading an adapter waits for none to run.
        self._gate = threading.Condition()
        self._active: tuple[str | None] | None = None
        self._running = 0
        self._waiting_to_switch = 0

    def load_adapter(self, adapter_dir: str | Path) -> str:
        """Attach an adapter (once) and return its name; the base weights are shared, not copied."""
        from peft import PeftModel

        name = adapter_name(adapter_dir)
        if name in self._adapters:
            return name
        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: it is not a finished LoRA adapter.")
        with self._gate:
            while self._running:  # injecting LoRA layers must never happen under a running generation
                self._gate.wait()
            if name in self._adapters:
                return name
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(adapter_dir), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
            self.model.eval()
            self._adapters[name] = str(adapter_dir)
        return name

    def prompt_ids(self, messages: list[dict[str, str]]) -> Any:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)

    def stream(
        self,
        messages: list[dict[str, str]] | str,
        *,
        adapter: str | Path | None = None,
        settings: GenerationSettings | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece; ``adapter=None`` answers with the base model."""
        import torch
        from transformers import TextIteratorStreamer

        settings = settings or GenerationSettings()
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        name = self.load_adapter(adapter) if adapter else None
        inputs = {k: v.to(self.model.device) for k, v in self.prompt_ids(messages).items()}
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = settings.temperature > 0
        kwargs: dict[str, Any] = {
            **inputs, "streamer": streamer, "max_new_tokens": settings.max_new_tokens, "do_sample": sample,
            "repetition_penalty": settings.repetition_penalty, "pad_token_id": self.tokenizer.pad_token_id,
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

        with self._using(name):
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            try:
                yield from streamer
            finally:
                thread.join()  # also when the visitor goes away: the adapter may only switch once it is done
        if errors:
            raise errors[0]

    def generate(self, messages: list[dict[str, str]] | str, **kwargs: Any) -> str:
        return "".join(self.stream(messages, **kwargs))

    @contextlib.contextmanager
    def _using(self, name: str | None) -> Iterator[None]:
        """Run with exactly one adapter enabled (or none for the base), alongside requests that want the same."""
        with self._gate:
            if self._running and self._active != (name,):
                self._waiting_to_switch += 1  # new same-adapter requests now queue behind this one
                try:
                    while self._running:
                        self._gate.wait()
                finally:
                    self._waiting_to_switch -= 1
            while self._running and self._waiting_to_switch:
                self._gate.wait()  # someone waits to switch adapters: do not keep the current one busy forever
            if not self._running:
                self._select(name)
                self._active = (name,)
            self._running += 1
        try:
            yield
        finally:
            with self._gate:
                self._running -= 1
                if not self._running:
                    self._gate.notify_all()

    def _select(self, name: str | None) -> None:
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return
        if name is None:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(name)
