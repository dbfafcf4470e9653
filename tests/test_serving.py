"""One shared model, many visitors: a request is only ever answered under its own adapter.

The gate is tested without timing: ``SteppedCondition`` lets the test decide which waiting thread wakes
when, so the interleaving that once let a request join another adapter's group (issue #18) is replayed
exactly. A stress of thousands of mixed requests checks the invariant in bulk, and a tiny real model
checks provenance and that closing a stream stops its generation at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.infer import AdapterGate, Provenance

SETTLE_TIMEOUT = 30.0  # a deadlock guard only: every wait below ends on an event, not on time


class SteppedCondition:
    """A ``threading.Condition`` whose waiters wake only when the test says so, one at a time.

    ``notify_all`` marks the current waiters as woken-up candidates; ``wake(name)`` lets exactly that
    thread re-acquire the lock and re-check its predicate. Real conditions wake in any order; this one
    lets a test replay each order on purpose.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta = threading.Condition()
        self._waiting: dict[str, threading.Event] = {}
        self._notified: set[str] = set()

    def __enter__(self) -> SteppedCondition:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        name = threading.current_thread().name
        event = threading.Event()
        with self._meta:
            self._waiting[name] = event
            self._meta.notify_all()
        self._lock.release()
        try:
            if not event.wait(SETTLE_TIMEOUT):
                raise AssertionError(f"{name} was never woken")
        finally:
            self._lock.acquire()
        return True

    def notify_all(self) -> None:
        with self._meta:
            self._notified |= set(self._waiting)
            self._meta.notify_all()

    def waiting(self) -> set[str]:
        with self._meta:
            return set(self._waiting)

    def notified(self) -> set[str]:
        with self._meta:
            return set(self._notified)

    def wake(self, name: str) -> None:
        with self._meta:
            assert name in self._notified, f"{name} was not notified (waiting: {sorted(self._waiting)})"
            self._notified.discard(name)
            event = self._waiting.pop(name)
        event.set()


class StandInModel:
    """Records which adapter is selected; each request's body blocks until the test releases it."""

    def __init__(self) -> None:
        self.selected: str | None = None
        self.selections: list[str | None] = []
        self.mismatches: list[tuple[str, str | None, str | None]] = []

    def select(self, name: str | None) -> None:
        self.selected = name
        self.selections.append(name)


class Request(threading.Thread):
    """One visitor's request: enters the gate for ``adapter``, checks the selection, waits to be released."""

    def __init__(self, name: str, adapter: str | None, gate: AdapterGate, model: StandInModel):
        super().__init__(name=name, daemon=True)
        self.adapter, self.gate, self.model = adapter, gate, model
        self.state = "new"
        self.release = threading.Event()

    def run(self) -> None:
        self.state = "queued"
        with self.gate.using(self.adapter):
            self.state = "running"
            self._check("start")
            self.release.wait(SETTLE_TIMEOUT)
            self._check("end")
        self.state = "done"

    def _check(self, when: str) -> None:
        if self.model.selected != self.adapter:
            self.model.mismatches.append((f"{self.name}@{when}", self.adapter, self.model.selected))


