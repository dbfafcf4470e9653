"""Start the Tune Studio web app: ``python app.py`` serves http://127.0.0.1:7860.

Environment overrides: ``TUNE_STUDIO_HOST`` / ``TUNE_STUDIO_PORT`` (or Gradio's own
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``), ``TUNE_STUDIO_HOME`` for the data directory.
On a Hugging Face Space, Gradio's ``GRADIO_SERVER_NAME=0.0.0.0`` is already set.
Sign-in and demo mode: ``TUNE_STUDIO_USERS`` ("name:password,..."), ``TUNE_STUDIO_DEMO=1``
(see ``engine/workspace.py``). ``python app.py --share`` (or ``TUNE_STUDIO_SHARE=1``) adds a
public gradio.live link for a local run.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

from engine.jobs import JobStore
from engine.workspace import AccessPolicy, token_for_job
from ui.app import build_app, launch_kwargs

log = logging.getLogger("tune_studio.app")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def server_address() -> tuple[str, int]:
    host = os.environ.get("TUNE_STUDIO_HOST") or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    port = os.environ.get("TUNE_STUDIO_PORT") or os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT
    return host, int(port)


def start_jobs(store: JobStore, policy: AccessPolicy) -> threading.Event:
    """After a (re)start: re-queue interrupted runs, ask for lost tokens, start the queues, keep them moving.

    The server holds the visitors' tokens in memory, so it, not a finishing worker, starts a job that
    needs one: the background dispatcher notices a free lane within seconds. The Space owner's own jobs
    get the server's token again (``token_for_job``); everyone else's wait in ``needs_token``.
    """
    requeued = store.recover_after_restart(token_for=lambda job: token_for_job(policy, job.owner, None))
    if requeued:
        log.info("Re-queued %d interrupted job(s) from their latest checkpoint", len(requeued))
    store.dispatch()
    return store.start_dispatcher()


def forward_sigterm(store: JobStore, stop_dispatcher: threading.Event) -> None:
    """On SIGTERM (a Space restarting or going to sleep) let running workers checkpoint, then stop serving.

    Workers run in their own session, so the container's signal never reaches them: the server forwards it,
    waits a bounded time for them to save, and then stops as Gradio does on Ctrl+C.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: Any) -> None:
        if stop_dispatcher.is_set():
            return  # already stopping: a second signal must not start the wait again
        stop_dispatcher.set()  # a worker ending now must not be replaced by a new one
        stopped = store.interrupt_workers()
        log.info("SIGTERM: asked %d worker(s) to save a checkpoint and stop", len(stopped))
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt  # Gradio's block_thread closes the server on this

    signal.signal(signal.SIGTERM, handle)


demo = build_app()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve Tune Studio.")
    parser.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = server_address()
    job_store = JobStore()
    dispatcher = start_jobs(job_store, AccessPolicy.from_env())
    demo.queue(default_concurrency_limit=4).launch(server_name=host, server_port=port, prevent_thread_lock=True,
                                                   **launch_kwargs(share=args.share))
    forward_sigterm(job_store, dispatcher)  # after launch, which may install a handler of its own to chain to
    demo.block_thread()
