"""Preference tuning: DPO, ORPO and KTO runs, on the same QLoRA settings, job, events and resume as SFT.

TRL's trainers do the work (``DPOTrainer``, ``KTOTrainer``, and ``ORPOTrainer`` from ``trl.experimental``).
Three choices of ours sit around them:

* **Our tokens.** Pairs and good/bad answers are encoded by ``engine.data.preference`` with the same chat
  template code as SFT and the Data tab's preview, so what a user previewed is exactly what is trained (no
  injected BOS, no second rendering of the template). The thin subclasses below only let TRL accept those
  ready-made token ids instead of tokenising the text again.
* **The reference.** DPO and KTO measure rewards against a frozen reference policy. A fresh run's LoRA adapter
  starts at zero, so the base model (the adapter switched off) *is* its reference. A run that continues a
  finished SFT run (``TrainConfig.from_run``) loads that adapter as the trainable one, and TRL copies it into a
  second, frozen adapter named ``ref`` on the same base: the reference is the SFT model itself, never the bare
  base, and there is one copy of the base in memory. ORPO needs no reference at all.
* **Held-out pairs.** A validation share of the pairs (grouped by prompt, so a prompt never sits on both
  sides) gives the held-out reward accuracy that says whether the preference generalises.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import METHOD_LABELS, TrainConfig
from engine.events import EventLog, Log
from engine.jobs import JobRecord, JobStore
from engine.train import (
    EventCallback,
    Interruption,
    TrainerSetup,
    _adapter_to_float32,
    auto_eval_steps,
    cap_validation,
    continued_model,
    load_model_announced,
    load_tokenizer_announced,
    planned_steps,
    tokenize_announced,
    trainer_arguments,
)

#: What each method learns from, for messages when the data does not fit.
NEEDS = {"dpo": "pairs", "orpo": "pairs", "kto": "feedback"}


# ----------------------------------------------------------------------------------------- data


def preference_examples(job: JobRecord, tokenizer: Any, log: EventLog) -> tuple[str, list[Any], Any]:
    """The examples the method trains on (pairs for DPO/ORPO, good/bad answers for KTO) and the prepared file.

    Rows the validation report marks as errors are left out (the Data tab lists them). KTO accepts a pair file
    too: each pair becomes one good and one bad answer (TRL does the same). DPO and ORPO cannot invent a pair
    from answers labelled one at a time, so that combination is refused with the fix.
    """
    from engine import data

    config = job.config
    mapping = data.ColumnMapping.from_dict(job.mapping) if job.mapping else None
    prepared = data.prepare_preferences(job.data_path, mapping=mapping)
    report = data.validate_preferences(prepared, tokenizer, config.max_length)
    for warning in [*prepared.warnings, *report.warnings]:
        log.append(Log(job.id, message=warning, level="warning"))
    if report.n_error_rows:
        log.append(Log(job.id, level="warning", message=f"Skipping {report.n_error_rows} row(s) with errors; the "
                                                        "Data tab lists them with row numbers."))
    usable = data.training_preferences(prepared, report)
    method = METHOD_LABELS[config.method]
    if NEEDS[config.method] == "pairs":
        if prepared.kind != "pairs":
            raise data.DatasetError(
                f"{method} learns from pairs of answers (a chosen and a rejected one per prompt), but this file has "
                "single answers marked good or bad.", fix="Choose KTO as the training method, or upload pairs.",
                where=Path(job.data_path).name, code="method_data")
        return "pairs", usable, prepared
    if prepared.kind == "pairs":
        log.append(Log(job.id, message=f"KTO on pairs: each of the {len(usable)} pairs gives one good "
                                       "(chosen) and one bad (rejected) answer."))
        return "feedback", data.feedback_from_pairs(usable), prepared
    return "feedback", usable, prepared


def prompt_key(example: Any) -> tuple[tuple[str, str], ...]:
    """Examples with the same prompt (KTO answers, pairs of one question) belong together in a split."""
    return tuple((m.role, m.content) for m in example.prompt)


def split_by_prompt(examples: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic train/validation split; examples sharing a prompt stay on one side (no leak)."""
    if val_fraction <= 0 or len(examples) < 4:
        return list(examples), []
    groups: dict[Any, list[Any]] = {}
    for ex in examples:
        groups.setdefault(prompt_key(ex), []).append(ex)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    target = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    val: list[Any] = []
    for key in keys[:-1]:  # at least one prompt stays for training
        if len(val) >= target:
            break
        val += groups[key]
    chosen = {id(ex) for ex in val}
    return [ex for ex in examples if id(ex) not in chosen], val


