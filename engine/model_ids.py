"""The names every model module shares, apart so that the Hub client and the loaders never import in a circle.

``engine.hub`` (downloads, access) and ``engine.models`` (the registry, loading) both need the bundled
model's id and the user-facing model error; ``engine.models`` uses the Hub client, so these live here.
"""

from __future__ import annotations

BUNDLED_ID = "bundled/SmolLM2-135M-Instruct"


class ModelError(RuntimeError):
    """A model cannot be used; the message says why in the user's terms and what to do."""
