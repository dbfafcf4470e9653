"""Every bound on what one visitor may send or start, defined once.

Why one place: a shared Space has many visitors, one server and one GPU queue. Each input is bounded
(upload size, row and document size, chat history) and each visitor has a quota (queued runs, steps,
collections, disk), and the UI shows these numbers next to the controls they bound. Handlers, the
engine and the UI all read :func:`limits`, so a limit shown is the limit enforced.

The Space owner changes a limit with an environment variable named after it:
``TUNE_STUDIO_LIMIT_MAX_UPLOAD_MB=200`` and so on (read once per call, never written).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from core.settings import Settings, SettingsError, describe, setting

ENV_PREFIX = "TUNE_STUDIO_LIMIT_"


class LimitError(ValueError):
    """A request goes beyond one of the limits; the message names the limit, the value and what to do."""


class Limits(Settings):
    """Bounds per request and quotas per visitor. Defaults suit a Space shared by a handful of people."""

    max_upload_mb: int = setting(50, "Largest file a visitor may upload (dataset or document).",
                                 label="Largest upload (MB)", minimum=1, maximum=10_000, step=1)
    max_row_chars: int = setting(200_000, "Longest single row of a dataset, in characters; longer rows are "
                                 "reported as errors instead of being tokenized.", label="Longest row (characters)",
                                 minimum=1_000, maximum=50_000_000, step=1_000)
    max_document_chars: int = setting(2_000_000, "Most text taken from one document for RAG (about 500 pages).",
                                      label="Longest document (characters)", minimum=10_000,
                                      maximum=500_000_000, step=10_000)
    max_chunks_per_collection: int = setting(50_000, "Most chunks one RAG collection may hold.",
                                             label="Chunks per collection", minimum=100, maximum=10_000_000,
                                             step=100)
    max_collections: int = setting(20, "Most RAG collections one visitor may keep.", label="Collections per visitor",
                                   minimum=1, maximum=10_000, step=1)
    max_workspace_mb: int = setting(2_048, "Disk one visitor's workspace may use (datasets, collections, reports).",
                                    label="Disk per visitor (MB)", minimum=10, maximum=10_000_000, step=10)
    max_queued_runs: int = setting(2, "Runs one visitor may have waiting or running at once.",
                                   label="Queued runs per visitor", minimum=1, maximum=1_000, step=1)
    max_steps: int = setting(10_000, "Most optimizer steps one run may take.", label="Steps per run",
                             minimum=1, maximum=100_000_000, step=1)
    max_message_chars: int = setting(8_000, "Longest chat message or question.", label="Longest message "
                                     "(characters)", minimum=100, maximum=10_000_000, step=100)
    max_history_chars: int = setting(40_000, "Longest chat history a visitor may send with a message.",
                                     label="Longest chat history (characters)", minimum=1_000,
                                     maximum=100_000_000, step=1_000)
    model_memory_mb: int = setting(0, "Memory the loaded chat models may use together; the least recently used "
                                   "model is unloaded beyond it. 0 = automatic (80% of the GPU, or half the RAM).",
                                   label="Model memory budget (MB)", minimum=0, maximum=10_000_000, step=1)
    max_lab_model_b: float = setting(3.0, "Largest model, in billions of parameters, the Lab walks layer by layer "
                                     "or loads twice to compare precisions (LoRA counts read only config.json and "
                                     "work on any size).", label="Largest Lab model (billion parameters)",
                                     minimum=0.001, maximum=10_000.0, step=0.001)
    confirm_build_seconds: int = setting(120, "Index builds estimated to take longer than this ask before they "
                                         "start.", label="Ask before builds longer than (s)", minimum=1,
                                         maximum=1_000_000, step=1)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """Defaults, overridden by ``TUNE_STUDIO_LIMIT_<NAME>`` variables; a bad value names the variable."""
        env = os.environ if env is None else env
        values = {}
        for info in describe(cls):
            raw = env.get(ENV_PREFIX + info.name.upper())
            if raw is not None and raw.strip():
                values[info.name] = raw.strip()
        try:
            return cls.from_dict(values)
        except SettingsError as exc:
            raise LimitError(f"{ENV_PREFIX}{exc.name.upper()}: {exc}") from exc

    def check(self, name: str, value: float, what: str, fix: str) -> None:
        """Refuse ``value`` when it is over limit ``name``: "<what> is N, the limit is M. <fix>"."""
        bound = getattr(self, name)
        if value > bound:
            label = next(i.label for i in describe(type(self)) if i.name == name)
            raise LimitError(f"{what} is {value:,}; the limit here ({label}) is {bound:,}. {fix}")

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the UI's "Limits on this server" panel."""
        return [(info.label, f"{getattr(self, info.name):,}") for info in describe(type(self))]


def limits() -> Limits:
    """The limits in force now (cheap: read from the environment each call)."""
    return Limits.from_env()
