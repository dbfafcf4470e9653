"""The RAG pipeline as a versioned JSON document the UI edits, exports and imports.

Layout (version 1)::

    {"format": "tune-studio-rag-pipeline", "version": 1,
     "stages": [{"stage": "load", "params": {...}}, {"stage": "split", ...}, ..., {"stage": "retrieve", ...},
                {"stage": "dedupe", "enabled": true, "params": {...}}, ...   # post-retrieval steps, in order
                {"stage": "prompt", ...}, {"stage": "generate", ...}]}

Fixed stages appear once each in their fixed order; post-retrieval steps sit between ``retrieve``
and ``prompt`` in the order the user arranged, each with an ``enabled`` flag. Missing params take
their defaults, so a spec written by an older version still loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings, SettingsError
from rag.stages import FIXED_STAGES, POST_STEPS

FORMAT = "tune-studio-rag-pipeline"
VERSION = 1
#: Parameters older specs may hold that are no longer part of a spec. ``pdf_password``: a password is used
#: for one build and never stored, so one found in an old manifest or export is dropped on load (and
#: scrubbed from disk by :func:`scrub_stored_passwords`).
RETIRED_PARAMS: dict[str, tuple[str, ...]] = {"load": ("pdf_password",)}


class PipelineSpecError(ValueError):
    """The spec is malformed; the message says which stage and what to change."""


@dataclass(frozen=True)
class PostStep:
    """One reorderable post-retrieval step."""

    name: str
    enabled: bool
    settings: Settings


def _default_post_steps() -> tuple[PostStep, ...]:
    """Dedupe, then rerank (the bundled sentence matcher offline: bench/RESULTS.md "Offline reranker" for its
    gain and cost); the other steps wait in the palette."""
    enabled = {"threshold": False, "dedupe": True, "mmr": False, "rerank": True, "parent_child": False}
    order = ("threshold", "dedupe", "mmr", "rerank", "parent_child")
    return tuple(PostStep(name, enabled[name], POST_STEPS[name]()) for name in order)


@dataclass(frozen=True)
class PipelineSpec:
    """A whole pipeline: fixed stages' settings plus the ordered post-retrieval steps."""

    stages: dict[str, Settings] = field(default_factory=lambda: {name: cls() for name, cls in FIXED_STAGES.items()})
    post: tuple[PostStep, ...] = field(default_factory=_default_post_steps)

    # ---- access
    def __getitem__(self, stage: str) -> Any:
        if stage in self.stages:
            return self.stages[stage]
        for step in self.post:
            if step.name == stage:
                return step.settings
        raise KeyError(stage)

    @property
    def split(self) -> Any:
        return self.stages["split"]

    @property
    def embed(self) -> Any:
        return self.stages["embed"]

    @property
    def retrieve(self) -> Any:
        return self.stages["retrieve"]

    def enabled_post_steps(self) -> list[PostStep]:
        return [s for s in self.post if s.enabled]

    # ---- edits (return new specs: the spec is a value, safe to keep in per-visitor state)
    def with_params(self, stage: str, **params: Any) -> PipelineSpec:
        if stage in self.stages:
            stages = dict(self.stages)
            stages[stage] = _build(stage, FIXED_STAGES[stage], {**stages[stage].to_dict(), **params})
            return PipelineSpec(stages, self.post)
        post = tuple(
            PostStep(s.name, s.enabled, _build(s.name, POST_STEPS[s.name], {**s.settings.to_dict(), **params}))
            if s.name == stage else s
            for s in self.post
        )
        if post == self.post and stage not in {s.name for s in self.post}:
            raise PipelineSpecError(f"No stage named '{stage}'. Stages: {', '.join(self.stage_names())}.")
        return PipelineSpec(self.stages, post)

    def with_enabled(self, step: str, enabled: bool) -> PipelineSpec:
        self._check_post(step)
        return PipelineSpec(self.stages, tuple(PostStep(s.name, enabled if s.name == step else s.enabled,
                                                        s.settings) for s in self.post))

    def with_order(self, order: list[str]) -> PipelineSpec:
        """Reorder the post-retrieval steps; ``order`` names each of them at most once, and the ones it leaves out
        follow in their present order (so an order written before a step existed still applies)."""
        names = [s.name for s in self.post]
        if len(set(order)) != len(order) or not set(order) <= set(names):
            raise PipelineSpecError(f"The new order {order} must list each post-retrieval step once: {names}.")
        by_name = {s.name: s for s in self.post}
        return PipelineSpec(self.stages, tuple(by_name[n] for n in [*order, *(n for n in names if n not in order)]))

    def moved(self, step: str, offset: int) -> PipelineSpec:
        """Move one post-retrieval step up (negative) or down (positive)."""
        self._check_post(step)
        names = [s.name for s in self.post]
        i = names.index(step)
        j = max(0, min(len(names) - 1, i + offset))
        names.insert(j, names.pop(i))
        return self.with_order(names)

    def _check_post(self, step: str) -> None:
        if step not in {s.name for s in self.post}:
            raise PipelineSpecError(f"'{step}' is not a post-retrieval step; those are {', '.join(POST_STEPS)}.")

    def stage_names(self) -> list[str]:
        fixed = list(FIXED_STAGES)
        i = fixed.index("retrieve") + 1
        return fixed[:i] + [s.name for s in self.post] + fixed[i:]

    # ---- what a change means for an existing index
    def index_fingerprint(self) -> dict[str, Any]:
        """The parts that decide the stored chunks and vectors; a change means re-indexing.

        Parent-child counts only when enabled, so specs without it keep the fingerprint they always had.
        """
        out = {"split": self.stages["split"].to_dict(), "embed": {"model": self.stages["embed"].model}}
        children = self.child_split()
        if children is not None:
            out["parent_child"] = children.to_dict()
        return out

    def child_split(self) -> Any:
        """The parent-child step's settings when it is enabled (the index then holds small pieces of each
        chunk, and the chunks become their parents), else None."""
        return next((s.settings for s in self.post if s.name == "parent_child" and s.enabled), None)

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        stages: list[dict[str, Any]] = []
        for name in self.stage_names():
            if name in self.stages:
                stages.append({"stage": name, "params": self.stages[name].to_dict()})
            else:
                step = next(s for s in self.post if s.name == name)
                stages.append({"stage": name, "enabled": step.enabled, "params": step.settings.to_dict()})
        return {"format": FORMAT, "version": VERSION, "stages": stages}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Any) -> PipelineSpec:
        if not isinstance(data, dict):
            raise PipelineSpecError("A pipeline spec must be a JSON object with 'format', 'version' and 'stages'.")
        if data.get("format", FORMAT) != FORMAT:
            raise PipelineSpecError(f"'format' is {data.get('format')!r}; expected {FORMAT!r}. Is this a pipeline "
                                    "exported from Tune Studio?")
        version = data.get("version", VERSION)
        if not isinstance(version, int) or version > VERSION or version < 1:
            raise PipelineSpecError(f"Pipeline version {version!r} is not supported (this app reads up to version "
                                    f"{VERSION}). Update the app or export the pipeline again.")
        entries = data.get("stages")
        if not isinstance(entries, list):
            raise PipelineSpecError("'stages' must be a list of {\"stage\": name, \"params\": {...}} objects.")
        return cls._from_entries(entries)

    @classmethod
    def _from_entries(cls, entries: list[Any]) -> PipelineSpec:
        stages: dict[str, Settings] = {}
        post: list[PostStep] = []
        seen_fixed: list[str] = []
        for position, entry in enumerate(entries, start=1):
            name, params = _entry(entry, position)
            if name in FIXED_STAGES:
                _add_fixed(name, params, stages, post)
                seen_fixed.append(name)
            elif name in POST_STEPS:
                _add_post(name, entry, params, stages, post, seen_fixed)
            else:
                known = ", ".join([*FIXED_STAGES, *POST_STEPS])
                raise PipelineSpecError(f"Unknown stage '{name}' (stage #{position}). Known stages: {known}.")
        if seen_fixed != [n for n in FIXED_STAGES if n in seen_fixed]:
            raise PipelineSpecError(f"Stages are out of order: {seen_fixed}. Expected {list(FIXED_STAGES)}.")
        return cls(*_with_defaults(stages, post))

    @classmethod
    def from_json(cls, text: str) -> PipelineSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineSpecError(f"Not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}.") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> PipelineSpec:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PipelineSpecError(f"Cannot read pipeline file {path.name}: {exc.strerror or exc}.") from None
        return cls.from_json(text)


