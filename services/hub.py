"""Connects rag's embedder loader to the one Hub downloader in engine (rag and engine do not import each other).

Why here: Hub embedders must download exactly like base models (progress, disk check, plain errors,
never the server's own token), but ``rag`` may not import ``engine``. The application calls
:func:`connect_downloads` once at start-up; the rag CLI does the same in its entry point.
"""

from __future__ import annotations

import functools

from engine import hub
from rag import embedders


def connect_downloads() -> None:
    """Let ``rag.embedders`` fetch Hub embedders through ``engine.hub.download``, anonymously.

    The embedders the app offers are public, so no visitor's token is attached: a download made for
    one visitor then serves everyone, and a token can never leak into a shared cache entry.
    """
    embedders.set_downloader(functools.partial(hub.download, token=None))
