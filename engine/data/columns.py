"""Column names and cell decoding shared by the SFT detector (``detection``) and the preference one (``pair_shapes``).

Both detectors look at the same columns of the same rows; defining the names and the cell rules once keeps
them from disagreeing about what a file is.
"""

from __future__ import annotations

import json
from typing import Any

#: Columns that hold a list of chat turns, in the order they are looked for.
MESSAGE_COLUMNS = ("messages", "conversations", "conversation", "chat", "dialogue", "turns")
#: Columns that mark an answer good (true) or bad (false), as in KTO feedback data (``kto_tag`` is LLaMA-Factory's).
LABEL_COLUMNS = ("label", "kto_tag")


def as_bool(value: Any) -> bool | None:
    """A feedback label as a boolean: bool, 0/1, "true"/"false", "yes"/"no"; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def maybe_json(value: Any) -> Any:
    """CSV cells hold nested data as JSON text; decode it when it looks like a list or object."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
