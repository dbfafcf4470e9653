"""Typed job events and the append-only JSONL log that carries them.

The worker writes every event to ``events.jsonl`` in its run folder; the UI, the CLI and the
tests all read that same file. A closed tab or a restarted server therefore loses nothing: the
whole curve can be replayed from disk at any time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class JobEvent:
    """Base of every event: which job, when, and a type tag used in the JSON line."""

    kind: ClassVar[str] = "event"
    job_id: str
    time: float = field(default_factory=time.time, kw_only=True)

    def to_json(self) -> str:
        return json.dumps({"event": self.kind, **dataclasses.asdict(self)}, default=str)


@dataclass
class Queued(JobEvent):
    kind: ClassVar[str] = "queued"
    position: int = 0


@dataclass
class Started(JobEvent):
    kind: ClassVar[str] = "started"
    total_steps: int = 0
    device: str = ""
    base_model: str = ""
    train_rows: int = 0
    eval_rows: int = 0
    resumed_from_step: int = 0


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


@dataclass
class Eval(JobEvent):
    kind: ClassVar[str] = "eval"
    step: int = 0
    eval_loss: float | None = None


@dataclass
class Checkpoint(JobEvent):
    kind: ClassVar[str] = "checkpoint"
    step: int = 0
    path: str = ""


@dataclass
class Done(JobEvent):
    kind: ClassVar[str] = "done"
    adapter_dir: str = ""
    final_loss: float | None = None
    eval_loss: float | None = None
    steps: int = 0
    duration_seconds: float = 0.0


@dataclass
class Failed(JobEvent):
    kind: ClassVar[str] = "failed"
    reason: str = ""
    fixes: list[str] = field(default_factory=list)
    resumable: bool = False
    detail: str = ""


@dataclass
class Cancelled(JobEvent):
    kind: ClassVar[str] = "cancelled"
    step: int = 0
    resumable: bool = False


@dataclass
class Log(JobEvent):
    kind: ClassVar[str] = "log"
    message: str = ""
    level: str = "info"


EVENT_TYPES: dict[str, type[JobEvent]] = {
    cls.kind: cls for cls in (Queued, Started, Step, Eval, Checkpoint, Done, Failed, Cancelled, Log)
}
TERMINAL = (Done, Failed, Cancelled)


def parse_event(line: str) -> JobEvent | None:
    """One JSON line back into its dataclass; None for a torn last line or an unknown type."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    cls = EVENT_TYPES.get(data.pop("event", None))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class EventLog:
    """Append-only JSONL file; each append is one ``write`` + fsync so a crash never tears history."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, event: JobEvent) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(event.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[JobEvent]:
        return list(self.iter_from(0)[0])

    def iter_from(self, offset: int) -> tuple[Iterator[JobEvent], int]:
        """Events after byte ``offset`` and the new offset; lets followers poll cheaply."""
        if not self.path.exists():
            return iter(()), offset
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # leave a half-written last line for the next poll
        events = [e for e in (parse_event(line) for line in complete.decode("utf-8").splitlines()) if e]
        return iter(events), offset + len(complete)


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
