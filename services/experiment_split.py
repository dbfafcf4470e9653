"""Split question–answer pairs into train and test for the Experiment, and keep the test honest.

Why this module exists: the Experiment's verdict (fine-tune vs RAG) is only as good as its test
questions. If a test question is a rewording of a training question, the fine-tuned model can pass
it by recall of that one example, and the verdict flatters fine-tuning. So the split is followed by a
leakage check that drops test questions too close to a training question (by embedding cosine, and
exact text after normalising), and the report lists what was dropped and why, for the user to see.

Two ways to split, because they answer different questions:
- by question: a chunk's facts may be taught through some questions and tested through others
  (can fine-tuning inject knowledge?);
- by document: test questions come only from documents the training never saw (does it generalise?).

UI-free: the Experiment tab, the CLI (which writes :meth:`SplitReport.to_dict` to ``split.json``)
and the tests share it. The embed function is passed in, so tests and the app use the same code with
the collection's own embedder (:func:`embedder_function`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core.settings import Settings, setting

if TYPE_CHECKING:
    from rag.index import RagIndex

MIN_PAIRS = 4
SAME_QUESTION = "same question as a training question"
MODES = ("question", "document")

EmbedFn = Callable[[list[str]], np.ndarray]


class SplitError(ValueError):
    """The pairs cannot be split as asked; the message says what to change."""


class PairLike(Protocol):
    """What the split needs of a question–answer pair (``services.qgen.QAPair`` has it)."""

    id: str
    question: str
    answer: str
    source: str
    chunk_id: str


class ExperimentSplitSettings(Settings):
    """How the Experiment's pairs are divided; named apart from ``rag.stages.SplitSettings`` (chunking)."""

    mode: str = setting(
        "question",
        "By question: the facts a test question asks about were taught through other questions on the same "
        "chunks, so it tests whether fine-tuning can inject knowledge. By document: test questions come from "
        "documents never seen in training, so it tests whether what was learned generalises.",
        label="Split by", choices=MODES,
    )
    test_share: float = setting(0.3, "Share of the question–answer pairs held out for the test (before the leakage "
                                "check drops near-duplicates).", label="Test share", minimum=0.05, maximum=0.9,
                                step=0.05)
    leak_threshold: float = setting(
        0.9, "Cosine similarity of question embeddings at or above which a test question counts as a near-duplicate "
        "of a training question and is dropped from the test (1.0 = drop only exact duplicates).",
        label="Leak threshold", minimum=0.5, maximum=1.0, step=0.01, advanced=True,
    )
    seed: int = setting(0, "Seed of the shuffle: the same seed and pairs give the same split.", minimum=0,
                        advanced=True)


