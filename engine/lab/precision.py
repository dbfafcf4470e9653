"""What post-training quantization costs: one prompt answered in full precision and in NF4, with perplexity.

Both models are loaded the way training loads them (:func:`engine.models.load_base_model`, NF4 with double
quantization through bitsandbytes), answer greedily (so the only difference is the weights), and score
the same short text: perplexity = exp(mean negative log-likelihood per token). A higher perplexity in NF4
is the quality the 4-bit weights gave up; the footprint is what they saved.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_PROMPT = "In one sentence, what is the capital of France known for?"
DEFAULT_TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France and its largest city. "
                "Water boils at one hundred degrees Celsius at sea level.")
MAX_TEXT_CHARS = 4000
FORMATS = {"full precision": "none", "NF4 (4-bit)": "4bit"}


@dataclass(frozen=True)
class PrecisionResult:
    """One format's answer, perplexity, the weights' memory and the time it took."""

    format: str
    answer: str
    perplexity: float
    footprint_bytes: int
    seconds: float


def perplexity(model: Any, tokenizer: Any, text: str) -> float:
    """exp(mean token negative log-likelihood) of ``text`` under ``model``."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    if ids.shape[1] < 2:
        raise ValueError("The perplexity text needs at least two tokens.")
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss
    return math.exp(float(loss))


def greedy_answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def compare_precisions(model_id: str | None = None, prompt: str = DEFAULT_PROMPT, text: str = DEFAULT_TEXT, *,
                       max_new_tokens: int = 40, token: str | None = None,
                       on_phase: Callable[[str], None] | None = None) -> list[PrecisionResult]:
    """Load the model in each of :data:`FORMATS` in turn (never both at once) and answer and score with it."""
    from engine.models import load_base_model, load_tokenizer

    if not prompt.strip():
        raise ValueError("Type a prompt for both models to answer.")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"The perplexity text is {len(text):,} characters; at most {MAX_TEXT_CHARS:,}.")
    tokenizer = load_tokenizer(model_id, token)
    results = []
    for label, quantization in FORMATS.items():
        if on_phase:
            on_phase(f"Loading the model in {label}")
        started = time.perf_counter()
        model = load_base_model(model_id, quantization=quantization, token=token)
        model.eval()
        if on_phase:
            on_phase(f"Answering in {label}")
        answer = greedy_answer(model, tokenizer, prompt, max_new_tokens)
        results.append(PrecisionResult(label, answer, perplexity(model, tokenizer, text),
                                       int(model.get_memory_footprint()), time.perf_counter() - started))
        del model
        gc.collect()
    return results


def to_dicts(results: list[PrecisionResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