def encoded_rows(kind: str, tokenizer: Any, examples: list[Any], max_length: int) -> list[dict[str, Any]]:
    """Token ids in the columns the trainers read (``prompt_ids`` + ``chosen_ids``/``rejected_ids``, or
    ``completion_ids`` + ``label``); rows that max length would leave without an answer token are dropped."""
    from engine import data

    if kind == "pairs":
        return [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids}
                for e in data.encode_pairs(tokenizer, examples, max_length) if e.chosen_ids and e.rejected_ids]
    return [{"prompt_ids": e.prompt_ids, "completion_ids": e.completion_ids, "label": e.desirable}
            for e in data.encode_feedbacks(tokenizer, examples, max_length) if e.completion_ids]


def preference_datasets(job: JobRecord, tokenizer: Any, log: EventLog) -> tuple[Any, Any, dict[str, Any]]:
    """Train and held-out datasets of token ids, and the fingerprint recorded with the run."""
    from datasets import Dataset

    from engine import data

    config = job.config
    kind, examples, prepared = preference_examples(job, tokenizer, log)
    train_examples, eval_examples = cap_validation(
        *split_by_prompt(examples, config.val_fraction, config.seed), config.eval_max_rows,
        key=prompt_key)  # a prompt's pairs stay on one side
    train_rows = encoded_rows(kind, tokenizer, train_examples, config.max_length)
    eval_rows = encoded_rows(kind, tokenizer, eval_examples, config.max_length)
    if not train_rows:
        raise data.DatasetError("No example keeps any answer token after cutting to max length.",
                                fix="Raise 'Max length' or shorten the prompts.", where=Path(job.data_path).name,
                                code="too_long")
    if kind == "feedback" and len({r["label"] for r in train_rows}) < 2:
        raise data.DatasetError("KTO needs answers marked good and answers marked bad; this data has only one kind.",
                                fix="Add examples of the other kind, or use SFT on the good answers.",
                                where=Path(job.data_path).name, code="one_label")
    fingerprint = {
        "file": str(job.data_path), "sha256": data.fingerprint_file(job.data_path), "format": prepared.source,
        "kind": kind, "rows": prepared.n_rows, "train_rows": len(train_rows), "eval_rows": len(eval_rows),
        "mapping": job.mapping, "options": job.data_options,
    }
    return Dataset.from_list(train_rows), (Dataset.from_list(eval_rows) if eval_rows else None), fingerprint


# ----------------------------------------------------------------------------------------- trainers


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class TokenizedDPOTrainer(DPOTrainer):
        """``DPOTrainer`` that takes our ``prompt_ids``/``chosen_ids``/``rejected_ids`` as they are."""

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return TokenizedDPOTrainer


def _kto_trainer_class() -> type:
    from trl import KTOTrainer

    class TokenizedKTOTrainer(KTOTrainer):
        """``KTOTrainer`` on our ``prompt_ids``/``completion_ids``/``label`` rows.

        TRL estimates KTO's KL term from mismatched (prompt, completion) pairs, built by rotating completions
        by one within each batch; that step of its dataset preparation is kept, the tokenising is ours.
        """

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if not self.calculate_KL:
                return dataset

            def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
                batch["KL_completion_ids"] = [batch["completion_ids"][-1], *batch["completion_ids"][:-1]]
                return batch

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    return TokenizedKTOTrainer