@dataclass
class SplitReport:
    """Which pairs train and which test, and what the leakage check dropped (the CLI's ``split.json``)."""

    mode: str
    train_ids: list[str]
    test_ids: list[str]
    dropped: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitReport:
        """Read back a saved ``split.json``; unknown keys are ignored so older files still load."""
        return cls(mode=str(data["mode"]), train_ids=list(data["train_ids"]), test_ids=list(data["test_ids"]),
                   dropped=[dict(d) for d in data.get("dropped", [])], settings=dict(data.get("settings", {})),
                   notes=list(data.get("notes", [])))

    def summary(self) -> str:
        """One plain sentence for the UI and the CLI."""
        text = f"Split by {self.mode}: {len(self.train_ids)} to train, {len(self.test_ids)} to test"
        same = sum(1 for d in self.dropped if d["reason"] == SAME_QUESTION)
        near = len(self.dropped) - same
        parts = []
        if same:
            parts.append(f"{_count(same, 'test question')} dropped as the same question as a training question")
        if near:
            threshold = float(self.settings.get("leak_threshold", 0.9))
            what = f"{_count(near, 'test question')} dropped" if not parts else f"{near} more"
            like = "a near-duplicate of a training question" if near == 1 else "near-duplicates of training questions"
            parts.append(f"{what} as {like} (cosine >= {threshold:.2f})")
        tail = "; ".join(parts) if parts else "no test question was dropped by the leakage check"
        return f"{text}; {tail}."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def normalise_question(text: str) -> str:
    """Lower case, punctuation and repeated spaces removed: what counts as the *same* question."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Normalise rows ourselves, so cosine is a dot product whatever the embed function returns."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def leakage_check(train: Sequence[PairLike], test: Sequence[PairLike], embed: EmbedFn,
                  threshold: float) -> tuple[list[PairLike], list[dict[str, Any]]]:
    """Drop test pairs whose question repeats or closely rewords a training question.

    Dropped pairs leave the test and are *not* moved to train: moving them would change what the
    model is taught depending on the check's threshold. Exact (normalised) repeats are caught by text
    first, so a threshold of 1.0 still drops them even when float rounding puts their cosine just under 1.
    """
    if not train or not test:
        return list(test), []
    train_text = {normalise_question(p.question): p for p in train}
    vectors = _unit_rows(embed([p.question for p in train] + [p.question for p in test]))
    if vectors.shape[0] != len(train) + len(test):
        raise SplitError(f"The embedder returned {vectors.shape[0]} vectors for {len(train) + len(test)} questions.")
    sims = vectors[len(train):] @ vectors[:len(train)].T
    kept: list[PairLike] = []
    dropped: list[dict[str, Any]] = []
    for row, pair in enumerate(test):
        best = int(np.argmax(sims[row]))
        similarity = float(sims[row, best])
        twin = train_text.get(normalise_question(pair.question))
        if twin is not None:
            dropped.append({"id": pair.id, "question": pair.question, "reason": SAME_QUESTION,
                            "train_id": twin.id, "similarity": 1.0})
        elif similarity >= threshold:
            dropped.append({"id": pair.id, "question": pair.question,
                            "reason": f"near-duplicate of a training question (cosine {similarity:.2f})",
                            "train_id": train[best].id, "similarity": round(similarity, 4)})
        else:
            kept.append(pair)
    return kept, dropped


def _by_question(pairs: list[PairLike], share: float, rng: random.Random) -> tuple[list[PairLike], list[PairLike]]:
    """Shuffle pairs; the same chunk may sit on both sides on purpose (that is the knowledge-injection test)."""
    order = list(pairs)
    rng.shuffle(order)
    n_test = round(len(order) * share)
    if n_test == 0:
        raise SplitError(f"A test share of {share:.0%} of {len(order)} pairs leaves no test question: raise the test "
                         "share or add pairs.")
    if n_test == len(order):
        raise SplitError(f"A test share of {share:.0%} of {len(order)} pairs leaves nothing to train on: lower the "
                         "test share or add pairs.")
    return order[n_test:], order[:n_test]


def _by_document(pairs: list[PairLike], share: float,
                 rng: random.Random) -> tuple[list[PairLike], list[PairLike], str]:
    """Whole documents to test until about ``share`` of the pairs are there; at least one document each side."""
    groups: dict[str, list[PairLike]] = {}
    for pair in pairs:
        groups.setdefault(pair.source, []).append(pair)
    sources = sorted(groups)
    rng.shuffle(sources)
    target = share * len(pairs)
    sizes = np.cumsum([len(groups[s]) for s in sources])
    # Prefixes of 1..S-1 documents keep a document on each side; pick the one closest to the target.
    k = 1 + int(np.argmin(np.abs(sizes[:-1] - target)))
    test = [p for s in sources[:k] for p in groups[s]]
    train = [p for s in sources[k:] for p in groups[s]]
    note = (f"{_count(k, 'document')} of {len(sources)} held out for the test: {len(test)} of {len(pairs)} pairs "
            f"({len(test) / len(pairs):.0%}; asked for {share:.0%}, whole documents only).")
    return train, test, note


def split_pairs(pairs: Sequence[PairLike], settings: ExperimentSplitSettings, embed: EmbedFn) -> SplitReport:
    """Split ``pairs`` as ``settings`` ask, then drop leaking test questions; raises :class:`SplitError`.

    Pairs are sorted by id before the seeded shuffle, so the split depends on the pairs and the seed,
    not on the order they were generated or loaded in.
    """
    if len(pairs) < MIN_PAIRS:
        raise SplitError(f"Only {len(pairs)} question–answer pairs: generate or add at least {MIN_PAIRS} before "
                         "splitting.")
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise SplitError(f"Pair ids must be unique; repeated: {', '.join(repeated[:5])}. Regenerate or re-import the "
                         "pairs.")
    ordered = sorted(pairs, key=lambda p: p.id)
    rng = random.Random(settings.seed)
    mode, notes = settings.mode, []
    if mode == "document" and len({p.source for p in ordered}) < 2:
        mode = "question"
        notes.append("All pairs come from one document, so they were split by question instead of by document: "
                     "add a second document to test generalisation.")
    if mode == "document":
        train, test, note = _by_document(ordered, settings.test_share, rng)
        notes.append(note)
    else:
        train, test = _by_question(ordered, settings.test_share, rng)
    kept, dropped = leakage_check(train, test, embed, settings.leak_threshold)
    if not kept:
        raise SplitError(f"All {len(test)} test questions repeat or closely reword training questions: raise the leak "
                         "threshold, use another seed, or generate more varied questions.")
    return SplitReport(mode=mode, train_ids=[p.id for p in train], test_ids=[p.id for p in kept], dropped=dropped,
                       settings=settings.to_dict(), notes=notes)


def too_small(report: SplitReport, minimum: int = 10) -> str | None:
    """A warning when the test is too small to trust: each question then moves the score by many points."""
    n = len(report.test_ids)
    if n >= minimum:
        return None
    return (f"{_count(n, 'test question')} {'is' if n == 1 else 'are'} too few for a confident verdict: each question "
            f"moves the score by {100 / n:.0f} points. Generate more questions or raise the test share "
            f"(at least {minimum} recommended).")


def embedder_function(index: RagIndex) -> EmbedFn:
    """The collection's own embedder as an embed function for :func:`split_pairs`.

    ``Embedder.embed_passages`` is its batch method and already L2-normalises (``split_pairs``
    normalises again, harmlessly). Both sides get the same prefix, so cosines stay symmetric. The
    model is fetched on first call, so building the function costs nothing.
    """

    def embed(texts: list[str]) -> np.ndarray:
        return index.embedder.embed_passages(texts)

    return embed
