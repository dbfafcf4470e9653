"""What a small model can and cannot do, said once for every place that answers (Compare, Chat).

Why here: a newcomer asking the bundled 135M model a real question gets a short, often wrong answer and
concludes the app is broken. One line next to the answer says what such a model is for and what to pick
instead; the size rule and the text are defined here only, so Compare and Chat never word it differently.
The size comes from the model registry or the model's own ``config.json`` when it is already on this
machine (``engine.models.local_model_info``: never a download), else from a size written in its name
("SmolLM2-360M", "Qwen2.5-0.5B").
"""

from __future__ import annotations

import re

from engine.models import BUNDLED_ID, local_model_info

#: Models below this many billion parameters get the note.
SMALL_MODEL_BILLIONS = 1.0

SMALL_MODEL_NOTE = ("**About this small model ({size}):** it answers short factual questions from the text it is "
                    "given (RAG, or what it was fine-tuned on), and is often wrong on its own. For real use pick a "
                    "larger model, such as Qwen2.5-1.5B-Instruct, on a Space with a GPU.")

_SIZE_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*([MB])(?![a-z])", re.IGNORECASE)


def size_from_name(model_id: str) -> float | None:
    """Billions of parameters as written in a model's name (``SmolLM2-135M`` -> 0.135), or None."""
    name = (model_id or "").rstrip("/").split("/")[-1]
    match = _SIZE_IN_NAME.search(name.replace("-", " ").replace("_", " "))
    if match is None:
        return None
    number = float(match.group(1))
    return number / 1000 if match.group(2).upper() == "M" else number


def model_billions(model_id: str | None) -> float | None:
    """A model's size in billions of parameters: the registry or its local config, else its name; None if unknown."""
    model_id = model_id or BUNDLED_ID
    try:
        known = local_model_info(model_id).params_b
    except Exception:  # an odd id must not break an answer's page; the name may still tell
        known = 0.0
    return known or size_from_name(model_id)


def size_words(billions: float) -> str:
    """``0.135`` -> ``135M parameters``; ``0.49`` -> ``490M parameters``."""
    if billions < 1:
        return f"{billions * 1000:.0f}M parameters"
    return f"{billions:.1f}B parameters"


def small_model_note(model_id: str | None) -> str:
    """The one-line note for a model under :data:`SMALL_MODEL_BILLIONS`, or "" for a larger or unknown one."""
    billions = model_billions(model_id)
    if billions is None or billions >= SMALL_MODEL_BILLIONS:
        return ""
    return SMALL_MODEL_NOTE.format(size=size_words(billions))