def strip_retired(data: Any) -> bool:
    """Remove retired parameters (a stored PDF password) from a spec dict in place; True when any was there."""
    found = False
    for entry in data.get("stages", []) if isinstance(data, dict) else []:
        params = entry.get("params") if isinstance(entry, dict) else None
        if isinstance(params, dict):
            for key in RETIRED_PARAMS.get(entry.get("stage"), ()):
                found |= params.pop(key, None) is not None
    return found


def scrub_stored_passwords(root: str | Path) -> list[Path]:
    """Remove PDF passwords that older versions stored in saved pipelines under ``root``; returns the files fixed.

    Looks at collection manifests (``manifest.json``: ``{"pipeline": spec}``, also the copies inside built
    demo Spaces) and saved pipeline specs (``*pipeline*.json``), and rewrites each one that holds a password
    (temporary file, then rename). Run once at start-up: files without the word are only read, not parsed.
    """
    fixed = []
    candidates = {*Path(root).rglob("manifest.json"), *Path(root).rglob("*pipeline*.json")}
    for path in sorted(candidates):
        try:
            raw = path.read_bytes()
            data = json.loads(raw) if b"pdf_password" in raw else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        spec = data.get("pipeline") if isinstance(data, dict) and "pipeline" in data else data
        if not (isinstance(spec, dict) and spec.get("format", FORMAT) == FORMAT and strip_retired(spec)):
            continue
        tmp = path.with_name(path.name + ".scrub.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        fixed.append(path)
    return fixed



def _entry(entry: Any, position: int) -> tuple[str, dict[str, Any]]:
    """A spec entry's stage name and parameters, without parameters that older versions wrote and this one dropped."""
    if not isinstance(entry, dict) or not isinstance(entry.get("stage"), str):
        raise PipelineSpecError(f"Stage #{position} must be an object with a 'stage' name.")
    name, params = entry["stage"], entry.get("params") or {}
    if not isinstance(params, dict):
        raise PipelineSpecError(f"Stage '{name}': 'params' must be an object.")
    return name, {k: v for k, v in params.items() if k not in RETIRED_PARAMS.get(name, ())}


def _add_fixed(name: str, params: dict[str, Any], stages: dict[str, Settings], post: list[PostStep]) -> None:
    """A fixed stage: once only, and those up to 'retrieve' before any post-retrieval step."""
    if name in stages:
        raise PipelineSpecError(f"Stage '{name}' appears twice; keep one.")
    if post and list(FIXED_STAGES).index(name) <= list(FIXED_STAGES).index("retrieve"):
        raise PipelineSpecError(f"Stage '{name}' must come before the post-retrieval steps.")
    stages[name] = _build(name, FIXED_STAGES[name], params)


def _add_post(name: str, entry: dict[str, Any], params: dict[str, Any], stages: dict[str, Settings],
              post: list[PostStep], seen_fixed: list[str]) -> None:
    """A post-retrieval step: once only, after 'retrieve' (when stages are named at all) and before 'prompt'."""
    if any(s.name == name for s in post):
        raise PipelineSpecError(f"Post-retrieval step '{name}' appears twice; keep one.")
    if "retrieve" not in stages and seen_fixed:
        raise PipelineSpecError(f"Step '{name}' must come after 'retrieve'.")
    if "prompt" in stages:
        raise PipelineSpecError(f"Step '{name}' must come before 'prompt'.")
    post.append(PostStep(name, bool(entry.get("enabled", True)), _build(name, POST_STEPS[name], params)))


def _with_defaults(stages: dict[str, Settings],
                   post: list[PostStep]) -> tuple[dict[str, Settings], tuple[PostStep, ...]]:
    """Every fixed stage (defaults for those not named) in order; unnamed steps kept, disabled, at the end.

    So a file written by an older version, which did not know a newer stage or step, stays valid.
    """
    for name, settings_cls in FIXED_STAGES.items():
        stages.setdefault(name, settings_cls())
    named = {s.name for s in post}
    post.extend(PostStep(n, False, c()) for n, c in POST_STEPS.items() if n not in named)
    return {n: stages[n] for n in FIXED_STAGES}, tuple(post)

def _build(stage: str, settings_cls: type[Settings], params: dict[str, Any]) -> Settings:
    try:
        return settings_cls.from_dict(params)
    except SettingsError as exc:
        raise PipelineSpecError(f"Stage '{stage}': {exc}") from None
    except TypeError as exc:
        raise PipelineSpecError(f"Stage '{stage}': {exc}") from None
