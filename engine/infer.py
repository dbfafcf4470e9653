"""Streaming answers from a base model with or without a fine-tuned adapter.

One copy of the base weights serves every arm: adapters are loaded onto the same PEFT wrapper
under their own names and switched on per request, and the base answers with all adapters
disabled. This keeps a four-arm comparison at the memory of one model and makes the arms
differ only by the adapter — the honest comparison users come for.
"""

from __future__ import annotations

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
    """A base model plus any number of adapters, generating one request at a time."""

    def __init__(self, base_model: str = BUNDLED_ID, *, device: str = "auto", dtype: str = "auto",
                 token: str | None = None):
        self.base_model = base_model
        self.tokenizer = load_tokenizer(base_model, token)
        self.model: Any = load_base_model(base_model, device=device, dtype=dtype, token=token)
        self.model.eval()
        self._adapters: dict[str, str] = {}
        self._lock = threading.Lock()  # generate() is not re-entrant on one model

    def load_adapter(self, adapter_dir: str | Path) -> str:
        """Attach an adapter (once) and return its name; the base weights are shared, not copied."""
        from peft import PeftModel

        name = adapter_name(adapter_dir)
        if name in self._adapters:
            return name
        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: it is not a finished LoRA adapter.")
        with self._lock:
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
                with torch.inference_mode(), self._adapter_context(name):
                    if sample:
                        torch.manual_seed(settings.seed)
                    self.model.generate(**kwargs)
            except BaseException as exc:
                errors.append(exc)
                streamer.end()

        with self._lock:
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            yield from streamer
            thread.join()
        if errors:
            raise errors[0]

    def generate(self, messages: list[dict[str, str]] | str, **kwargs: Any) -> str:
        return "".join(self.stream(messages, **kwargs))

    def _adapter_context(self, name: str | None) -> Any:
        """Enable exactly one adapter, or none for the base model."""
        import contextlib

        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()
