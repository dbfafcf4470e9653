"""Question generation: parsing replies, the checks that keep a pair, choosing passages, the real bundled model,
and the "generate" job runner through a real job store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.events import Cancelled, EventLog, Failed, Log
from engine.jobs import JobStore
from rag.chunking import Chunk, split_document
from rag.evaluate import load_corpus
from rag.gold import gold_chunk_ids
from rag.index import RagIndex
from rag.pipeline import PipelineSpec
from services.qgen import (
    COPIES,
    DUPLICATE,
    EMPTY_COLLECTION,
    GIVES_AWAY,
    NO_PAIR,
    NOT_FOUND,
    REASONS,
    ChunkTried,
    QAPair,
    QGenSettings,
    QGenSummary,
    append_pair,
    build_messages,
    generate_pairs,
    model_generator,
    parse_pair,
    pick_chunks,
    read_pairs,
    run_generate_job,
    similar_questions,
    supporting_span,
)

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"
EIFFEL = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall."
PASSAGE = ("Rollo's contingents who raided and ultimately settled Normandy included Danes, Norwegians and "
           "Orkney Vikings. The descendants of Rollo's Vikings replaced the Norse religion with Catholicism.")


@pytest.mark.parametrize("reply, expected", [
    ("Question: When was it built?\nAnswer: 1889", ("When was it built?", "1889")),
    ("question: when was it built?\nANSWER: 1889\n", ("when was it built?", "1889")),
    ("**Question:** When was it built?\n**Answer:** 1889", ("When was it built?", "1889")),
    ("**Question**: When was it built?\n**Answer**: **1889**", ("When was it built?", "1889")),
    ("Q: When was it built?\nA: in 1889", ("When was it built?", "in 1889")),
    ("Sure! Here is one.\n\nQ1: When was it built?\nA1: 1889", ("When was it built?", "1889")),
    ('```json\n{"question": "When was it built?", "answer": "1889"}\n```', ("When was it built?", "1889")),
    ('{"Question": "When was it built?", "Answer": 1889}', ("When was it built?", "1889")),
    ("Question: Who settled Normandy?\nAnswer: Danes,\nNorwegians and Vikings\n\nThat is all.",
     ("Who settled Normandy?", "Danes, Norwegians and Vikings")),
    ("Question: Name the tower's home city\nAnswer: Paris", ("Name the tower's home city", "Paris")),
])
def test_parse_pair_reads_the_shapes_models_write(reply, expected):
    assert parse_pair(reply) == expected


@pytest.mark.parametrize("reply", [
    "", "The Eiffel Tower is in Paris.", "Question: When was it built?", "Answer: 1889",
    "Question: Paris\nAnswer: France",  # neither a question mark nor 4 words
    '{"question": "When was it built?"}', "Question: When?\nAnswer:  ",
])
def test_parse_pair_refuses_replies_without_a_pair(reply):
    assert parse_pair(reply) is None


def test_supporting_span_returns_the_passage_words():
    assert supporting_span("1889", EIFFEL, 0.6) == "1889"
    assert supporting_span("world s fair", EIFFEL, 0.6) == "World's Fair"  # as the passage writes it
    assert supporting_span("Danes and Norwegians", PASSAGE, 0.6) == PASSAGE.split(". ")[0] + "."  # 2 of 2 words
    assert supporting_span("Vikings replaced religion with Islam", PASSAGE, 0.6) == PASSAGE.split(". ")[1]  # 3 of 4
    assert supporting_span("Vikings embraced Islam", PASSAGE, 0.6) is None  # 1 of 3 words: invented
    assert supporting_span("1066 AD", PASSAGE, 0.6) is None
    assert supporting_span("were", PASSAGE, 0.6) is None  # not in it, and no content word to look for
    assert supporting_span("Norse", PASSAGE, 0.6) == "Norse"


def test_similar_questions():
    assert similar_questions("When was the tower built?", "when was the tower built")
    assert similar_questions("When was the Eiffel Tower built in Paris?", "When was the Eiffel Tower built, Paris?")
    assert not similar_questions("When was the tower built?", "How tall is the tower?")


def _chunks() -> list[Chunk]:
    long = " ".join(["Filler words for a long enough passage."] * 6)
    chunks = [Chunk(f"{long} Fact {i} of A.", "a.txt", i) for i in range(6)]
    chunks += [Chunk(f"{long} Fact {i} of B.", "b.txt", i) for i in range(2)]
    chunks += [Chunk("short", "c.txt", 0), Chunk(f"{long} Fact 0 of D.", "d.txt", 0)]
    return chunks


def test_pick_chunks_is_deterministic_and_spread_over_documents():
    settings = QGenSettings(min_chunk_chars=100)
    chunks = _chunks()
    first = pick_chunks(chunks, 5, settings)
    assert first == pick_chunks(list(reversed(chunks)), 5, settings)  # the order given does not matter
    assert {c.source for c in first[:3]} == {"a.txt", "b.txt", "d.txt"}  # one of each before a second of any
    assert all(c.source != "c.txt" for c in pick_chunks(chunks, 20, settings))  # too short
    assert len(pick_chunks(chunks, 20, settings)) == 9
    assert pick_chunks(chunks, 9, QGenSettings(min_chunk_chars=100, seed=1)) != pick_chunks(chunks, 9, settings)
    skipped = pick_chunks(chunks, 20, settings, skip={"a.txt#0", "d.txt#0"})
    assert len(skipped) == 7 and all(c.source != "d.txt" for c in skipped)


def test_template_makes_the_measured_messages_and_is_checked():
    messages = build_messages(QGenSettings(), "A {braced} passage.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == f"Passage:\n{EIFFEL}"
    assert messages[2]["content"] == "Question: When was the Eiffel Tower completed?\nAnswer: 1889"
    assert messages[3]["content"] == "Passage:\nA {braced} passage."
    assert [m["role"] for m in build_messages(QGenSettings(template="Ask about: {passage}", system=""), "x")] == \
        ["user"]
    with pytest.raises(ValueError, match="passage"):
        QGenSettings(template="Passage:\n{passage}\n---\nQuestion: ?")


def test_generate_pairs_keeps_checked_pairs_and_counts_every_drop():
    replies = iter([
        "I cannot do that.",
        "Question: When did it happen?\nAnswer: 1066 AD",
        "Question: What kind of words fill the passage?\nAnswer: Filler words",
        "Question: what kind of words fill the passage\nAnswer: Filler",
        "Question: Filler words for a long enough passage?\nAnswer: Filler words",
        "Question: Which filler words are used?\nAnswer: filler words",
        "Question: What is written last?\nAnswer: Filler",
        "Question: How long is the passage?\nAnswer: long enough",
    ])
    existing = [QAPair("x", "What is written last?", "Fact 9", "z.txt", None, "Fact 9", "z.txt#0", "user")]
    chunks = [c for c in _chunks() if c.source in ("a.txt", "b.txt")]
    settings = QGenSettings(questions=3, min_chunk_chars=100)
    events = list(generate_pairs(chunks, lambda messages: next(replies), settings, existing=existing))
    tried = [e for e in events if isinstance(e, ChunkTried)]
    summary = events[-1]
    assert [e.reason for e in tried] == [NO_PAIR, NOT_FOUND, "", DUPLICATE, COPIES, GIVES_AWAY, DUPLICATE, ""]
    assert summary == QGenSummary(2, 8, {NO_PAIR: 1, NOT_FOUND: 1, DUPLICATE: 2, COPIES: 1, GIVES_AWAY: 1}, 8)
    pair = tried[2].pair
    assert pair.quote == "Filler words" and pair.source == tried[2].source and pair.origin == "generated"
    assert pair.id == QAPair.make_id(pair.chunk_id, pair.question) and QAPair.from_dict(pair.to_dict()) == pair
    assert gold_chunk_ids(chunks, pair.gold)


def test_generation_stops_at_the_target_and_on_cancel():
    chunks = _chunks()
    settings = QGenSettings(questions=2, min_chunk_chars=100)
    answer = iter(f"Question: What is fact number {n} about?\nAnswer: Filler words" for n in range(99))
    events = list(generate_pairs(chunks, lambda m: next(answer), settings))
    assert events[-1] == QGenSummary(2, 2, {}, 2)
    calls = []
    events = list(generate_pairs(chunks, lambda m: calls.append(m) or "no", settings,
                                 cancelled=lambda: len(calls) >= 1))
    assert len(calls) == 1 and events[-1].passages == 1
    events = list(generate_pairs(chunks, lambda m: "no", settings))
    assert events[-1].passages == 6  # at most 3 passages per wanted pair


def test_pairs_file_survives_a_torn_line(tmp_path):
    out = tmp_path / "q.jsonl"
    pair = QAPair("1", "When?", "1889", "a.txt", 2, "1889", "a.txt#0")
    append_pair(out, pair)
    with out.open("a") as handle:
        handle.write('{"question": "torn')
    append_pair(out, pair)
    assert read_pairs(out) == [pair, pair]
    assert pair.gold.page == 2 and pair.gold.chunk_id == "a.txt#0"


# ----------------------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_the_bundled_model_makes_grounded_pairs():
    """Mechanics with the real 135M model: kept pairs are grounded, every drop is counted with a reason.

    Measured (greedy, CPU, these 10 documents cut to 300 characters, seed 0): 6 pairs kept of 17 passages,
    at passages 4, 5, 9, 10, 11 and 12; the rest mostly invented dates. Asking for 2 pairs tries at most 6
    passages (it stops after passage 5 when nothing changes), so one kept pair is safe and the test stays short.
    """
    from engine.infer import ChatModel

    docs, titles = load_corpus(SQUAD / "corpus.jsonl")
    split = PipelineSpec().with_params("split", chunk_size=300, chunk_overlap=0).split
    chunks = [c for doc in docs[:10] for c in split_document(doc, split, title=titles.get(doc.source))]
    settings = QGenSettings(questions=2, max_new_tokens=48)
    events = list(generate_pairs(chunks, model_generator(ChatModel(), settings), settings))
    summary = events[-1]
    tried = [e for e in events if isinstance(e, ChunkTried)]
    assert isinstance(summary, QGenSummary) and summary.tried == len(tried) and summary.passages <= 6
    assert summary.kept >= 1, summary
    assert summary.kept + sum(summary.dropped.values()) == summary.tried
    assert set(summary.dropped) <= set(REASONS)
    for event in tried:
        if event.kept:
            assert gold_chunk_ids(chunks, event.pair.gold), event.pair  # its quote is found in the index again


# ----------------------------------------------------------------------------------------- the job runner


def _job(store: JobStore, tmp_path: Path, **payload):
    collection = tmp_path / "indexes" / "empty"
    RagIndex.create(collection)
    payload = {"collection_path": str(collection), "model": None, "settings": QGenSettings().to_dict(),
               "out": str(tmp_path / "questions.jsonl"), "existing": None, **payload}
    return store.submit_task("generate", payload, owner="alice", name="Generate questions", start=False)


def test_a_job_on_an_empty_collection_fails_plainly_and_writes_nothing(tmp_path):
    store = JobStore()
    job = _job(store, tmp_path)
    assert run_generate_job(job.id, store) == 1
    job = store.get(job.id)
    events = EventLog(job.events_path).read()
    assert job.status == "failed" and isinstance(events[-1], Failed) and events[-1].reason == EMPTY_COLLECTION
    assert not (tmp_path / "questions.jsonl").exists()


def test_a_job_cancelled_before_it_starts_ends_cancelled(tmp_path):
    store = JobStore()
    job = _job(store, tmp_path)
    store._update(job.id, status="cancelling", cancel_requested=1)  # as if Cancel came while the worker started
    assert run_generate_job(job.id, store) == 0
    job = store.get(job.id)
    events = EventLog(job.events_path).read()
    assert job.status == "cancelled" and isinstance(events[-1], Cancelled)
    assert any(isinstance(e, Log) and e.message == "Cancelled: the 0 pairs made so far are kept." for e in events)
    assert not (tmp_path / "questions.jsonl").exists()


class _FakeChat:
    """Stands in for ChatModel.stream: one reply per passage, in pieces; ``after`` runs after each reply."""

    def __init__(self, replies, after=lambda: None):
        self.replies, self.after = iter(replies), after

    def stream(self, messages, settings=None):
        reply = next(self.replies)
        yield from (reply[i:i + 5] for i in range(0, len(reply), 5))
        self.after()


def _running_job(store, tmp_path, monkeypatch, chat, **settings):
    import services.qgen as qgen

    chunks = [c for c in _chunks() if c.source == "a.txt"]
    monkeypatch.setattr(qgen, "_collection_chunks", lambda payload: chunks)
    monkeypatch.setattr(qgen, "_load_model", lambda job, log, model_id: chat)
    job = _job(store, tmp_path, settings=QGenSettings(min_chunk_chars=100, **settings).to_dict())
    store._update(job.id, status="running")
    return job


def test_a_job_writes_each_pair_as_made_and_reports_what_it_dropped(tmp_path, monkeypatch):
    from engine.events import Done, Progress
    from services.qgen import RESULT_FILE

    store = JobStore()
    replies = ["Question: What kind of words fill it?\nAnswer: Filler words\nQuestion: More?\nAnswer: more",
               "Question: When?\nAnswer: 1066", "Question: How long is the passage?\nAnswer: long enough"]
    job = _running_job(store, tmp_path, monkeypatch, _FakeChat(replies), questions=2)
    assert run_generate_job(job.id, store) == 0
    job = store.get(job.id)
    events = EventLog(job.events_path).read()
    assert job.status == "done" and isinstance(events[-1], Done)
    progress = [e for e in events if isinstance(e, Progress) and e.phase == "generate"]
    assert [(e.done, e.total, e.unit) for e in progress] == [(1, 6, "passages"), (2, 6, "passages"), (3, 6, "passages")]
    assert progress[-1].item == "a.txt" and progress[-1].message == "2 of 2 pairs kept"
    assert [p.answer for p in read_pairs(tmp_path / "questions.jsonl")] == ["Filler words", "long enough"]
    result = json.loads((job.run_dir / RESULT_FILE).read_text())
    assert result["kept"] == 2 and result["tried"] == 3 and result["dropped"] == {NOT_FOUND: 1}
    assert any(isinstance(e, Log) and e.message == f"Dropped 1 of 3: {NOT_FOUND}." for e in events)


def test_a_job_cancelled_midway_keeps_its_pairs(tmp_path, monkeypatch):
    store = JobStore()
    job_id = []
    chat = _FakeChat([f"Question: What is fact number {n} about?\nAnswer: Filler words" for n in range(9)],
                     after=lambda: store._update(job_id[0], status="cancelling", cancel_requested=1))
    job = _running_job(store, tmp_path, monkeypatch, chat, questions=5)
    job_id.append(job.id)
    assert run_generate_job(job.id, store) == 0
    job = store.get(job.id)
    events = EventLog(job.events_path).read()
    assert job.status == "cancelled" and isinstance(events[-1], Cancelled)
    assert any(isinstance(e, Log) and e.message == "Cancelled: the 1 pairs made so far are kept." for e in events)
    assert len(read_pairs(tmp_path / "questions.jsonl")) == 1


def test_a_job_that_keeps_nothing_fails_with_the_reasons(tmp_path, monkeypatch):
    store = JobStore()
    job = _running_job(store, tmp_path, monkeypatch, _FakeChat(["Question: When?\nAnswer: 1066"] * 6), questions=2)
    assert run_generate_job(job.id, store) == 1
    failed = EventLog(store.get(job.id).events_path).read()[-1]
    assert isinstance(failed, Failed)
    assert failed.reason == ("Nothing usable was generated from 6 passages: the model's answers were not found in "
                             "the passages (6). Try a larger model on a GPU Space, or write questions yourself in "
                             "the table.")
