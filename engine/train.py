"""One fine-tuning run: the user's data and a :class:`TrainConfig` in, a LoRA adapter out.

Runs inside the worker process. The well-kept libraries do the work — TRL's ``SFTTrainer`` with
a PEFT LoRA config on a bitsandbytes-quantised base — and a ``TrainerCallback`` turns the
trainer's logs into typed events in the run's JSONL log, checks for a stop request after every
step, and records checkpoints so any run can be resumed. A finished run's ``metrics.json`` also holds its
measured peak memory next to the estimate (:mod:`engine.memory`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from core.files import write_atomic
from engine import distributed, memory
from engine.config import TrainConfig, eval_interval
from engine.events import (
    Cancelled,
    Checkpoint,
    Done,
    Eval,
    EventLog,
    Failed,
    Interrupted,
    Log,
    Progress,
    Started,
    Step,
)
from engine.jobs import TOKEN_ENV, JobRecord, JobStore

#: Which function builds the trainer of each method, as "module:function". A string, so engine.preference
#: (which builds on this module) is imported only by the runs that need it, without an import cycle.
TRAINER_BUILDERS = {"sft": "engine.train:build_sft_trainer", "dpo": "engine.preference:build_preference_trainer",
                    "orpo": "engine.preference:build_preference_trainer",
                    "kto": "engine.preference:build_preference_trainer"}
SERVER_STOPPED = "The server restarted or went to sleep."


@dataclass
class TrainResult:
    status: str  # "done", "cancelled" or "interrupted"
    steps: int
    final_loss: float | None
    eval_loss: float | None


class WorkerInterrupted(BaseException):
    """SIGTERM arrived before training started: nothing to checkpoint, stop now and resume later."""


class Interruption:
    """What a SIGTERM (a Space restarting or going to sleep) does to this worker, depending on the phase.

    While loading and preparing there is no step to save, so the worker stops at once. During training
    the trainer finishes its current step, saves a checkpoint and stops, so a restart loses at most that
    step. While the finished run saves its adapter the signal waits: that takes seconds and the run is done.
    """

    def __init__(self) -> None:
        self.requested = False
        self.phase = "setup"  # "setup", "training" or "finishing"

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.phase == "setup":
            raise WorkerInterrupted("stopped before training started")


def resolve_optimizer(config: TrainConfig, device: str) -> str:
    """'auto' means paged 8-bit AdamW on a GPU (memory) and plain AdamW on CPU (8-bit states need CUDA)."""
    if config.optimizer != "auto":
        return config.optimizer
    return "paged_adamw_8bit" if device == "cuda" else "adamw_torch"


def auto_eval_steps(config: TrainConfig, total_steps: int) -> int:
    """Steps between evaluations (``engine.config.eval_interval``); a short run evaluates only at the end, which
    the trainer does after its last step (or :func:`run_trainer` if it did not)."""
    return eval_interval(config, total_steps)


def cap_validation(train: list[Any], held_out: list[Any], max_rows: int,
                   key: Callable[[Any], Any] | None = None) -> tuple[list[Any], list[Any]]:
    """At most ``max_rows`` held-out examples are evaluated; the other held-out examples train.

    Examples with the same ``key`` (default: ``example.key()``, equal examples) stay on one side, as the split
    keeps them: whole groups are kept for evaluation until the cap is reached, the other groups go back to
    training (preference data passes its prompt as the key).
    """
    if len(held_out) <= max_rows:
        return train, held_out
    key = key or (lambda example: example.key())
    sizes = Counter(key(example) for example in held_out)
    kept_keys: set[Any] = set()
    count = 0
    for group, size in sizes.items():  # first-seen order: the split's own shuffled order
        if count + size <= max_rows or not kept_keys:
            kept_keys.add(group)
            count += size
    evaluated = [ex for ex in held_out if key(ex) in kept_keys]
    return train + [ex for ex in held_out if key(ex) not in kept_keys], evaluated


def planned_steps(config: TrainConfig, sequences: int, processes: int = 1) -> int:
    """Optimizer steps the run will take: max steps, or epochs over the (packed) training sequences (each step
    reads a batch on every process)."""
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = max(1, math.ceil(sequences / (config.batch_size * config.grad_accum * processes)))
    return max(1, math.ceil(per_epoch * config.num_epochs))


def build_datasets(job: JobRecord, tokenizer: Any, config: TrainConfig, log: EventLog) -> tuple[Any, Any, dict]:
    """Tokenise with the same code path the Data tab's preview uses; labels are -100 outside trained tokens."""
    from engine import data

    mapping = data.ColumnMapping.from_dict(job.mapping) if job.mapping else None
    prepared = data.prepare(job.data_path, mapping=mapping, **job.data_options)
    item = Path(job.data_path).name
    log.append(Progress(job.id, phase="tokenize", item=item, done=0, total=len(prepared.examples), unit="rows"))
    report = data.validate(prepared, tokenizer, config.max_length, config.train_on)
    for warning in prepared.warnings:
        log.append(Log(job.id, message=warning, level="warning"))
    usable = data.training_examples(prepared, report)
    skipped = len(prepared.examples) - len(usable)
    if skipped:
        log.append(Log(job.id, level="warning", message=f"Skipping {skipped} row(s) with errors; the Data tab "
                                                       "lists them with row numbers."))
    train_examples, eval_examples = cap_validation(
        *data.split_train_validation(usable, config.val_fraction, config.seed), config.eval_max_rows)
    counter = RowCounter(job.id, log, item, len(usable))
    train_dataset = encode_dataset(tokenizer, train_examples, config, counter)
    if train_dataset is None:
        raise data.DatasetError(
            "No example has any token to train on after cutting to max length. Raise 'Max length' or check that "
            "your rows contain assistant replies."
        )
    eval_dataset = encode_dataset(tokenizer, eval_examples, config, counter) if eval_examples else None
    fingerprint = {
        "file": str(job.data_path),
        "sha256": data.fingerprint_file(job.data_path),
        "format": prepared.detection.format,
        "rows": len(prepared.examples),
        "skipped_rows": skipped,
        "train_rows": len(train_examples),
        "eval_rows": len(eval_examples),
        "train_sequences": len(train_dataset),
        "mapping": job.mapping,
        "options": job.data_options,
    }
    return train_dataset, eval_dataset, fingerprint


