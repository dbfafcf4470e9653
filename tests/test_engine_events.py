"""The JSONL event log is the one stream the UI, CLI and tests read."""

from __future__ import annotations

from engine.events import (
    Done,
    Eval,
    EventLog,
    Failed,
    Interrupted,
    Progress,
    Started,
    Step,
    loss_curve,
    parse_event,
)


def test_events_round_trip_as_typed_dataclasses(tmp_path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    written = [Started("j", total_steps=10), Step("j", step=1, loss=2.5), Eval("j", step=1, eval_loss=2.7),
               Failed("j", reason="boom", fixes=["lower batch"]), Done("j", final_loss=1.0)]
    for event in written:
        log.append(event)
    assert log.read() == written


def test_a_torn_last_line_is_left_for_the_next_poll(tmp_path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.append(Step("j", step=1, loss=1.0))
    with open(log.path, "a") as handle:
        handle.write('{"event": "step", "job_id": "j", "st')
    events, offset = log.iter_from(0)
    assert [e.step for e in events] == [1]
    with open(log.path, "a") as handle:
        handle.write('ep": 2, "loss": 0.5}\n')
    events, _ = log.iter_from(offset)
    assert [e.step for e in events] == [2]


def test_unknown_or_broken_lines_are_ignored() -> None:
    assert parse_event("not json") is None
    assert parse_event('{"event": "mystery"}') is None
    assert parse_event("[1, 2]") is None and parse_event("42") is None
    assert parse_event('{"event": "step", "job_id": "j", "step": 1, "bogus": 2}').step == 1
    assert parse_event('{"event": "step"}') is None  # no job id: not one of ours


def test_a_torn_line_from_a_crashed_writer_never_hides_a_later_event(tmp_path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.append(Step("j", step=1, loss=1.0))
    with open(log.path, "ab") as handle:  # the worker died mid-write, halfway through a multi-byte character
        handle.write('{"event": "log", "job_id": "j", "message": "caf\u00e9'.encode()[:-1])
    log.append(Failed("j", reason="The training process stopped unexpectedly.", resumable=True))
    log.append(Progress("j", phase="save", message="after"))
    events = log.read()
    assert [type(e) for e in events] == [Step, Failed, Progress]
    assert events[1].reason == "The training process stopped unexpectedly."
    assert log.path.read_bytes().count(b"\n") == 4  # the torn line was closed, not glued to the next event
    followed, offset = log.iter_from(0)
    assert len(list(followed)) == 3 and offset == log.path.stat().st_size


def test_interrupted_and_progress_events_round_trip(tmp_path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    written = [Progress("j", phase="tokenize", item="data.json", done=10, total=40, unit="rows"),
               Interrupted("j", step=3, reason="The server restarted.")]
    for event in written:
        log.append(event)
    assert log.read() == written
    assert written[0].fraction == 0.25 and written[1].resumable


def test_loss_curve_after_resume_replaces_the_steps_that_were_run_again() -> None:
    events = [
        Started("j", total_steps=6),
        *[Step("j", step=s, loss=10.0 - s) for s in range(1, 6)],
        Eval("j", step=4, eval_loss=7.0),
        Started("j", total_steps=6, resumed_from_step=4),
        Step("j", step=5, loss=3.0),
        Step("j", step=6, loss=2.0),
    ]
    curve = loss_curve(events)
    train = {p["step"]: p["loss"] for p in curve if p["split"] == "train"}
    assert train == {1: 9.0, 2: 8.0, 3: 7.0, 4: 6.0, 5: 3.0, 6: 2.0}
    assert [p for p in curve if p["split"] == "eval"] == [{"step": 4, "loss": 7.0, "split": "eval"}]
