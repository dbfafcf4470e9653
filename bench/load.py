"""Load test: several gradio_client visitors chatting, first on an idle server, then while a real run trains.

    python -m bench load [--clients 4] [--questions 3] [--max-new-tokens 32] [--app app.py] [--no-record]

The app (the full ``app.py`` by default) runs in a subprocess with a temporary ``TUNE_STUDIO_HOME``, so
nothing of yours is touched; the converted bundled model is shared through ``TUNE_STUDIO_MODELS``. Each
client is its own ``gradio_client.Client`` holding its own conversation (the history goes back with every
message, as in the browser). Per answer we record the time to the first streamed token and the total
time; per phase the errors, p50/p95, load average, and how many answers were *generating* at the same
moment (which shows whether concurrent chats really run concurrently). The loaded phase starts once the
training job has taken its first optimiser step, and the steps it takes during the phase are counted.

Results are appended to ``bench/RESULTS.md`` under "## Load" (``--no-record`` only prints them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ui_harness import running_app  # the same launcher the tests use

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
DATA = REPO / "ui" / "demo_data" / "tune_studio_faq.json"
QUESTIONS = (
    "What is Tune Studio?",
    "How do I fine-tune a model on my own data?",
    "What does RAG mean?",
    "Which file formats can I upload?",
    "How do I compare two models?",
    "What is a LoRA adapter?",
)


@dataclass
class Answer:
    client: int
    turn: int
    submitted: float
    first_token: float | None = None
    finished: float | None = None
    text: str = ""
    error: str | None = None
    updates: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def total(self) -> float | None:
        return None if self.finished is None else self.finished - self.submitted


@dataclass
class Phase:
    name: str
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    train_steps: int | None = None
    train_step_rate: float | None = None
    train_progressing: bool | None = None  # took a step during the phase or within a grace period after it

    @property
    def errors(self) -> list[Answer]:
        return [a for a in self.answers if a.error or not a.text.strip()]

    def values(self, what: str) -> list[float]:
        return [v for a in self.answers if (v := getattr(a, what)) is not None]

    def max_overlap(self, start: str, end: str) -> int:
        """Most answers between ``start`` and ``end`` at one moment (``first_token``..``finished`` = generating)."""
        points = []
        for a in self.answers:
            s, e = getattr(a, start), getattr(a, end)
            if s is not None and e is not None:
                points += [(s, 1), (e, -1)]
        best = current = 0
        for _, delta in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start at the same instant
            current += delta
            best = max(best, current)
        return best


    def overlap_share(self, start: str = "first_token", end: str = "finished") -> float | None:
        """Of the time at least one answer was streaming, the share when two or more were (0 = strictly one
        at a time). Robust to the few milliseconds by which client-side timestamps trail the server's."""
        points = []
        for a in self.answers:
            s, e = getattr(a, start), getattr(a, end)
            if s is not None and e is not None and e > s:
                points += [(s, 1), (e, -1)]
        if not points:
            return None
        points.sort(key=lambda p: (p[0], p[1]))
        busy = both = 0.0
        current, last = 0, points[0][0]
        for t, delta in points:
            if current >= 1:
                busy += t - last
            if current >= 2:
                both += t - last
            current, last = current + delta, t
        return both / busy if busy else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


# ------------------------------------------------------------------------------------------ the app


def has_chat(url: str) -> bool:
    from gradio_client import Client

    return "/chat" in Client(url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]


# ------------------------------------------------------------------------------------------ clients


def _assistant_text(history: Any) -> str:
    if not history:
        return ""
    last = [m for m in history if m.get("role") == "assistant" and not (m.get("metadata") or {}).get("title")]
    if not last:
        return ""
    content = last[-1].get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def chat_once(client: Any, message: str, history: Any, answer: Answer, max_new_tokens: int,
              model: str = "base") -> Any:
    """One streamed /chat call; fills ``answer`` and returns the new history."""
    job = client.submit(message, history, model, None, max_new_tokens=max_new_tokens, api_name="/chat")
    out = None
    for out in job:
        answer.updates += 1
        if answer.first_token is None and _assistant_text(out[0]).strip():
            answer.first_token = time.perf_counter()
    out = job.result()
    answer.finished = time.perf_counter()
    answer.text = _assistant_text(out[0])
    if answer.first_token is None and answer.text.strip():
        answer.first_token = answer.finished
    return out[0]