#: Examples encoded between two 'Preparing the data: i of n rows' events (at most about one a second).
ENCODE_CHUNK = 256


class RowCounter:
    """'Preparing the data: i of n rows' while examples are encoded, at most about once a second."""

    def __init__(self, job_id: str, log: EventLog, item: str, total: int, every_s: float = 1.0):
        self.job_id, self.log, self.item, self.total, self.every_s = job_id, log, item, total, every_s
        self.done = 0
        self._last = time.monotonic()

    def count(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.append(Progress(self.job_id, phase="tokenize", item=self.item, done=self.done,
                                     total=self.total, unit="rows"))


def encode_dataset(tokenizer: Any, examples: list[Any], config: TrainConfig, counter: RowCounter) -> Any:
    """Token ids and labels (-100 outside the trained tokens) as a ``datasets.Dataset``; None when empty."""
    from datasets import Dataset

    from engine import data

    rows = []
    for start in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[start:start + ENCODE_CHUNK]
        for encoded in data.encode_examples(tokenizer, chunk, config.max_length, config.train_on):
            labels = [t if m else -100 for t, m in zip(encoded.input_ids, encoded.assistant_masks, strict=True)]
            rows.append({"input_ids": encoded.input_ids, "labels": labels})
        counter.count(len(chunk))
    return Dataset.from_list(rows) if rows else None


#: TRL's log keys for a preference run's implicit rewards, and the Step fields they fill.
REWARD_LOGS = {"rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
               "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy"}


def reward_fields(logs: dict[str, float]) -> dict[str, float]:
    """The reward numbers present in one training log line (none for SFT)."""
    return {name: float(logs[key]) for key, name in REWARD_LOGS.items() if logs.get(key) is not None}


class EventCallback(TrainerCallback):
    """Bridges ``transformers`` callbacks to typed events; also honours stop requests between steps."""

    def __init__(self, job_id: str, log: EventLog, store: JobStore | None, meta: dict[str, Any],
                 interruption: Interruption | None = None):
        self.job_id, self.log, self.store, self.meta = job_id, log, store, meta
        self.interruption = interruption
        self.cancelled = False
        self.interrupted = False
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.last_eval_step: int | None = None
        self._t0 = time.time()
        self._tokens = (0.0, time.time())
        self._first_step_time: float | None = None
        self._first_step = 0
        self._eval_batches = 0
        self._eval_shown = time.monotonic()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.time()
        self._first_step = state.global_step
        self.log.append(Started(self.job_id, total_steps=state.max_steps, resumed_from_step=state.global_step,
                                processes=args.world_size, **self.meta))

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """'Evaluating: batch i of n', at most about once a second (a long evaluation shows it is moving)."""
        self._eval_batches += 1
        now = time.monotonic()
        if now - self._eval_shown < 1.0:
            return
        self._eval_shown = now
        loader = kwargs.get("eval_dataloader")
        total = len(loader) if loader is not None and hasattr(loader, "__len__") else None
        self.log.append(Progress(self.job_id, phase="evaluate", done=self._eval_batches, total=total,
                                 unit="batches"))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._eval_batches = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        logs = logs or {}
        now = time.time()
        if "eval_loss" in logs:
            self.last_eval_loss = logs["eval_loss"]
            self.last_eval_step = state.global_step
            self.log.append(Eval(self.job_id, step=state.global_step, eval_loss=logs["eval_loss"],
                                 reward_margin=logs.get("eval_rewards/margins"),
                                 reward_accuracy=logs.get("eval_rewards/accuracies")))
            return
        if "loss" not in logs:
            return
        tokens_per_second = None
        if "num_tokens" in logs:
            prev_tokens, prev_time = self._tokens
            if now > prev_time and logs["num_tokens"] > prev_tokens:
                tokens_per_second = (logs["num_tokens"] - prev_tokens) / (now - prev_time)
            self._tokens = (logs["num_tokens"], now)
        done_steps = state.global_step - self._first_step
        eta = (now - self._t0) / done_steps * (state.max_steps - state.global_step) if done_steps > 0 else None
        self.last_loss = logs["loss"]
        self.log.append(Step(
            self.job_id, step=state.global_step, total_steps=state.max_steps, epoch=round(state.epoch or 0.0, 4),
            loss=logs["loss"], learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
            tokens_per_second=tokens_per_second, eta_seconds=eta, elapsed_seconds=now - self._t0,
            **reward_fields(logs),
        ))
        if self.store is not None:
            self.store.mark_progress(self.job_id, state.global_step, state.max_steps, logs["loss"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Trainer measures its token count from the start of the log window; restart it for the next one.
        self._tokens = (0.0, time.time())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # On several processes every rank takes the same decision after the same step (engine.distributed).
        interrupted, cancelled = distributed.any_rank(
            self.interruption is not None and self.interruption.requested,
            self.store is not None and self.store.cancel_requested(self.job_id))
        if interrupted:
            self.interrupted = True
            control.should_save = True  # a restart loses at most this step
            control.should_training_stop = True
        elif cancelled:
            self.cancelled = True
            control.should_save = True  # leave a checkpoint to resume from
            control.should_training_stop = True
        elif state.global_step >= state.max_steps:
            control.should_save = False  # the finished adapter is saved next: a last checkpoint would only cost time
        # The flow callback has already decided what happens after this step; say so before it starts.
        if control.should_evaluate:
            self._eval_batches = 0
            self.log.append(Progress(self.job_id, phase="evaluate", message=f"after step {state.global_step}"))
        if control.should_save:
            self.log.append(Progress(self.job_id, phase="save", done=state.global_step, total=state.max_steps,
                                     unit="steps", message="checkpoint"))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.log.append(Checkpoint(self.job_id, step=state.global_step, path=str(path)))


def trainer_arguments(job: JobRecord, device: str, dtype: Any, has_eval: bool) -> dict[str, Any]:
    """Our settings in the vocabulary every TRL trainer config shares (the one place the two meet)."""
    import torch

    config = job.config
    return dict(
        output_dir=str(job.checkpoints_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=resolve_optimizer(config, device),
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=auto_eval_steps(config, config.max_steps if config.max_steps > 0 else 50),
        report_to="none",
        use_cpu=device == "cpu",
        bf16=device == "cuda" and dtype == torch.bfloat16,
        fp16=device == "cuda" and dtype == torch.float16,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # Liger's fused kernels (RMSNorm, SwiGLU, RoPE, linear + cross-entropy) where they run: Triton on a GPU.
        # SFT only: TRL's Liger preference losses with a PEFT reference adapter have never run here.
        use_liger_kernel=(device == "cuda" and config.method == "sft"
                          and importlib.util.find_spec("liger_kernel") is not None),
    )


def build_sft_config(job: JobRecord, device: str, dtype: Any, has_eval: bool) -> Any:
    """TRL's ``SFTConfig``: the shared arguments plus padding-free packing."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(job, device, dtype, has_eval),
        packing=job.config.packing,
        packing_strategy="bfd",  # best-fit packing, padding-free: examples never attend to each other
    )


def model_label(model_id: str) -> str:
    """What progress lines call the model: its registry name, or a local folder's name (never a server path)."""
    from engine.models import MODELS

    known = next((m.label for m in MODELS if m.id == model_id), None)
    return known or (Path(model_id).name if Path(model_id).is_absolute() else model_id)


def load_tokenizer_announced(job: JobRecord, hf_token: str | None, log: EventLog) -> Any:
    """The tokenizer, its phase announced first so the run shows life within seconds."""
    from engine.models import BUNDLED_ID, load_tokenizer, local_config_path

    if job.config.base_model == BUNDLED_ID and local_config_path(BUNDLED_ID) is None:
        log.append(Progress(job.id, phase="convert", item=model_label(BUNDLED_ID),
                            message="first time only, about half a minute"))
    log.append(Progress(job.id, phase="load", item=model_label(job.config.base_model), message="tokenizer"))
    return load_tokenizer(job.config.base_model, hf_token, on_progress=_downloading(job, log))


def load_model_announced(job: JobRecord, hf_token: str | None, log: EventLog) -> Any:
    """The (quantised) base model, announced; a Hub download reports bytes, rate and ETA as they arrive."""
    from engine.models import load_base_model

    config = job.config
    log.append(Progress(job.id, phase="load", item=model_label(config.base_model), message="weights"))
    return load_base_model(config.base_model, quantization=config.quantization, device=config.device,
                           dtype=config.dtype, token=hf_token, on_progress=_downloading(job, log))


def _downloading(job: JobRecord, log: EventLog) -> Any:
    def on_progress(progress: Any) -> None:
        log.append(progress.to_event(job.id))
    return on_progress


def tokenize_announced(job: JobRecord, log: EventLog, build: Any) -> tuple[Any, Any, dict]:
    """Run ``build()`` (returns train set, eval set, fingerprint) between two tokenize events; keep the fingerprint."""
    log.append(Progress(job.id, phase="tokenize", item=Path(job.data_path).name))
    train_dataset, eval_dataset, fingerprint = build()
    log.append(Progress(job.id, phase="tokenize", item=Path(job.data_path).name, done=fingerprint["rows"],
                        total=fingerprint["rows"], unit="rows"))
    write_atomic(job.run_dir / "data_fingerprint.json", json.dumps(fingerprint, indent=2))  # every rank writes it
    return train_dataset, eval_dataset, fingerprint


@dataclass
class TrainerSetup:
    """A built trainer and what the shared run loop needs to finish it (see :func:`run_trainer`)."""

    trainer: Any
    callback: EventCallback
    tokenizer: Any
    has_eval: bool
    model_config: dict[str, Any]
    extra_metrics: dict[str, Any]


def build_sft_trainer(job: JobRecord, store: JobStore | None, hf_token: str | None, log: EventLog, device: str,
                      dtype: Any, interruption: Interruption) -> TrainerSetup:
    """Supervised fine-tuning: TRL's ``SFTTrainer`` on our pre-tokenised, assistant-masked examples."""
    import torch
    from trl import SFTTrainer

    config = job.config
    tokenizer = load_tokenizer_announced(job, hf_token, log)
    train_dataset, eval_dataset, fingerprint = tokenize_announced(
        job, log, lambda: build_datasets(job, tokenizer, config, log))
    model = load_model_announced(job, hf_token, log)
    model_config = model.config.to_dict()  # the exact shape, for the memory estimate recorded with the peak
    model, peft_config = continued_model(model, job)
    args = build_sft_config(job, device, dtype, has_eval=eval_dataset is not None)
    meta = {"device": device, "base_model": config.base_model, "train_rows": fingerprint["train_rows"],
            "eval_rows": fingerprint["eval_rows"]}
    callback = EventCallback(job.id, log, store, meta, interruption)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[callback])
    if dtype == torch.float32:
        _adapter_to_float32(trainer.model)
    if eval_dataset is not None:
        # Packing decides how many steps an epoch has; only now can "about 5 evaluations" be placed.
        trainer.args.eval_steps = auto_eval_steps(
            config, planned_steps(config, len(trainer.train_dataset), trainer.args.world_size))
    return TrainerSetup(trainer, callback, tokenizer, eval_dataset is not None, model_config, {})


def continued_model(model: Any, job: JobRecord) -> tuple[Any, Any]:
    """The model to train and the LoRA config to give the trainer: a fresh adapter, or (None when the model
    already has one) the adapter of the run this one continues, loaded trainable. Every method uses it; for
    DPO/KTO, TRL then adds the frozen ``ref`` copy itself.

    A run queued behind the one it continues (``JobStore.submit(queued_after=True)``) finds out only here
    whether that run finished with an adapter; if not, it stops with the reason instead of training from zero.
    """
    if not job.start_adapter:
        return model, lora_config(job.config)
    if not (Path(job.start_adapter) / "adapter_config.json").is_file():
        from engine.data import DatasetError

        raise DatasetError(f"The run this one continues ({job.config.from_run}) did not finish with an adapter, so "
                           "there is nothing to continue: look at that run, then start this one again.")
    from peft import PeftModel, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=job.config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return PeftModel.from_pretrained(model, job.start_adapter, is_trainable=True), None


def lora_config(config: TrainConfig) -> Any:
    """A fresh LoRA adapter as the settings describe it."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules_value(), task_type="CAUSAL_LM")


def train(job: JobRecord, store: JobStore | None = None, hf_token: str | None = None,
          interruption: Interruption | None = None, rank: distributed.RankInfo = distributed.SINGLE) -> TrainResult:
    """Run one job to completion (or to a stop request or a SIGTERM) and write its adapter and records.

    On several processes (``rank`` of a launched run) every rank trains, and only rank 0 writes events and
    progress and checks for a stop request (the decision reaches the others through ``distributed.any_rank``).
    """
    from engine.models import pick_device, pick_dtype

    interruption = interruption or Interruption()
    log = EventLog(job.events_path) if rank.is_main else distributed.SilentLog()
    store = store if rank.is_main else None
    device = pick_device(job.config.device)
    if device == "cuda" and rank.world_size > 1:
        import torch

        torch.cuda.set_device(rank.local_rank)  # the model loads onto "cuda": this rank's own GPU
    dtype = pick_dtype(device, job.config.dtype)
    memory.reset_peak(device)
    module, name = TRAINER_BUILDERS[job.config.method].split(":")
    build = getattr(importlib.import_module(module), name)
    setup = build(job, store, hf_token, log, device, dtype, interruption)
    return run_trainer(job, setup, log, device, interruption, rank)


def run_trainer(job: JobRecord, setup: TrainerSetup, log: EventLog, device: str,
                interruption: Interruption, rank: distributed.RankInfo = distributed.SINGLE) -> TrainResult:
    """Train (resuming from a checkpoint when asked), then evaluate once more if the last step was not
    evaluated, save the adapter and write ``metrics.json`` — the same for every method."""
    trainer, callback = setup.trainer, setup.callback
    interruption.phase = "training"
    if interruption.requested:  # the signal came while the trainer was being built
        raise WorkerInterrupted("stopped before training started")
    trainer.train(resume_from_checkpoint=job.resume_from)
    interruption.phase = "finishing"
    steps = trainer.state.global_step
    if callback.interrupted and steps < trainer.state.max_steps:
        return TrainResult("interrupted", steps, callback.last_loss, callback.last_eval_loss)
    if callback.cancelled:
        return TrainResult("cancelled", steps, callback.last_loss, callback.last_eval_loss)
    eval_loss = callback.last_eval_loss
    if setup.has_eval and callback.last_eval_step != steps:  # the trainer may have evaluated the last step
        log.append(Progress(job.id, phase="evaluate", message=f"after step {steps}"))
        trainer.evaluate()  # its log line reaches the callback, which records the Eval event
        eval_loss = callback.last_eval_loss
    log.append(Progress(job.id, phase="save", message="adapter"))
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # the frozen reference copy is not part of the result
    trainer.save_model(str(job.adapter_dir))  # the main process saves; the others wait for it
    if not rank.is_main:
        return TrainResult("done", steps, callback.last_loss, eval_loss)
    setup.tokenizer.save_pretrained(str(job.adapter_dir))
    metrics = {"processes": rank.world_size, "steps": steps, "method": job.config.method,
               "final_loss": callback.last_loss, "eval_loss": eval_loss,
               "train_tokens": getattr(trainer, "_total_train_tokens", None), **setup.extra_metrics,
               **memory.run_memory_record(job.config, device, setup.model_config),
               "log_history": trainer.state.log_history}
    (job.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return TrainResult("done", steps, callback.last_loss, eval_loss)


def _adapter_to_float32(model: Any) -> None:
    """TRL stores LoRA weights of quantised models in bf16; on CPUs without bf16 units that is
    emulated and slow, and it mismatches the fp32 compute dtype we pick there. Keep them fp32."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


OOM_FIXES = [
    "Lower 'Batch size' (and raise 'Gradient accumulation' to keep the effective batch).",
    "Lower 'Max length' — the Data tab shows how many rows would be cut.",
    "Use quantization '4bit' (QLoRA) if it is not already on.",
    "Turn on gradient checkpointing.",
    "Use a smaller LoRA rank or a smaller base model.",
]


def explain_failure(exc: BaseException) -> tuple[str, list[str]]:
    """A plain-language reason and concrete fixes for the exceptions users actually hit."""
    from core.settings import SettingsError
    from engine.data import DatasetError
    from engine.models import ModelError

    text = str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        return "Training ran out of memory.", OOM_FIXES
    if isinstance(exc, (DatasetError, ModelError, SettingsError)):
        return text, []
    if isinstance(exc, FileNotFoundError):
        return f"A file the run needs is missing: {exc.filename}. Upload the data again and restart.", []
    return f"Training stopped with an error: {type(exc).__name__}: {text}", []


def run_job(job_id: str, store: JobStore | None = None) -> int:
    """Worker entry point: run, record the outcome (never 'done' unless it is), then start the next job.

    The token comes from this worker's own environment (``TOKEN_ENV``, set by the dispatcher for this job
    only), never from the server's ``HF_TOKEN``. A SIGTERM ends the run as ``interrupted``, resumable.
    """
    store = store or JobStore()
    interruption = Interruption()
    interruption.install()
    job = store.load(job_id)
    log = EventLog(job.events_path)
    t0 = time.time()
    exit_code = 0
    try:
        processes = distributed.planned_processes(job.config)
        if processes > 1:  # this process supervises the ranks and records their outcome
            outcome = distributed.supervise(job, processes, lambda: store.load(job.id).last_step)
            exit_code = record_ranks_outcome(store, job, outcome, time.time() - t0)
            interruption.requested = outcome.status == "interrupted"  # the server is stopping: start nothing
        else:
            result = train(job, store, hf_token=os.environ.get(TOKEN_ENV) or None, interruption=interruption)
            record_result(store, job, result, time.time() - t0)
    except WorkerInterrupted:
        interruption.phase = "finishing"  # a second SIGTERM must not cut the recording short
        record_result(store, job, TrainResult("interrupted", store.load(job.id).last_step, None, None), 0.0)
    except BaseException as exc:
        interruption.phase = "finishing"
        reason, fixes = explain_failure(exc)
        detail = "".join(traceback.format_exception(exc))[-4000:]
        has_checkpoint = store.load(job.id).latest_checkpoint() is not None
        log.append(Failed(job.id, reason=reason, fixes=fixes, resumable=True, detail=detail))
        store.finish(job.id, "failed", error=reason)
        print(detail, flush=True)
        exit_code = 1 if not has_checkpoint else 2
    finally:
        if not interruption.requested:  # the server is stopping: starting the next job now would only strand it
            store.dispatch()
    return exit_code


def run_rank(job_id: str, store: JobStore | None = None) -> int:
    """Entry point of one rank of a multi-process run (``python -m engine rank``, started by ``accelerate
    launch``): train, and leave ``ranks/rank-K.json`` saying how it ended, for the supervisor to record."""
    store = store or JobStore()
    rank = distributed.rank_from_environment()
    interruption = Interruption()
    interruption.install()
    job = store.load(job_id)
    distributed.write_rank_record(job.run_dir, rank.rank, status="running", pid=os.getpid())
    try:
        result = train(job, store, hf_token=os.environ.get(TOKEN_ENV) or None, interruption=interruption, rank=rank)
    except WorkerInterrupted:
        distributed.write_rank_record(job.run_dir, rank.rank, status="interrupted", steps=0, pid=os.getpid())
        return 75
    except BaseException as exc:
        reason, fixes = explain_failure(exc)
        detail = "".join(traceback.format_exception(exc))[-4000:]
        distributed.write_rank_record(job.run_dir, rank.rank, status="failed", reason=reason, fixes=fixes,
                                      detail=detail, lost_peer=distributed.lost_peer(exc), pid=os.getpid())
        print(detail, flush=True)
        return 1
    distributed.write_rank_record(job.run_dir, rank.rank, status=result.status, steps=result.steps,
                                  final_loss=result.final_loss, eval_loss=result.eval_loss, pid=os.getpid())
    return 0


def record_ranks_outcome(store: JobStore, job: JobRecord, outcome: distributed.RanksOutcome, duration: float) -> int:
    """Record how a multi-process run ended, as :func:`record_result` does for one process; the worker's exit code."""
    if outcome.status != "failed":
        record_result(store, job, TrainResult(outcome.status, outcome.steps, outcome.final_loss, outcome.eval_loss),
                      duration)
        return 75 if outcome.status == "interrupted" else 0
    EventLog(job.events_path).append(Failed(job.id, reason=outcome.reason, fixes=list(outcome.fixes),
                                            resumable=True, detail=outcome.detail))
    store.finish(job.id, "failed", error=outcome.reason)
    return 2 if store.load(job.id).latest_checkpoint() is not None else 1


def record_result(store: JobStore, job: JobRecord, result: TrainResult, duration: float) -> None:
    """The terminal event and status of a run that ended without an error."""
    log = EventLog(job.events_path)
    if result.status == "interrupted":
        reason = interrupted_reason(store.load(job.id))
        log.append(Interrupted(job.id, step=result.steps, reason=reason, resumable=True))
        store.finish(job.id, "interrupted", error=reason, final_loss=result.final_loss)
    elif result.status == "cancelled":
        log.append(Cancelled(job.id, step=result.steps, resumable=True))
        store.finish(job.id, "cancelled", final_loss=result.final_loss)
    else:
        log.append(Done(job.id, adapter_dir=str(job.adapter_dir), final_loss=result.final_loss,
                        eval_loss=result.eval_loss, steps=result.steps, duration_seconds=duration))
        store.finish(job.id, "done", final_loss=result.final_loss)


def interrupted_reason(job: JobRecord) -> str:
    """Plain words for an interruption: what was kept and what happens next."""
    checkpoint = job.latest_checkpoint()
    if checkpoint is None:
        return (f"{SERVER_STOPPED} The run had not saved a checkpoint yet, so it starts again from the beginning "
                "when the server is back (or press Resume).")
    step = checkpoint.name.split("-")[-1]
    return (f"{SERVER_STOPPED} The run saved a checkpoint at step {step} and continues from there when the server "
            "is back (or press Resume).")
