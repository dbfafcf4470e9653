"""How an answer is generated, defined once for every answer the app produces.

Chat, Compare's arms, the RAG tab's answers, the CLI and demo Spaces all read these settings, so the arms
of a comparison differ only by adapter and context, never by how they were decoded. It lives in the core
because both the engine (inference) and rag (its pipeline's "generate" stage) name it.
"""

from __future__ import annotations

from core.settings import Settings, setting


class GenerationSettings(Settings):
    """Shared by every answer the app produces, so comparisons between models are fair."""

    temperature: float = setting(0.0, "0 answers deterministically (greedy); higher is more varied.",
                                 minimum=0.0, maximum=2.0, step=0.05)
    top_p: float = setting(0.9, "Sample only from the most likely tokens whose probabilities add up to this.",
                           label="Top-p", minimum=0.05, maximum=1.0, step=0.05)
    max_new_tokens: int = setting(200, "Longest answer in tokens.", label="Max new tokens",
                                  minimum=1, maximum=4096, step=1)
    repetition_penalty: float = setting(1.1, "Discourages repeating the same words; 1 = off.",
                                        minimum=1.0, maximum=2.0, step=0.05, advanced=True)
    seed: int = setting(0, "Seed for sampling, so the same question gives the same answer.",
                        minimum=0, maximum=2**31 - 1, step=1, advanced=True)
