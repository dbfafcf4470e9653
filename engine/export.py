"""Take a finished run home: the adapter as a zip, or the adapter merged into the base weights.

Merging is done on a full-precision copy of the base (never the 4-bit one used for training),
so the merged model loads anywhere with plain ``from_pretrained``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.files import write_archive
from engine.jobs import JobRecord


def zip_folder(folder: Path, target_stem: Path) -> Path:
    """``target_stem``.zip with the folder's contents; rebuilt only when missing.

    Written atomically (:func:`engine.files.write_archive`): an existing zip is served again as it is, so
    an interrupted one must never get the final name.
    """
    archive = target_stem.with_suffix(".zip")
    if not archive.exists():
        write_archive(folder, archive)
    return archive


def adapter_zip(job: JobRecord) -> Path:
    if not (job.adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"Run {job.id} has no finished adapter yet (status: {job.status}).")
    return zip_folder(job.adapter_dir, job.run_dir / f"adapter-{job.id}")


def merge_adapter(job: JobRecord, token: str | None = None) -> Path:
    """Write ``merged/`` (base + adapter folded together, with the tokenizer) and return it."""
    from peft import PeftModel

    from engine.models import load_base_model, load_tokenizer

    target = job.run_dir / "merged"
    if (target / "config.json").exists():
        return target
    if not (job.adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"Run {job.id} has no finished adapter to merge (status: {job.status}).")
    base = load_base_model(job.config.base_model, quantization="none", device="cpu", token=token)
    merged = PeftModel.from_pretrained(base, str(job.adapter_dir)).merge_and_unload()
    tmp = job.run_dir / ".merged-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    load_tokenizer(job.config.base_model, token).save_pretrained(tmp)
    tmp.rename(target)
    return target


def merged_zip(job: JobRecord, token: str | None = None) -> Path:
    return zip_folder(merge_adapter(job, token), job.run_dir / f"merged-{job.id}")