def run_clients(url: str, clients: int, questions: int, max_new_tokens: int, *, stagger: float = 0.0,
                model: str = "base") -> list[Answer]:
    """``clients`` visitors at once, each asking ``questions`` questions in one conversation."""
    from gradio_client import Client

    connections = [Client(url, verbose=False) for _ in range(clients)]
    answers: list[Answer] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def visitor(number: int, client: Any) -> None:
        start.wait()
        time.sleep(stagger * number)
        history = None
        for turn in range(questions):
            answer = Answer(number, turn, time.perf_counter())
            with lock:
                answers.append(answer)
            try:
                history = chat_once(client, QUESTIONS[(number + turn) % len(QUESTIONS)], history, answer,
                                    max_new_tokens, model)
            except Exception as exc:  # counted, never fatal: the point is to see them
                answer.error = f"{type(exc).__name__}: {exc}"
                answer.finished = time.perf_counter()
                history = None

    threads = [threading.Thread(target=visitor, args=(i, c), daemon=True) for i, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in connections:
        with contextlib.suppress(Exception):
            client.close()
    return answers


def run_phase(name: str, url: str, clients: int, questions: int, max_new_tokens: int, **kwargs: Any) -> Phase:
    phase = Phase(name, load_before=os.getloadavg())
    t0 = time.perf_counter()
    phase.answers = run_clients(url, clients, questions, max_new_tokens, **kwargs)
    phase.seconds = time.perf_counter() - t0
    phase.load_after = os.getloadavg()
    return phase


# ------------------------------------------------------------------------------------------ training


def training_config(max_steps: int, max_length: int) -> Any:
    from engine.config import load_preset

    return load_preset("quick-cpu-demo").replace(max_steps=max_steps, max_length=max_length, batch_size=2,
                                                 save_steps=max_steps, val_fraction=0.0)


def submit_training(home: Path, max_steps: int = 400, max_length: int = 128, data: Path = DATA) -> Any:
    from engine.jobs import JobStore

    return JobStore(home).submit(training_config(max_steps, max_length), data, name="load-test")


def training_steps(home: Path, job_id: str) -> int:
    from engine.events import Step
    from engine.jobs import JobStore

    steps = [e.step for e in JobStore(home).events(job_id) if isinstance(e, Step)]
    return max(steps, default=0)


def wait_for_first_step(home: Path, job_id: str, timeout: float = 300) -> None:
    from engine.jobs import JobStore

    store = JobStore(home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if training_steps(home, job_id) >= 1:
            return
        job = store.get(job_id)
        if job.finished:
            raise RuntimeError(f"the training job ended before its first step: {job.status} {job.error}")
        time.sleep(1)
    raise TimeoutError(f"the training job took no step within {timeout:.0f} s")


def wait_for_progress(home: Path, job_id: str, after_step: int, timeout: float = 240) -> int:
    """The step the job reaches beyond ``after_step`` (a CPU step can take tens of seconds under load); 0 if none."""
    from engine.jobs import JobStore

    store = JobStore(home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = training_steps(home, job_id)
        if step > after_step:
            return step
        if store.get(job_id).finished:
            return 0
        time.sleep(1)
    return 0


def renice_worker(home: Path, job_id: str, niceness: int) -> bool:
    """Lower the training worker's CPU priority (what a `nice` in engine/jobs.py would do)."""
    import psutil

    from engine.jobs import JobStore

    pid = JobStore(home).get(job_id).pid
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        for proc in [process, *process.children(recursive=True)]:
            proc.nice(niceness)
    except psutil.Error:
        return False
    return True


def stop_training(home: Path, job_id: str, timeout: float = 120) -> str:
    from engine.jobs import JobStore

    store = JobStore(home)
    with contextlib.suppress(Exception):
        store.cancel(job_id)
    try:
        return store.wait(job_id, timeout=timeout).status
    except TimeoutError:
        job = store.get(job_id)
        if job.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.pid, 9)
        return "killed"


# ------------------------------------------------------------------------------------------ report


def summary(phase: Phase) -> dict[str, Any]:
    ttft, total = phase.values("ttft"), phase.values("total")

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 2)

    return {"phase": phase.name, "answers": len(phase.answers), "errors": len(phase.errors),
            "ttft_p50": r(percentile(ttft, 50)), "ttft_p95": r(percentile(ttft, 95)),
            "total_p50": r(percentile(total, 50)), "total_p95": r(percentile(total, 95)),
            "seconds": r(phase.seconds), "in_flight_max": phase.max_overlap("submitted", "finished"),
            "generating_max": phase.max_overlap("first_token", "finished"),
            "generating_overlap": r(phase.overlap_share()),
            "load_before": [round(x, 2) for x in phase.load_before],
            "load_after": [round(x, 2) for x in phase.load_after],
            "train_steps": phase.train_steps, "train_step_rate": r(phase.train_step_rate),
            "train_progressing": phase.train_progressing,
            "error_messages": sorted({a.error or "empty answer" for a in phase.errors})[:5]}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def verdict(phases: list[dict[str, Any]], max_ratio: float) -> tuple[bool, str]:
    """Responsive = no errors anywhere, the first loaded phase's first-token p95 within ``max_ratio`` of idle,
    and the training job still making progress."""
    idle, loaded = phases[0], phases[1]
    errors = sum(p["errors"] for p in phases)
    p95 = ratio(loaded["ttft_p95"], idle["ttft_p95"])
    ok = errors == 0 and p95 is not None and p95 <= max_ratio and bool(loaded["train_progressing"])
    why = (f"{errors} error(s); loaded/idle time-to-first-token p95 ×{p95} (goal ≤ ×{max_ratio}); "
           f"training took {loaded['train_steps']} step(s) during the loaded phase and "
           f"{'kept' if loaded['train_progressing'] else 'did not keep'} making progress")
    return ok, why


def markdown(args: argparse.Namespace, phases: list[dict[str, Any]], ok: bool, why: str, app_used: str) -> str:
    import torch

    idle = next(s for s in phases if s["phase"] == "idle")
    rows = []
    for s in phases:
        steps = "" if s["train_steps"] is None else f"{s['train_steps']} ({s['train_step_rate']}/s)"
        rows.append(f"| {s['phase']} | {s['answers']} | {s['errors']} | {s['ttft_p50']} | {s['ttft_p95']} | "
                    f"{s['total_p50']} | {s['total_p95']} | {s['in_flight_max']} | {s['generating_max']} | "
                    f"{s['generating_overlap']} | "
                    f"{s['load_before'][0]} → {s['load_after'][0]} | {steps} |")
    for s in phases[phases.index(idle) + 1:]:
        rows.append(f"| {s['phase']} / idle | | | ×{ratio(s['ttft_p50'], idle['ttft_p50'])} | "
                    f"×{ratio(s['ttft_p95'], idle['ttft_p95'])} | ×{ratio(s['total_p50'], idle['total_p50'])} | "
                    f"×{ratio(s['total_p95'], idle['total_p95'])} | | | | | |")
    command = (f"python -m bench load --clients {args.clients} --questions {args.questions} "
               f"--max-new-tokens {args.max_new_tokens} --train-max-length {args.train_max_length}"
               + (f" --nice-worker {args.nice_worker}" if args.nice_worker else ""))
    return "\n".join([
        f"### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — `{command}`",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, app `{app_used}` "
        f"(queue `default_concurrency_limit=4`), bundled SmolLM2-135M, greedy, {args.max_new_tokens} new tokens; "
        f"{args.clients} gradio_client visitors × {args.questions} questions in one conversation each. The loaded "
        f"phases run while a real QLoRA job trains (quick-cpu-demo preset, max length {args.train_max_length}, "
        "batch 2). Times in seconds, measured at the client; *in flight* = requests the server held at once, "
        "*generating* = answers streaming tokens at once; *generating overlap* = share of the streaming time "
        "during which two or more answers streamed (0 = strictly one at a time).",
        "",
        "| phase | answers | errors | first token p50 | first token p95 | total p50 | total p95 | in flight max "
        "| generating max | generating overlap | load average (1 min) | training steps in phase |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"**Verdict: {'PASS' if ok else 'FAIL'}** — {why}.",
        "",
    ])


def record(text: str, note: str = "") -> None:
    """Append under '## Load' in bench/RESULTS.md (the section is created on first use)."""
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    if "\n## Load\n" not in current:
        current = current.rstrip() + "\n\n## Load\n\n" + (note.strip() + "\n\n" if note else "")
    RESULTS.write_text(current.rstrip() + "\n\n" + text.strip() + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ main


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4, help="concurrent gradio_client visitors")
    parser.add_argument("--questions", type=int, default=3, help="questions per visitor (one conversation)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--train-max-length", type=int, default=128, help="training sequence length")
    parser.add_argument("--app", default=str(REPO / "app.py"),
                        help="app script; the full app by default (tests/apps/chat_only.py if it has no Chat tab)")
    parser.add_argument("--max-ratio", type=float, default=3.0,
                        help="'responsive' = loaded/idle first-token p95 at most this")
    parser.add_argument("--nice-worker", type=int, default=0,
                        help="also measure a third phase with the training worker reniced to this (e.g. 10)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNE_STUDIO_MODELS", str(Path.home() / ".cache" / "tune_studio_test_models"))
    home = Path(tempfile.mkdtemp(prefix="load-home-"))
    app = Path(args.app).resolve()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(running_app(app, home=home, timeout=240, log_name="load-app"))
        if not has_chat(url):
            stack.close()
            app = REPO / "tests" / "apps" / "chat_only.py"
            print(f"{args.app} has no /chat endpoint yet; using {_shown(app)}", file=sys.stderr)
            url = stack.enter_context(running_app(app, home=home, timeout=240, log_name="load-app"))
        print(f"serving {_shown(app)} at {url} (data in {home})", file=sys.stderr)
        warm = Answer(-1, 0, time.perf_counter())
        from gradio_client import Client

        chat_once(Client(url, verbose=False), "Hello!", None, warm, 8)  # load the model before timing
        alone = run_phase("idle, one visitor", url, 1, args.questions, args.max_new_tokens)
        print(json.dumps(summary(alone)), file=sys.stderr)
        idle = run_phase("idle", url, args.clients, args.questions, args.max_new_tokens)
        print(json.dumps(summary(idle)), file=sys.stderr)

        job = submit_training(home, max_length=args.train_max_length)
        phases = [idle]  # the verdict compares phases[1] (training) with phases[0] (idle, same visitors)
        try:
            wait_for_first_step(home, job.id)
            names = ["while training"] + ([f"while training, worker nice {args.nice_worker}"] if args.nice_worker
                                          else [])
            for name in names:
                if "nice" in name and not renice_worker(home, job.id, args.nice_worker):
                    print("could not renice the worker", file=sys.stderr)
                    break
                before, t0 = training_steps(home, job.id), time.perf_counter()
                phase = run_phase(name, url, args.clients, args.questions, args.max_new_tokens)
                phase.train_steps = training_steps(home, job.id) - before
                phase.train_step_rate = phase.train_steps / (time.perf_counter() - t0)
                phase.train_progressing = wait_for_progress(home, job.id, before) > before
                phases.append(phase)
                print(json.dumps(summary(phase)), file=sys.stderr)
        finally:
            status = stop_training(home, job.id)
        print(f"training job {status}", file=sys.stderr)

    summaries = [summary(p) for p in phases]
    ok, why = verdict(summaries, args.max_ratio)
    text = markdown(args, [summary(alone), *summaries], ok, why, _shown(app))
    print(text)
    if not args.no_record:
        record(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
