"""Where Tune Studio keeps its files.

One function decides the data directory so that every part of the app (model cache, datasets,
runs, indexes, the job database) agrees on it. On a Hugging Face Space the persistent volume is
mounted at ``/data``; anything written elsewhere is lost on restart, so it wins when present.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TUNE_STUDIO_HOME"
MODELS_ENV_VAR = "TUNE_STUDIO_MODELS"
SPACE_PERSISTENT_DIR = Path("/data")


def data_dir() -> Path:
    """Return (and create) the root directory for everything the app persists.

    Order: ``$TUNE_STUDIO_HOME``; ``/data`` when running on a Space with persistent storage;
    otherwise ``~/.tune_studio``.
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        root = Path(explicit).expanduser()
    elif os.environ.get("SPACE_ID") and SPACE_PERSISTENT_DIR.is_dir() and os.access(SPACE_PERSISTENT_DIR, os.W_OK):
        root = SPACE_PERSISTENT_DIR / "tune_studio"
    else:
        root = Path.home() / ".tune_studio"
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    """A named folder under the data directory (``models``, ``runs``, ``indexes``...), created on demand."""
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted model weights. Separately configurable so tests and several homes share one cache."""
    explicit = os.environ.get(MODELS_ENV_VAR)
    path = Path(explicit).expanduser() if explicit else data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
