"""Typed job events and the append-only JSONL log that carries them (every kind of job: training, index builds).

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
from typing import ClassVar


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
class Interrupted(JobEvent):
    """The worker was asked to stop by the system (a Space restarting or going to sleep), not by the user.

    It saved a checkpoint at the end of its current step first, so the run resumes from ``step``; the
    server re-queues interrupted runs by itself when it starts again.
    """

    kind: ClassVar[str] = "interrupted"
    step: int = 0
    reason: str = ""
    resumable: bool = True


@dataclass
class Progress(JobEvent):
    """One schema for every long phase of every kind of job (training, index build, question generation).

    "phase, item i of n, page j of m": ``done`` of ``total`` counts units (bytes of a download, files,
    chunks, rows, steps); ``item`` names what is being worked on (a file name or a model id, never a
    server path); ``page``/``pages`` locate the work inside that item. Every tab renders it with the
    same formatter, so a download, an OCR pass and an embedding pass read alike.
    """

    kind: ClassVar[str] = "progress"
    phase: str = ""
    done: float = 0
    total: float | None = None
    unit: str = ""
    item: str = ""
    page: int | None = None
    pages: int | None = None
    rate: float | None = None
    eta_seconds: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """Share done in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


@dataclass
class Log(JobEvent):
    kind: ClassVar[str] = "log"
    message: str = ""
    level: str = "info"


EVENT_TYPES: dict[str, type[JobEvent]] = {
    cls.kind: cls for cls in (Queued, Done, Failed, Cancelled, Interrupted, Log, Progress)
}


def register_event(cls: type[JobEvent]) -> type[JobEvent]:
    """Add an event type that one kind of job defines (training adds steps and evaluations), so that
    :func:`parse_event` reads it back; used as a class decorator."""
    EVENT_TYPES[cls.kind] = cls
    return cls


TERMINAL = (Done, Failed, Cancelled, Interrupted)


def parse_event(line: str) -> JobEvent | None:
    """One JSON line back into its dataclass; None for a torn line, a foreign line or an unknown type.

    Never raises: one bad line (a writer killed mid-write) must not hide the events after it.
    """
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    cls = EVENT_TYPES.get(data.pop("event", None))
    if cls is None or not isinstance(data.get("job_id"), str):
        return None
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None


class EventLog:
    """Append-only JSONL file; each append is one ``write`` + fsync.

    A writer killed mid-write (``kill -9``, out of memory) can still leave a torn last line. The next
    append therefore starts on a fresh line when the file does not end with one, and readers skip lines
    they cannot parse, so a torn line costs only itself and never hides a later event (a Failed written
    by the server after the worker died, say).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, event: JobEvent) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (event.to_json() + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if _ends_without_newline(fd):
                line = b"\n" + line
            os.write(fd, line)  # one write with O_APPEND: concurrent writers never interleave inside a line
            os.fsync(fd)
        finally:
            os.close(fd)

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
        lines = (raw.decode("utf-8", errors="replace") for raw in complete.split(b"\n") if raw.strip())
        events = [e for e in map(parse_event, lines) if e]
        return iter(events), offset + len(complete)


def _ends_without_newline(fd: int) -> bool:
    """True when the file is non-empty and its last byte is not a newline (a torn last line)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
