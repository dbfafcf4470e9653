"""The job store's bookkeeping: queue order, cancel, and a vanished worker turning into a failure."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import psutil
import pytest

from engine.config import TrainConfig
from engine.events import Cancelled, Failed, Queued
from engine.jobs import JobError, JobStore


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "home")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"instruction": "Say hi", "output": "Hi"}]')
    return path


def test_jobs_wait_in_fifo_order_with_known_positions(store: JobStore, data_file) -> None:
    jobs = [store.submit(TrainConfig(), data_file, start=False, owner=f"user{i}") for i in range(3)]
    assert [store.queue_position(j.id) for j in jobs] == [1, 2, 3]
    assert next(e for e in store.events(jobs[2].id) if isinstance(e, Queued)).position == 3
    store.cancel(jobs[0].id)
    assert [store.queue_position(j.id) for j in jobs] == [None, 1, 2]


def test_cancelling_a_queued_job_ends_it_and_logs_why(store: JobStore, data_file) -> None:
    job = store.submit(TrainConfig(), data_file, start=False)
    assert store.cancel(job.id).status == "cancelled"
    assert isinstance(store.events(job.id)[-1], Cancelled)
    with pytest.raises(JobError, match="already ended"):
        store.cancel(job.id)


def test_a_worker_that_vanished_is_reported_failed_with_a_reason_never_done(store: JobStore, data_file) -> None:
    job = store.submit(TrainConfig(), data_file, start=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store._update(job.id, status="running", pid=gone.pid, started_at=1.0, last_step=3, total_steps=10)
    record = store.get(job.id)
    assert record.status == "failed"
    assert "stopped unexpectedly at step 3 of 10" in record.error
    failed = [e for e in store.events(job.id) if isinstance(e, Failed)]
    assert len(failed) == 1 and failed[0].resumable
    store.get(job.id)  # a second look must not report it twice
    assert len([e for e in store.events(job.id) if isinstance(e, Failed)]) == 1


def test_a_failed_run_can_be_queued_again(store: JobStore, data_file) -> None:
    job = store.submit(TrainConfig(), data_file, start=False)
    store.finish(job.id, "failed", error="boom")
    store._update(job.id, status="failed")
    # Another job holds the device, so the resumed one waits in the queue instead of starting.
    blocker = store.submit(TrainConfig(), data_file, start=False)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import psutil

        store._update(blocker.id, status="running", pid=sleeper.pid,
                      pid_started=psutil.Process(sleeper.pid).create_time())
        resumed = store.resume(job.id)
        assert resumed.status == "queued" and resumed.resume_from is None
        assert store.queue_position(job.id) == 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_only_finished_or_stopped_runs_resume_and_missing_data_is_refused(store: JobStore, data_file, tmp_path) -> None:
    job = store.submit(TrainConfig(), data_file, start=False)
    with pytest.raises(JobError, match="only stopped, failed or interrupted"):
        store.resume(job.id)
    with pytest.raises(JobError, match=r"missing\.json is no longer on the server; upload it again") as info:
        store.submit(TrainConfig(), tmp_path / "missing.json", start=False)
    assert str(tmp_path) not in str(info.value)  # messages never show server paths
    with pytest.raises(JobError, match="no run with id"):
        store.get("nope")


def test_runs_are_listed_per_owner(store: JobStore, data_file) -> None:
    store.submit(TrainConfig(), data_file, start=False, owner="ada")
    store.submit(TrainConfig(), data_file, start=False, owner="bob")
    assert [j.owner for j in store.list("ada")] == ["ada"]
    assert len(store.list()) == 2


def test_the_config_is_stored_with_the_run(store: JobStore, data_file) -> None:
    job = store.submit(TrainConfig(lora_r=4), data_file, start=False, mapping={"format": "alpaca"},
                       data_options={"placeholders": {"name": "Ada"}})
    record = store.get(job.id)
    assert record.config.lora_r == 4
    assert record.mapping == {"format": "alpaca"} and record.data_options == {"placeholders": {"name": "Ada"}}
    assert TrainConfig.from_yaml(record.run_dir / "config.yaml") == record.config


def test_the_queue_moves_on_when_the_running_worker_vanished(store: JobStore, tmp_path) -> None:
    # The next job's data is refused at once, so its real worker starts, fails fast and records why.
    bad = tmp_path / "images.json"
    bad.write_text('[{"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", '
                   '"content": "ok"}], "images": ["a.jpg"]}]')
    first = store.submit(TrainConfig(), bad, start=False)
    second = store.submit(TrainConfig(), bad, start=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store._update(first.id, status="running", pid=gone.pid, started_at=1.0)
    assert store.get(first.id).status == "failed"
    finished = store.wait(second.id, timeout=120)
    assert finished.status == "failed"
    reason = [e for e in store.events(second.id) if isinstance(e, Failed)][-1].reason
    assert "image" in reason.lower()


def _hold_device(store: JobStore, job_id: str) -> subprocess.Popen:
    """Mark a job as training, held by a real live process, so its lane is busy."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    store._update(job_id, status="running", pid=sleeper.pid, pid_started=psutil.Process(sleeper.pid).create_time(),
                  started_at=1.0)
    return sleeper