def _import_orpo() -> tuple[type, type]:
    """ORPO lives in ``trl.experimental`` (pinned with TRL); its import warns that the API may change."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOConfig, ORPOTrainer


def _orpo_trainer_class() -> type:
    _, ORPOTrainer = _import_orpo()

    class TokenizedORPOTrainer(ORPOTrainer):
        """``ORPOTrainer`` whose rows are built from our token ids (labels -100 on the prompt)."""

        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            if "prompt_ids" not in feature:
                return super().tokenize_row(feature, model)
            prompt = list(feature["prompt_ids"])
            row: dict[str, Any] = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                ids = prompt + list(feature[f"{side}_ids"])
                row[f"{side}_input_ids"] = ids
                row[f"{side}_attention_mask"] = [1] * len(ids)
                row[f"{side}_labels"] = [-100] * len(prompt) + list(feature[f"{side}_ids"])
            return row

    return TokenizedORPOTrainer


def method_config(config: TrainConfig, common: dict[str, Any]) -> Any:
    """TRL's config for the method: the shared arguments plus the method's own knobs."""
    if config.method == "dpo":
        from trl import DPOConfig

        return DPOConfig(**common, beta=config.beta, loss_type=[config.loss_type],
                         label_smoothing=config.label_smoothing)
    if config.method == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, beta=config.beta, desirable_weight=config.desirable_weight,
                         undesirable_weight=config.undesirable_weight)
    ORPOConfig, _ = _import_orpo()
    return ORPOConfig(**common, beta=config.beta, remove_unused_columns=False)


TRAINER_CLASSES: dict[str, Callable[[], type]] = {
    "dpo": _dpo_trainer_class, "kto": _kto_trainer_class, "orpo": _orpo_trainer_class,
}


# ----------------------------------------------------------------------------------------- model and reference


def reference_text(job: JobRecord, store: JobStore | None) -> str:
    """What the rewards are measured against, in the words the Train tab shows."""
    method = job.config.method
    if method == "orpo":
        return "ORPO needs no reference model: it adds the preference term to the SFT loss."
    if job.start_adapter:
        name = job.config.from_run
        if store is not None:
            with contextlib.suppress(Exception):  # a label only; the id is still right
                name = f"'{store.load(job.config.from_run).name}'"
        return (f"Reference: the adapter of run {name}, frozen as a second adapter on the same base (one copy of "
                "the base in memory); training continues that adapter.")
    return ("Reference: the base model (the new adapter starts at zero, so the base is exactly where training "
            "starts).")


def _reference_to_float32(model: Any) -> None:
    """The frozen ``ref`` adapter in the same fp32 as the trained one (TRL may have cast both to bf16)."""
    import torch

    for name, param in model.named_parameters():
        if ".ref." in name and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


def build_preference_trainer(job: JobRecord, store: JobStore | None, hf_token: str | None, log: EventLog,
                             device: str, dtype: Any, interruption: Interruption) -> TrainerSetup:
    """Tokenizer, pairs (or good/bad answers), model with its reference, and the method's TRL trainer."""
    import torch

    config = job.config
    tokenizer = load_tokenizer_announced(job, hf_token, log)
    train_dataset, eval_dataset, fingerprint = tokenize_announced(
        job, log, lambda: preference_datasets(job, tokenizer, log))
    model = load_model_announced(job, hf_token, log)
    model_config = model.config.to_dict()
    model, peft_config = continued_model(model, job)
    reference = reference_text(job, store)
    log.append(Log(job.id, message=reference))
    args = method_config(config, trainer_arguments(job, device, dtype, has_eval=eval_dataset is not None))
    meta = {"device": device, "base_model": config.base_model, "train_rows": fingerprint["train_rows"],
            "eval_rows": fingerprint["eval_rows"], "method": config.method, "reference": reference}
    callback = EventCallback(job.id, log, store, meta, interruption)
    trainer = TRAINER_CLASSES[config.method]()(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[callback])
    if dtype == torch.float32:
        _adapter_to_float32(trainer.model)
        _reference_to_float32(trainer.model)
    if eval_dataset is not None:  # the setting is a lower bound: evaluation stays a small share of the run
        trainer.args.eval_steps = auto_eval_steps(config, planned_steps(config, len(train_dataset)))
    return TrainerSetup(trainer, callback, tokenizer, eval_dataset is not None, model_config,
                        {"reference": reference, "from_run": config.from_run or None, "data_kind": fingerprint["kind"]})


# ----------------------------------------------------------------------------------------- scoring


def completion_logps(model: Any, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """Sum of log-probabilities of each completion given its prompt, one forward pass per row (no padding)."""
    import torch

    out = []
    with torch.no_grad():
        for prompt, completion in rows:
            ids = torch.tensor([prompt + completion])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion)[:, None])
            out.append(float(logps.sum()))
    return out


def preference_scores(base_model: str, adapter_dir: str | Path, pairs: list[Any], max_length: int,
                      reference_adapter: str | Path | None = None, beta: float = 0.1) -> dict[str, float]:
    """DPO's implicit rewards of ``pairs`` under a trained adapter, measured independently of any trainer.

    reward(answer) = β · (log π(answer | prompt) − log π_ref(answer | prompt)), on a fresh full-precision base
    (as the adapter is used for chat); the reference is the base, or ``reference_adapter`` (a run continued
    from SFT). Returns the mean margin (chosen − rejected reward) and the share of pairs whose chosen answer
    gets the higher reward (reward accuracy).
    """
    from peft import PeftModel

    from engine import data
    from engine.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(base_model)
    encoded = data.encode_pairs(tokenizer, pairs, max_length)
    rows = [(e.prompt_ids, e.chosen_ids) for e in encoded] + [(e.prompt_ids, e.rejected_ids) for e in encoded]
    base = load_base_model(base_model, quantization="none", device="cpu", dtype="float32")
    model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name="policy")
    model.eval()
    policy = completion_logps(model, rows)
    if reference_adapter:
        model.load_adapter(str(reference_adapter), adapter_name="reference")
        model.set_adapter("reference")
        reference = completion_logps(model, rows)
    else:
        with model.disable_adapter():
            reference = completion_logps(model, rows)
    n = len(encoded)
    rewards = [beta * (p - r) for p, r in zip(policy, reference, strict=True)]
    margins = [rewards[i] - rewards[n + i] for i in range(n)]
    return {"pairs": n, "mean_margin": sum(margins) / n, "reward_accuracy": sum(m > 0 for m in margins) / n,
            "mean_chosen_reward": sum(rewards[:n]) / n, "mean_rejected_reward": sum(rewards[n:]) / n}
