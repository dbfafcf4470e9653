"""The Experiment's train/test split and its leakage check, with the real bundled MiniLM embedder.

The embedder is real on purpose: the leak threshold only means something against the cosines the
app's own embedder produces for reworded questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from services.experiment_split import (
    SAME_QUESTION,
    ExperimentSplitSettings,
    SplitError,
    SplitReport,
    embedder_function,
    leakage_check,
    split_pairs,
    too_small,
)


@dataclass
class Pair:
    id: str
    question: str
    answer: str = "a"
    source: str = "doc.txt"
    chunk_id: str = "c0"


UNRELATED = [
    "What is the boiling point of water at sea level?",
    "Who wrote the play Hamlet?",
    "What is the capital city of Australia?",
    "How many legs does a spider have?",
    "Which planet is known as the red planet?",
    "What gas do plants absorb from the air?",
    "Who painted the Mona Lisa?",
    "What is the largest ocean on Earth?",
    "In which country is the city of Kyoto?",
    "What metal is liquid at room temperature?",
    "How many strings does a standard violin have?",
    "What language is spoken in Brazil?",
    "Which organ pumps blood through the body?",
    "What is the chemical symbol for gold?",
    "Who was the first person to walk on the Moon?",
    "What is the tallest mountain in Africa?",
]


@pytest.fixture(scope="module")
def embed():
    """The bundled embedder, remembering vectors: the tests re-split the same questions many times."""
    from rag.embedders import get_embedder

    model, seen = get_embedder(), {}

    def cached(texts: list[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in seen})
        seen.update(zip(new, model.embed_passages(new) if new else [], strict=True))
        return np.stack([seen[t] for t in texts])

    return cached


def pairs_from(questions: list[str], sources: int = 1) -> list[Pair]:
    return [Pair(f"q{i:02d}", q, source=f"doc{i % sources}.txt", chunk_id=f"c{i // 2}")
            for i, q in enumerate(questions)]


def test_planted_near_duplicate_is_dropped_and_unrelated_questions_survive(embed):
    train = [Pair("t1", "When was the Eiffel Tower completed?"), Pair("t2", UNRELATED[0]), Pair("t3", UNRELATED[1])]
    test = [Pair("s1", "When was the Eiffel tower finished?"), Pair("s2", UNRELATED[2]), Pair("s3", UNRELATED[3])]
    kept, dropped = leakage_check(train, test, embed, 0.9)
    assert [p.id for p in kept] == ["s2", "s3"]
    [leak] = dropped
    assert leak["id"] == "s1" and leak["train_id"] == "t1"
    assert leak["similarity"] >= 0.9
    assert leak["reason"] == f"near-duplicate of a training question (cosine {leak['similarity']:.2f})"


def test_exact_duplicate_after_normalising_is_dropped_even_at_threshold_one(embed):
    train = [Pair("t1", "When was the Eiffel Tower completed?"), Pair("t2", "Who wrote the play Hamlet?")]
    test = [Pair("s1", "When was the Eiffel tower finished?"), Pair("s2", "  who wrote the play  HAMLET"),
            Pair("s3", UNRELATED[2])]
    kept, dropped = leakage_check(train, test, embed, 1.0)
    assert [p.id for p in kept] == ["s1", "s3"]  # the near-duplicate survives: 1.0 means exact repeats only
    assert dropped == [{"id": "s2", "question": "  who wrote the play  HAMLET", "reason": SAME_QUESTION,
                        "train_id": "t2", "similarity": 1.0}]


def test_split_by_question_drops_a_planted_leak_end_to_end(embed):
    questions = [*UNRELATED[:11], "When was the Eiffel Tower completed?", "When was the Eiffel tower finished?"]
    pairs = pairs_from(questions)
    planted = {"q11", "q12"}
    settings = ExperimentSplitSettings(seed=next(s for s in range(50) if _splits_apart(pairs, planted, s)))
    report = split_pairs(pairs, settings, embed)
    assert report.mode == "question"
    assert [d["id"] for d in report.dropped] in (["q11"], ["q12"])
    assert not set(report.train_ids) & set(report.test_ids)
    assert len(report.train_ids) + len(report.test_ids) + 1 == len(pairs)
    assert "1 test question dropped as a near-duplicate of a training question (cosine >= 0.90)." in report.summary()


def _splits_apart(pairs: list[Pair], planted: set[str], seed: int) -> bool:
    """Whether ``seed`` puts the planted pair on different sides (checked with the check switched off)."""
    report = split_pairs(pairs, ExperimentSplitSettings(seed=seed, leak_threshold=1.0), lambda t: np.eye(len(t)))
    return len(planted & set(report.test_ids)) == 1


def test_same_seed_same_split_whatever_the_input_order(embed):
    pairs = pairs_from(UNRELATED)
    settings = ExperimentSplitSettings(seed=7)
    first = split_pairs(pairs, settings, embed)
    again = split_pairs(list(reversed(pairs)), settings, embed)
    assert first.to_dict() == again.to_dict()
    assert len(first.test_ids) == round(0.3 * len(pairs)) and not first.dropped
    other = split_pairs(pairs, settings.replace(seed=8), embed)
    assert other.test_ids != first.test_ids


def test_by_document_keeps_every_source_on_one_side(embed):
    pairs = pairs_from(UNRELATED, sources=5)
    source = {p.id: p.source for p in pairs}
    for seed in range(5):
        report = split_pairs(pairs, ExperimentSplitSettings(mode="document", seed=seed), embed)
        assert report.mode == "document"
        train_sources = {source[i] for i in report.train_ids}
        test_sources = {source[i] for i in report.test_ids}
        assert train_sources and test_sources and not train_sources & test_sources
        assert "held out for the test" in report.notes[0]


def test_by_document_with_one_source_falls_back_to_by_question(embed):
    report = split_pairs(pairs_from(UNRELATED[:8]), ExperimentSplitSettings(mode="document"), embed)
    assert report.mode == "question" and report.settings["mode"] == "document"
    assert "split by question instead of by document" in report.notes[0]
    assert report.summary().startswith("Split by question: 6 to train, 2 to test")


def test_too_few_pairs_and_empty_sides_are_refused_in_plain_words():
    no_embed = lambda texts: pytest.fail("no embedding expected")  # noqa: E731
    with pytest.raises(SplitError, match="Only 3 question–answer pairs: generate or add at least 4"):
        split_pairs(pairs_from(UNRELATED[:3]), ExperimentSplitSettings(), no_embed)
    with pytest.raises(SplitError, match="leaves no test question: raise the test share"):
        split_pairs(pairs_from(UNRELATED[:4]), ExperimentSplitSettings(test_share=0.05), no_embed)
    with pytest.raises(SplitError, match="leaves nothing to train on: lower the test share"):
        split_pairs(pairs_from(UNRELATED[:4]), ExperimentSplitSettings(test_share=0.9), no_embed)


def test_everything_leaking_is_an_error_not_an_empty_test():
    same = lambda texts: np.ones((len(texts), 3))  # noqa: E731
    with pytest.raises(SplitError, match="raise the leak threshold"):
        split_pairs(pairs_from(UNRELATED[:6]), ExperimentSplitSettings(), same)


def test_report_round_trips_and_warns_when_the_test_is_small(embed):
    report = split_pairs(pairs_from(UNRELATED), ExperimentSplitSettings(), embed)
    loaded = SplitReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert loaded == report
    assert too_small(report, minimum=5) is None
    warning = too_small(report)
    assert warning is not None and warning.startswith("5 test questions are too few for a confident verdict")


def test_embedder_function_uses_the_collection_embedder(embed):
    index = SimpleNamespace(embedder=SimpleNamespace(embed_passages=embed))
    vectors = embedder_function(index)(["one question", "another"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