def settle(cond: SteppedCondition, requests: list[Request]) -> None:
    """Wait until every thread is parked: waiting on the condition, running its body, or done."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        waiting = cond.waiting()
        if all(r.state in ("running", "done") or (r.state == "queued" and r.name in waiting) for r in requests):
            return
        time.sleep(0.001)
    raise AssertionError({r.name: r.state for r in requests})


def start(cond: SteppedCondition, requests: list[Request], request: Request) -> None:
    requests.append(request)
    request.start()
    settle(cond, requests)


def finish(cond: SteppedCondition, requests: list[Request], request: Request) -> None:
    request.release.set()
    request.join(SETTLE_TIMEOUT)
    assert request.state == "done"
    settle(cond, requests)


def wake(cond: SteppedCondition, requests: list[Request], name: str) -> None:
    cond.wake(name)
    settle(cond, requests)


@pytest.mark.parametrize("first", ["B", "A2"])
def test_request_never_joins_a_group_that_switched_while_it_waited(first: str) -> None:
    """The sequence from issue #18: A runs; B waits to switch; another A waits behind B; A ends.

    Whichever waiter wakes first, A2 must run under A and B under B. On the old gate, waking B first
    let A2 join B's group without re-checking, and generate under B's adapter.
    """
    cond, model = SteppedCondition(), StandInModel()
    gate = AdapterGate(model.select, condition=cond)  # type: ignore[arg-type]
    requests: list[Request] = []
    a1, b, a2 = (Request(n, ad, gate, model) for n, ad in (("A1", "A"), ("B", "B"), ("A2", "A")))
    start(cond, requests, a1)
    assert a1.state == "running"
    start(cond, requests, b)
    start(cond, requests, a2)
    assert (b.state, a2.state) == ("queued", "queued")  # A2 may not overtake B, which waits to switch

    finish(cond, requests, a1)
    wake(cond, requests, first)
    for name in sorted(cond.notified()):
        wake(cond, requests, name)
    assert b.state == "running" and a2.state == "queued", "B switches first: it asked first"
    assert model.mismatches == []

    finish(cond, requests, b)
    while a2.state != "running":
        for name in sorted(cond.notified()):
            wake(cond, requests, name)
    finish(cond, requests, a2)
    assert model.mismatches == []
    assert model.selections == ["A", "B", "A"]


def test_base_requests_wait_behind_an_adapter_switch_and_then_share_the_base() -> None:
    """[base, A, base, base]: the two late base requests run together, after A, never under A."""
    cond, model = SteppedCondition(), StandInModel()
    gate = AdapterGate(model.select, condition=cond)  # type: ignore[arg-type]
    requests: list[Request] = []
    r1, ra, r2, r3 = (Request(n, ad, gate, model) for n, ad in
                      (("base1", None), ("A", "A"), ("base2", None), ("base3", None)))
    for r in (r1, ra, r2, r3):
        start(cond, requests, r)
    assert [r.state for r in (r1, ra, r2, r3)] == ["running", "queued", "queued", "queued"]
    finish(cond, requests, r1)
    while ra.state != "running":
        for name in sorted(cond.notified()):
            wake(cond, requests, name)
    for name in sorted(cond.notified()):
        wake(cond, requests, name)
    assert (r2.state, r3.state) == ("queued", "queued")
    finish(cond, requests, ra)
    while not (r2.state == r3.state == "running"):
        for name in sorted(cond.notified()):
            wake(cond, requests, name)
    finish(cond, requests, r2)
    finish(cond, requests, r3)
    assert model.mismatches == []
    assert model.selections == [None, "A", None]


def test_an_exclusive_operation_waits_for_running_requests_and_forces_a_new_selection() -> None:
    """Loading or evicting happens with nothing generating; afterwards the next request selects again."""
    model = StandInModel()
    gate = AdapterGate(model.select)
    inside = threading.Event()
    release = threading.Event()
    running_when_entered: list[int] = []

    def generate() -> None:
        with gate.using("A"):
            inside.set()
            release.wait(SETTLE_TIMEOUT)

    def evict() -> None:
        with gate.exclusive():
            running_when_entered.append(gate.running)

    worker = threading.Thread(target=generate)
    worker.start()
    assert inside.wait(SETTLE_TIMEOUT)
    evictor = threading.Thread(target=evict)
    evictor.start()
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while len(gate._line) != 1 and time.monotonic() < deadline:  # the evictor is in line, waiting
        time.sleep(0.001)
    assert len(gate._line) == 1 and running_when_entered == []
    release.set()
    worker.join(SETTLE_TIMEOUT)
    evictor.join(SETTLE_TIMEOUT)
    assert running_when_entered == [0]
    with gate.using("A"):
        pass
    assert model.selections == ["A", "A"]  # selected again after the exclusive operation


def test_a_failing_switch_releases_the_line() -> None:
    """An adapter that cannot be selected fails its own request only; the next request still runs."""
    calls: list[str | None] = []

    def select(name: str | None) -> None:
        calls.append(name)
        if name == "broken":
            raise RuntimeError("cannot load")

    gate = AdapterGate(select)
    with pytest.raises(RuntimeError), gate.using("broken"):
        pass
    with gate.using("A"):
        assert gate.active == "A"
    assert calls == ["broken", "A"]


def run_stress(gate_factory: Callable[[Callable[[str | None], None]], AdapterGate], requests: int,
               threads: int, seed: int) -> tuple[int, int, float]:
    """Many threads, random adapters and short random holds; returns (requests, mismatches, longest switch wait)."""
    model = StandInModel()
    gate = gate_factory(model.select)
    rng = random.Random(seed)
    plans = [[(rng.choice([None, "A", "B"]), rng.random() < 0.3) for _ in range(requests // threads)]
             for _ in range(threads)]
    lock = threading.Lock()
    mismatches = [0]

    def visitor(plan: list[tuple[str | None, bool]]) -> None:
        for adapter, hold in plan:
            with gate.using(adapter):
                bad = model.selected != adapter
                if hold:
                    time.sleep(0.0002)
                bad = bad or model.selected != adapter
            if bad:
                with lock:
                    mismatches[0] += 1

    workers = [threading.Thread(target=visitor, args=(plan,)) for plan in plans]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not any(w.is_alive() for w in workers), "the stress deadlocked"
    return sum(len(p) for p in plans), mismatches[0], gate.longest_switch_wait


def test_stress_thousands_of_mixed_requests_never_run_under_another_adapter() -> None:
    total, mismatches, _ = run_stress(AdapterGate, requests=3000, threads=6, seed=18)
    assert total == 3000
    assert mismatches == 0


def test_provenance_line_reads_in_plain_words() -> None:
    record = Provenance("bundled/SmolLM2-135M-Instruct", adapter="my-run", adapter_hash="3f2a9c0d",
                        collection="handbook", collection_version=4)
    assert record.line() == "base SmolLM2-135M-Instruct · adapter my-run (3f2a…) · collection handbook v4"
    assert Provenance("Qwen/Qwen2.5-0.5B-Instruct").line() == "base Qwen2.5-0.5B-Instruct · no adapter"


# ----------------------------------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> object:
    """A 2-layer random Llama with the bundled tokenizer and two random adapters: real generation and PEFT."""
    from engine.infer import ChatModel
    from tests.tiny_models import make_tiny_adapter

    adapters = {name: make_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp(name) / "adapter", seed)
                for name, seed in (("run-a", 1), ("run-b", 2))}
    return ChatModel(str(tiny_model_dir)), adapters


def test_answer_records_its_base_and_adapter_and_the_active_adapter_read_from_the_model(tiny_chat) -> None:
    from core.generation import GenerationSettings

    chat, adapters = tiny_chat
    settings = GenerationSettings(max_new_tokens=4)
    records: list[Provenance] = []
    chat.generate("hello", adapter=adapters["run-a"], adapter_label="run-a", settings=settings,
                  on_provenance=records.append)
    chat.generate("hello", settings=settings, on_provenance=records.append)
    with_adapter, base = records
    assert with_adapter.adapter == "run-a" and with_adapter.adapter_hash and len(with_adapter.adapter_hash) == 16
    assert with_adapter.active_at_start == with_adapter.active_at_end != None  # noqa: E711 - read from PEFT
    assert base.adapter is None and base.active_at_start is None and base.active_at_end is None
    assert with_adapter.generation["max_new_tokens"] == 4
    assert with_adapter.base_model == base.base_model


def test_closing_a_stream_stops_its_generation_and_frees_the_model(tiny_chat) -> None:
    """A visitor who leaves mid-answer releases the model at once: no generating on to max tokens."""
    from core.generation import GenerationSettings

    chat, adapters = tiny_chat
    lengths: list[int] = []
    original = chat.model.generate

    def measured(*args: object, **kwargs: object) -> object:
        out = original(*args, **kwargs)
        lengths.append(int(out.shape[-1]) - int(kwargs["input_ids"].shape[-1]))  # type: ignore[union-attr]
        return out

    chat.model.generate = measured
    try:
        stream = chat.stream("count forever", adapter=adapters["run-b"],
                             settings=GenerationSettings(max_new_tokens=4000, repetition_penalty=1.0))
        pieces = [next(stream) for _ in range(3)]
        stream.close()
    finally:
        del chat.model.generate
    assert len(pieces) == 3
    assert lengths and lengths[0] < 4000, "the generation ran on after the stream was closed"
    assert chat.gate.running == 0


def test_a_withheld_answer_when_the_model_reports_another_adapter(tiny_chat, monkeypatch) -> None:
    """The answer's record is read from the model; if it differs from the request, nothing is returned."""
    from core.generation import GenerationSettings
    from engine.infer import AdapterMismatchError

    chat, adapters = tiny_chat
    chat.generate("x", adapter=adapters["run-a"], settings=GenerationSettings(max_new_tokens=1))
    monkeypatch.setattr(chat, "actual_adapter", lambda: "someone-else")
    pieces: list[str] = []
    with pytest.raises(AdapterMismatchError, match="withheld"):
        pieces.extend(chat.stream("x", adapter=adapters["run-a"], settings=GenerationSettings(max_new_tokens=2)))
    assert pieces == []


def test_adapters_beyond_the_limit_are_unloaded_least_recently_used_first(tiny_chat, monkeypatch) -> None:
    from core.generation import GenerationSettings
    from engine import infer

    chat, adapters = tiny_chat
    monkeypatch.setattr(infer, "MAX_LOADED_ADAPTERS", 1)
    settings = GenerationSettings(max_new_tokens=1)
    chat.generate("x", adapter=adapters["run-a"], settings=settings)
    chat.generate("x", adapter=adapters["run-b"], settings=settings)
    assert list(chat._adapters) == [infer.adapter_name(adapters["run-b"])]
    records: list[Provenance] = []
    chat.generate("x", adapter=adapters["run-a"], adapter_label="run-a", settings=settings,
                  on_provenance=records.append)  # reloaded on demand
    assert records[0].adapter == "run-a" and records[0].active_at_end == infer.adapter_name(adapters["run-a"])


def test_adapter_folder_without_config_is_refused_in_plain_words(tiny_chat, tmp_path: Path) -> None:
    chat, _ = tiny_chat
    with pytest.raises(FileNotFoundError, match="no finished LoRA adapter"):
        chat.generate("x", adapter=tmp_path)
