"""Training's own events (steps, evaluations, checkpoints) on top of the job event log in ``core.events``.

The worker writes every event to the run's ``events.jsonl``; the UI, the CLI and the tests all read that
same file, so a closed tab or a restarted server loses nothing: the whole curve replays from disk. The
generic lifecycle (queued, progress, done, failed...) is defined once in ``core.events`` and re-exported
here, so training code reads one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from core.events import (
    EVENT_TYPES,
    TERMINAL,
    Cancelled,
    Done,
    EventLog,
    Failed,
    Interrupted,
    JobEvent,
    Log,
    Progress,
    Queued,
    parse_event,
    register_event,
)

__all__ = ["EVENT_TYPES", "TERMINAL", "Cancelled", "Checkpoint", "Done", "Eval", "EventLog", "Failed",
           "Interrupted", "JobEvent", "Log", "Progress", "Queued", "Started", "Step", "loss_curve", "parse_event",
           "reward_curve"]


@register_event
@dataclass
class Started(JobEvent):
    kind: ClassVar[str] = "started"
    total_steps: int = 0
    device: str = ""
    base_model: str = ""
    train_rows: int = 0
    eval_rows: int = 0
    resumed_from_step: int = 0
    method: str = "sft"
    reference: str = ""  # preference runs: what the rewards are measured against, in plain words
    processes: int = 1  # training processes (one per GPU, DDP); the steps count the batches of all of them


@register_event
@dataclass
class Step(JobEvent):
    kind: ClassVar[str] = "step"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    # Preference runs (DPO, ORPO, KTO): TRL's implicit rewards on this step's batch.
    reward_chosen: float | None = None
    reward_rejected: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None


@register_event
@dataclass
class Eval(JobEvent):
    kind: ClassVar[str] = "eval"
    step: int = 0
    eval_loss: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None  # held-out pairs whose chosen answer the model now prefers


@register_event
@dataclass
class Checkpoint(JobEvent):
    kind: ClassVar[str] = "checkpoint"
    step: int = 0
    path: str = ""


def loss_curve(events: list[JobEvent]) -> list[dict[str, Any]]:
    """Train and eval loss points for plotting; after a resume, steps re-run replace the earlier ones."""
    points: dict[tuple[str, int], float] = {}
    for event in events:
        if isinstance(event, Started) and event.resumed_from_step:
            points = {k: v for k, v in points.items() if k[1] <= event.resumed_from_step}
        elif isinstance(event, Step) and event.loss is not None:
            points[("train", event.step)] = event.loss
        elif isinstance(event, Eval) and event.eval_loss is not None:
            points[("eval", event.step)] = event.eval_loss
    return [{"step": step, "loss": loss, "split": split} for (split, step), loss in sorted(points.items(),
            key=lambda item: (item[0][1], item[0][0]))]


#: The reward series a preference run plots, by the name the chart shows.
REWARD_SERIES = {"reward_chosen": "chosen", "reward_rejected": "rejected", "reward_margin": "margin"}


def reward_curve(events: list[JobEvent]) -> list[dict[str, Any]]:
    """Rewards of chosen and rejected answers and their margin per step (preference runs), resume-aware."""
    points: dict[tuple[int, str], float] = {}
    for event in events:
        if isinstance(event, Started) and event.resumed_from_step:
            points = {k: v for k, v in points.items() if k[0] <= event.resumed_from_step}
        elif isinstance(event, Step):
            for field_name, series in REWARD_SERIES.items():
                value = getattr(event, field_name)
                if value is not None:
                    points[(event.step, series)] = value
    return [{"step": step, "reward": value, "series": series} for (step, series), value in sorted(points.items())]
