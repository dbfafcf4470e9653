"""Secrets and fairness on a shared Space: worker environments, per-job tokens, restarts, caps, SIGTERM.

The mechanics run real workers (``python -m engine worker``) on a tiny random-weight Llama installed as
the "bundled" model through ``TUNE_STUDIO_MODELS``, which is on the workers' allow-list: a worker trains
it in seconds. What each worker was given is read from ``/proc/PID/environ`` of the live process.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.config import TrainConfig
from engine.events import Checkpoint, Done, Interrupted, Log, Progress, Started, Step
from engine.jobs import NEEDS_TOKEN_MESSAGE, PROJECT_ROOT, TOKEN_ENV, VAULT, JobError, JobStore, worker_environment
from engine.limits import LimitError
from engine.workspace import AccessPolicy, token_for_job
from tests.conftest import REPO

SERVER_SECRETS = ("HF_TOKEN", "TUNE_STUDIO_USERS", "SECRET_X", TOKEN_ENV)


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A models folder whose "bundled" model is a random 2-layer Llama (hidden 64) with the bundled tokenizer."""
    from tests.tiny_models import make_tiny_model

    folder = tmp_path_factory.mktemp("tiny-models")
    make_tiny_model(folder / "SmolLM2-135M-Instruct", tokenizer)
    return folder


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch, tiny_models: Path) -> dict[str, str]:
    """The "server's" environment: the tiny model as the bundled one, plus the owner's secrets."""
    monkeypatch.setenv("TUNE_STUDIO_MODELS", str(tiny_models))
    values = {"HF_TOKEN": "hf_OWNER" + secrets.token_hex(8), "TUNE_STUDIO_USERS": "alice:pw" + secrets.token_hex(8),
              "SECRET_X": secrets.token_hex(12), TOKEN_ENV: "hf_STRAY" + secrets.token_hex(8)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "faq.json"
    rows = [{"instruction": f"What is item {i}?", "output": f"Item {i} is a thing number {i}."} for i in range(16)]
    path.write_text(json.dumps(rows))
    return path


def tiny_config(**overrides: Any) -> TrainConfig:
    values = dict(quantization="none", device="cpu", max_steps=2, batch_size=1, grad_accum=1, max_length=64,
                  save_steps=1000, val_fraction=0.0, gradient_checkpointing=False, packing=False, lora_r=4,
                  lora_alpha=8, warmup_ratio=0.0)
    return TrainConfig(**{**values, **overrides})


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def wait_for(predicate: Callable[[], Any], timeout: float = 300, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def worker_env(store: JobStore, job_id: str) -> dict[str, str]:
    """The environment of the job's live worker, read as soon as the job has one."""
    pid = wait_for(lambda: store.load(job_id).pid, what=f"a worker for {job_id}")
    return environ_of(pid)


def assert_no_secret_in_env(env: dict[str, str], server: dict[str, str]) -> None:
    for name in ("HF_TOKEN", "TUNE_STUDIO_USERS", "SECRET_X"):
        assert name not in env, name
    blob = "\n".join(env.values())
    for value in server.values():
        assert value not in blob


def assert_no_file_contains(root: Path, needles: list[str]) -> None:
    """The canary check: no file the app wrote (database, WAL, logs, events, configs, checkpoints) holds them."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{needle[:6]}… found in {path.relative_to(root)}"


@pytest.fixture
def dispatcher(isolated_home: Path) -> Iterator[JobStore]:
    """The web server's background dispatcher (what app.py starts), on the test's data directory."""
    store = JobStore(isolated_home)
    stop = store.start_dispatcher(interval=0.3)
    yield store
    stop.set()


# ----------------------------------------------------------------------------------------- environment


def test_worker_environment_is_the_allow_list_plus_what_the_job_needs(tmp_path: Path) -> None:
    server = {"PATH": "/usr/bin", "HOME": "/home/app", "LC_ALL": "C.UTF-8", "NCCL_DEBUG": "INFO",
              "HF_HUB_OFFLINE": "1", "TUNE_STUDIO_LIMIT_MAX_STEPS": "50", "CUDA_VISIBLE_DEVICES": "0",
              "HF_TOKEN": "hf_owner", "TUNE_STUDIO_USERS": "a:b", "SECRET_X": "x", TOKEN_ENV: "hf_stray",
              "AWS_SECRET_ACCESS_KEY": "k", "PYTHONPATH": "/somewhere/else", "OAUTH_CLIENT_SECRET": "s",
              "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0"}
    env = worker_environment(tmp_path, None, server)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/app", "LC_ALL": "C.UTF-8", "NCCL_DEBUG": "INFO",
                   "HF_HUB_OFFLINE": "1", "TUNE_STUDIO_LIMIT_MAX_STEPS": "50", "CUDA_VISIBLE_DEVICES": "0",
                   "TUNE_STUDIO_HOME": str(tmp_path.resolve()), "PYTHONPATH": PROJECT_ROOT,
                   "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    assert worker_environment(tmp_path, "hf_job", server)[TOKEN_ENV] == "hf_job"


@pytest.mark.slow
def test_each_worker_gets_only_its_own_token_and_no_server_secret(
        server_env: dict[str, str], dispatcher: JobStore, data_file: Path, isolated_home: Path) -> None:
    store = dispatcher
    token_a, token_b = "hf_A" + secrets.token_hex(10), "hf_B" + secrets.token_hex(10)
    a = store.submit(tiny_config(max_steps=3), data_file, owner="ada", hf_token=token_a, visitor="ip:198.51.100.1")
    b = store.submit(tiny_config(), data_file, owner="bob", hf_token=token_b, visitor="ip:198.51.100.2")
    c = store.submit(tiny_config(), data_file, owner="cy", visitor="ip:198.51.100.3")
    assert store.load(b.id).status == "queued" and store.load(b.id).needs_token and not store.load(c.id).needs_token

    env_a = worker_env(store, a.id)
    assert env_a[TOKEN_ENV] == token_a and env_a["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"
    assert env_a["TUNE_STUDIO_HOME"] == str(isolated_home.resolve()) and env_a["PYTHONPATH"] == PROJECT_ROOT
    assert_no_secret_in_env(env_a, server_env)
    assert not VAULT.holds(a.id), "the server forgets a token once its worker has it"

    # A's worker ends and dispatches, but it does not hold B's token: the server's dispatcher starts B.
    env_b = worker_env(store, b.id)
    assert store.load(a.id).status == "done"
    assert env_b[TOKEN_ENV] == token_b and token_a not in "\n".join(env_b.values())
    assert_no_secret_in_env(env_b, server_env)

    env_c = worker_env(store, c.id)
    assert TOKEN_ENV not in env_c and token_b not in "\n".join(env_c.values())
    assert_no_secret_in_env(env_c, server_env)
    assert store.wait(c.id, timeout=300).status == "done"
    assert_no_file_contains(isolated_home, [token_a, token_b, *server_env.values(), "198.51.100."])


# ----------------------------------------------------------------------------------------- restarts


OLD_SERVER = """
import sys
from engine.config import TrainConfig
from engine.jobs import JobStore
config = TrainConfig.from_dict({config!r})
job = JobStore({home!r}).submit(config, {data!r}, owner="bob", hf_token=sys.stdin.readline().strip(), start=False)
print(job.id, flush=True)
sys.stdin.readline()  # stay alive (holding the token in memory) until told to stop
"""


@pytest.mark.slow
def test_a_restart_forgets_tokens_and_the_run_asks_for_it_again(
        server_env: dict[str, str], data_file: Path, isolated_home: Path) -> None:
    token = "hf_BOB" + secrets.token_hex(10)
    script = OLD_SERVER.format(config=tiny_config(max_steps=1).to_dict(), home=str(isolated_home), data=str(data_file))
    old_server = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    old_server.stdin.write(token + "\n")
    old_server.stdin.flush()
    first = old_server.stdout.readline().strip()
    store = JobStore(isolated_home)
    second = store.submit(tiny_config(max_steps=1), data_file, owner="cy", start=False)

    # While the old server lives it holds the token: nobody else starts the job, nor jumps the queue past it.
    assert store.dispatch() == []
    assert [store.load(first).status, store.load(second.id).status] == ["queued", "queued"]

    old_server.stdin.close()
    assert old_server.wait(timeout=60) == 0
    started = store.dispatch()  # the "restarted" server: an empty vault, the holder gone
    parked = store.load(first)
    assert parked.status == "needs_token" and parked.error == NEEDS_TOKEN_MESSAGE
    assert "needs your Hugging Face token again: the server restarted" in parked.error
    assert any(isinstance(e, Log) and e.message == NEEDS_TOKEN_MESSAGE for e in store.events(first))
    assert [j.id for j in started] == [second.id], "the queue moves on past a run waiting for its token"

    with pytest.raises(JobError, match="Paste your Hugging Face token first"):
        store.provide_token(first, "  ")
    with pytest.raises(JobError, match="not waiting for a token"):
        store.provide_token(second.id, token)
    store.wait(second.id, timeout=300)
    store.provide_token(first, token)
    env = worker_env(store, first)
    assert env[TOKEN_ENV] == token
    assert_no_secret_in_env(env, server_env)
    assert store.wait(first, timeout=300).status == "done"
    assert_no_file_contains(isolated_home, [token, *server_env.values()])


def test_interrupted_runs_are_queued_again_from_their_checkpoint_at_start(isolated_home: Path, data_file: Path) -> None:
    store = JobStore(isolated_home)
    plain = store.submit(tiny_config(), data_file, owner="ada", start=False)
    owners = store.submit(tiny_config(), data_file, owner="owner", hf_token="hf_x", start=False)
    visitors = store.submit(tiny_config(), data_file, owner="bob", hf_token="hf_y", start=False)
    for job in (plain, owners, visitors):
        (job.checkpoints_dir / "checkpoint-3").mkdir(parents=True)
        (job.checkpoints_dir / "checkpoint-3" / "trainer_state.json").write_text("{}")
        store.finish(job.id, "interrupted", error="The server restarted.")
        VAULT.discard(job.id)  # what a restart does to memory
    requeued = store.recover_after_restart(token_for=lambda job: "hf_server" if job.owner == "owner" else None)
    assert sorted(requeued) == sorted([plain.id, owners.id])
    for job_id in (plain.id, owners.id):
        record = store.load(job_id)
        assert record.status == "queued" and record.resume_from.endswith("checkpoint-3")
    assert VAULT.take(owners.id) == "hf_server"
    record = store.load(visitors.id)
    assert record.status == "needs_token" and record.resume_from.endswith("checkpoint-3")
    assert store.list()[-1].created_at == plain.created_at, "interrupted runs keep their place in the queue"


# ----------------------------------------------------------------------------------------- SIGTERM

RUN_STEPS = 40  # enough that the signal lands mid-run even on a fast machine; ~1 s a step on a busy 2-core one


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_the_restarted_server_continues_from_it(
        server_env: dict[str, str], data_file: Path, isolated_home: Path) -> None:
    token = "hf_RUN" + secrets.token_hex(10)
    store = JobStore(isolated_home)
    job = store.submit(tiny_config(max_steps=RUN_STEPS), data_file, owner="bob", hf_token=token, visitor="user:bob")
    first_step = wait_for(lambda: next((e for e in store.events(job.id) if isinstance(e, Step)), None),
                          what="the first step")
    t0 = time.monotonic()
    assert store.interrupt_workers(grace=120) == [job.id]  # what app.py does on SIGTERM
    waited = time.monotonic() - t0
    interrupted = store.get(job.id)
    events = store.events(job.id)
    stop = next(e for e in events if isinstance(e, Interrupted))
    checkpoint = interrupted.latest_checkpoint()
    assert interrupted.status == "interrupted" and interrupted.resumable and waited < 60
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{stop.step}"
    assert first_step.step <= stop.step < RUN_STEPS, "stopped after the step under way, before the end"
    assert [e.step for e in events if isinstance(e, Checkpoint)] == [stop.step], "the save came from the signal"
    assert f"checkpoint at step {stop.step}" in stop.reason and stop.resumable
    phases = [e.phase for e in events if isinstance(e, Progress)]
    assert phases[:4] == ["starting", "load", "tokenize", "tokenize"] and "save" in phases
    assert isinstance(events[1], Progress), "the first event after Queued says what the worker is doing"

    # The server restarts: the token is gone with its memory, so the run asks for it, then continues.
    assert store.recover_after_restart() == []
    assert store.load(job.id).status == "needs_token"
    store.provide_token(job.id, token)
    assert worker_env(store, job.id)[TOKEN_ENV] == token
    done = store.wait(job.id, timeout=600)
    events = store.events(job.id)
    assert done.status == "done", done.error
    assert [e.resumed_from_step for e in events if isinstance(e, Started)] == [0, stop.step]
    resumed_steps = [e.step for e in events[events.index(stop):] if isinstance(e, Step)]
    assert resumed_steps == list(range(stop.step + 1, RUN_STEPS + 1)), "only the steps after the checkpoint run"
    assert isinstance(events[-1], Done) and events[-1].steps == RUN_STEPS
    assert_no_file_contains(isolated_home, [token, *server_env.values(), "user:bob"])


@pytest.mark.slow
def test_sigterm_while_the_worker_starts_interrupts_it_at_once_and_starts_nothing_else(
        server_env: dict[str, str], data_file: Path, isolated_home: Path) -> None:
    store = JobStore(isolated_home)
    job = store.submit(tiny_config(max_steps=RUN_STEPS), data_file, owner="ada")
    behind = store.submit(tiny_config(), data_file, owner="bob")
    wait_for(lambda: any(isinstance(e, Progress) for e in store.events(job.id)), what="the worker's first event")
    assert store.interrupt_workers(grace=60) == [job.id]
    record = store.get(job.id)
    stop = next(e for e in store.events(job.id) if isinstance(e, Interrupted))
    assert record.status == "interrupted" and record.latest_checkpoint() is None
    assert "restarted or went to sleep" in stop.reason and stop.resumable
    assert not any(isinstance(e, Step) for e in store.events(job.id))
    assert store.load(behind.id).status == "queued", "a stopping worker must not start the next job"


# ----------------------------------------------------------------------------------------- caps


def test_per_visitor_caps_refuse_with_the_limit_and_what_to_do(
        monkeypatch: pytest.MonkeyPatch, isolated_home: Path, data_file: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNE_STUDIO_LIMIT_MAX_QUEUED_RUNS", "2")
    monkeypatch.setenv("TUNE_STUDIO_LIMIT_MAX_STEPS", "50")
    store = JobStore(isolated_home)
    ada = "ip:203.0.113.7"
    first = store.submit(tiny_config(), data_file, owner="local", visitor=ada, start=False)
    store.submit(tiny_config(), data_file, owner="local", visitor=ada, start=False)
    with pytest.raises(LimitError) as info:
        store.submit(tiny_config(), data_file, owner="local", visitor=ada, start=False)
    assert str(info.value) == ("Counting this run, the number of your runs waiting or training is 3; the limit here "
                               "(Queued runs per visitor) is 2. Wait for one of them to finish, or stop one, then "
                               "try again.")
    store.submit(tiny_config(), data_file, owner="local", visitor="ip:203.0.113.8", start=False)  # someone else
    store.submit(tiny_config(), data_file, owner="cli", start=False)  # the operator's CLI has no cap
    store.cancel(first.id)
    store.submit(tiny_config(), data_file, owner="local", visitor=ada, start=False)
    with pytest.raises(LimitError, match="Queued runs per visitor"):
        store.resume(first.id)  # resuming counts too

    with pytest.raises(LimitError, match=r"'Max steps' is 51; the limit here \(Steps per run\) is 50\. Set 'Max "
                                         r"steps' to 50 or fewer\."):
        store.submit(tiny_config(max_steps=51), data_file, owner="local", visitor="ip:203.0.113.9", start=False)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(100)]))
    with pytest.raises(LimitError, match=r"1 epoch\(s\) over 100 rows at batch 1 × 1 is about 95 steps; the limit "
                                         r"here \(Steps per run\) is 50\. Lower 'Epochs'"):
        store.submit(tiny_config(max_steps=-1, num_epochs=1.0, val_fraction=0.05), rows, owner="local",
                     visitor="ip:203.0.113.9", start=False)

    record = store.load(first.id)
    assert record.visitor_hash == store.visitor_hash(ada) != JobStore(isolated_home).visitor_hash("ip:203.0.113.8")
    assert len(record.visitor_hash) == 64
    assert_no_file_contains(isolated_home, ["203.0.113."])


# ----------------------------------------------------------------------------------------- owner's token


def test_the_servers_token_is_for_the_owners_jobs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_owner")
    space = {"SPACE_ID": "ada/studio", "SPACE_AUTHOR_NAME": "ada", "OAUTH_CLIENT_ID": "x"}
    policy = AccessPolicy.from_env(space)
    assert policy.space_owner == "ada" and not policy.share_owner_token
    assert token_for_job(policy, "ada", None) == "hf_owner"
    assert token_for_job(policy, "bob", None) is None
    assert token_for_job(policy, "bob", " hf_bob ") == "hf_bob"
    assert token_for_job(policy, "ada", "hf_own_paste") == "hf_own_paste"
    shared = AccessPolicy.from_env({**space, "TUNE_STUDIO_SHARE_OWNER_TOKEN": "1"})
    assert token_for_job(shared, "bob", None) == "hf_owner"
    assert AccessPolicy.from_env({**space, "TUNE_STUDIO_OWNER": "org-admin"}).space_owner == "org-admin"
    assert AccessPolicy.from_env({}).space_owner == "local"  # a local run without sign-in: one owner
    assert AccessPolicy.from_env({"TUNE_STUDIO_USERS": "a:b"}).space_owner is None
    assert token_for_job(AccessPolicy.from_env({"TUNE_STUDIO_USERS": "a:b"}), "a", None) is None
    monkeypatch.delenv("HF_TOKEN")
    assert token_for_job(policy, "ada", None) is None


# ----------------------------------------------------------------------------------------- Train tab


def test_train_tab_shows_the_limits_and_offers_the_token_for_a_waiting_run(
        monkeypatch: pytest.MonkeyPatch, isolated_home: Path, data_file: Path) -> None:
    import psutil

    from engine.workspace import LOCAL_OWNER, Workspace
    from ui import train_tab

    monkeypatch.setenv("TUNE_STUDIO_LIMIT_MAX_STEPS", "1234")
    assert train_tab.limits_text() == ("Limits on this server — Queued runs per visitor: **2** · Steps per run: "
                                       "**1,234**")
    store = JobStore()
    job = store.submit(tiny_config(), data_file, owner=LOCAL_OWNER, start=False)
    store._update(job.id, status="needs_token", error=NEEDS_TOKEN_MESSAGE)
    shown = train_tab.view(job.id, Workspace(LOCAL_OWNER))
    assert len(shown) == train_tab.VIEW_SIZE and shown[7].visible is True  # the token panel
    assert NEEDS_TOKEN_MESSAGE in shown[0] and "needs_token" in shown[0]

    busy = store.submit(tiny_config(), data_file, owner="other", start=False)  # holds the device: nothing spawns
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store._update(busy.id, status="running", pid=sleeper.pid,
                      pid_started=psutil.Process(sleeper.pid).create_time())
        *after, cleared = train_tab.provide_token_run(job.id, " hf_again ", SimpleNamespace(username=None))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cleared == "" and after[-1].visible is False
    assert store.load(job.id).status == "queued" and VAULT.take(job.id) == "hf_again"
    assert os.environ.get(TOKEN_ENV) != "hf_again"


# ----------------------------------------------------------------------------------------- the Space restarts


def start_app(home: Path, log_path: Path) -> subprocess.Popen:
    """``python app.py`` as a Space runs it, on a free port, serving ``home``; returns once it answers."""
    from tests.ui_harness import NOT_INHERITED, _wait_for, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update({"TUNE_STUDIO_HOME": str(home), "GRADIO_SERVER_PORT": str(port), "TUNE_STUDIO_PORT": str(port),
                "GRADIO_SERVER_NAME": "127.0.0.1", "TUNE_STUDIO_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1",
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)})
    with log_path.open("a") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/", proc, 240, log_path)
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.slow
def test_a_space_restart_loses_at_most_the_step_under_way(
        server_env: dict[str, str], data_file: Path, isolated_home: Path, tmp_path: Path) -> None:
    import signal

    store = JobStore(isolated_home)
    log_path = tmp_path / "app.log"
    app = start_app(isolated_home, log_path)
    try:
        job = store.submit(tiny_config(max_steps=RUN_STEPS), data_file, owner="local")
        wait_for(lambda: any(isinstance(e, Step) for e in store.events(job.id)), what="the first step")
        app.send_signal(signal.SIGTERM)  # what the Space sends when it restarts or goes to sleep
        assert app.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if app.poll() is None:
            app.kill()
    stopped = store.load(job.id)
    stop = next(e for e in store.events(job.id) if isinstance(e, Interrupted))
    assert stopped.status == "interrupted", stopped.error
    assert stopped.latest_checkpoint().name == f"checkpoint-{stop.step}" and stop.step < RUN_STEPS

    app = start_app(isolated_home, log_path)  # the Space is back: the run continues by itself
    try:
        done = store.wait(job.id, timeout=600)
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=60)
    events = store.events(job.id)
    assert done.status == "done", done.error
    assert [e.resumed_from_step for e in events if isinstance(e, Started)] == [0, stop.step]
    assert isinstance(events[-1], Done) and events[-1].steps == RUN_STEPS