def test_an_index_job_runs_in_its_own_lane_beside_training(store: JobStore, data_file) -> None:
    training = store.submit(TrainConfig(), data_file, start=False, owner="ada")
    waiting = store.submit(TrainConfig(), data_file, start=False, owner="bob")
    sleeper = _hold_device(store, training.id)
    try:
        build = store.submit_task("index", {"collection": "docs"}, owner="ada", name="docs", start=False)
        assert (build.kind, build.lane, build.payload) == ("index", "cpu", {"collection": "docs"})
        assert store.queue_position(build.id) == 1 and store.queue_position(waiting.id) == 1  # one queue per lane
        started = store.dispatch()
        assert [j.id for j in started] == [build.id], "the build must not wait behind training"
        assert store.get(waiting.id).status == "queued"
        assert store.wait(build.id, timeout=180).finished  # whatever its runner made of an empty payload
        assert [j.id for j in store.list()] == [waiting.id, training.id], "training lists never show index jobs"
        assert {j.id for j in store.list(kind=None)} == {training.id, waiting.id, build.id}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_unknown_kinds_and_unstorable_payloads_are_refused(store: JobStore) -> None:
    with pytest.raises(JobError, match="Unknown kind of job 'paint'"):
        store.submit_task("paint", {}, owner="ada", name="x", start=False)
    with pytest.raises(JobError, match="cannot be stored"):
        store.submit_task("index", {"when": object()}, owner="ada", name="x", start=False)


def test_a_kind_whose_runner_is_missing_fails_with_a_clear_event(isolated_home, monkeypatch) -> None:
    from engine import __main__ as cli

    store = JobStore()  # the data directory the worker command uses too
    job = store.submit_task("index", {}, owner="ada", name="docs", start=False)
    monkeypatch.setitem(cli.RUNNERS, "index", "services.no_such_runner:run_index_job")
    assert cli.main(["worker", job.id]) == 1
    record = store.get(job.id)
    failed = [e for e in store.events(job.id) if isinstance(e, Failed)]
    assert record.status == "failed" and len(failed) == 1
    assert "cannot run 'index' jobs" in failed[0].reason and "services.no_such_runner" in failed[0].reason
    assert failed[0].reason == record.error


def test_an_older_database_gains_the_new_columns(tmp_path, data_file) -> None:
    home = tmp_path / "old"
    home.mkdir()
    with sqlite3.connect(home / "jobs.sqlite") as db:  # the first release's table, with one run in it
        from engine.jobs import _SCHEMA

        db.executescript(_SCHEMA)
        db.execute("INSERT INTO jobs (id, owner, name, status, created_at, config_json, data_path, run_dir)"
                   " VALUES ('old-1', 'ada', 'old run', 'done', 1.0, '{}', ?, ?)", (str(data_file), str(home)))
    old = JobStore(home).get("old-1")
    assert (old.kind, old.lane, old.needs_token, old.visitor_hash) == ("train", "device", False, None)
