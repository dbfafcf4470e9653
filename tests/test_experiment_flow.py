"""The Experiment's evaluation and record on a real collection, mechanics on a tiny random-weight model.

Answer quality is not asserted here (a random model answers nonsense); what is: all four approaches answer
every test question through the real Comparer, retrieval is scored at document and passage level from the
gold spans, an unreadable judge is not trusted (and the report says why), a tiny test split gives "too few
questions to tell", the files are written, and the review set keeps what a running job adds while the user
edits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.workspace import Workspace
from services import experiment as ex
from services.qgen import QAPair

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "rag" / "squad_small" / "derived" / \
    "corpus.jsonl"


def corpus_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()[:n]]


def pair_from(row: dict, number: int) -> QAPair:
    """A question whose gold quote is the first sentence of a real corpus document."""
    quote = row["text"].split(". ")[0]
    return QAPair(id=f"p{number}", question=f"What does the passage about {row['title']} say first?",
                  answer=quote, source=row["doc_id"], page=None, quote=quote, chunk_id=f"{row['doc_id']}#0",
                  origin="user")


@pytest.fixture
def collection(tmp_path: Path) -> tuple[Workspace, Path]:
    from services.compare import build_corpus_index

    ws = Workspace("local", root=tmp_path / "home")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows(6)), encoding="utf-8")
    path = ws.index_path("squad6")
    build_corpus_index(corpus, path)
    return ws, path


@pytest.mark.slow
def test_evaluation_scores_four_approaches_retrieval_and_distrusts_an_unreadable_judge(
        collection: tuple[Workspace, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    from engine.infer import ChatModel
    from services.collections import open_collection
    from tests.tiny_models import make_tiny_adapter

    _, path = collection
    index = open_collection(path)
    pairs = [pair_from(row, i) for i, row in enumerate(corpus_rows(6))]
    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    chat = ChatModel(str(tiny_model_dir))
    settings = ex.ExperimentSettings(answer_tokens=4, resamples=200)
    seen: list[str] = []
    report = ex.evaluate(chat, pairs, adapter=str(adapter), adapter_label="tiny", index=index, collection="squad6",
                         settings=settings, judge=ex.make_judge(chat, settings, None),
                         progress=lambda phase, done, total, item: seen.append(phase))
    assert set(report["arms"]) == {"base", "ft", "rag", "ft+rag"}
    assert all(set(q["answers"]) == {"base", "ft", "rag", "ft+rag"} for q in report["questions"])
    assert {"answer", "judge"} <= set(seen)
    doc, passage = report["retrieval"]["document"], report["retrieval"]["passage"]
    assert report["retrieval"]["n"] == 6 and 0 < doc["hit_at_10"] <= 1
    assert passage["hit_at_10"] <= doc["hit_at_10"]  # a passage hit is also a document hit
    assert all(q["passage_rank"] is None or q["doc_rank"] <= q["passage_rank"] for q in report["questions"])
    assert report["judge"]["used"] and not report["judge"]["trusted"]  # 24 answers from a random model
    assert report["verdict"]["metric"] == "f1" and report["verdict"]["text"].startswith("Too few questions")
    assert len(report["comparisons"]) == 6
    # Pairwise mode on two questions: each approach's judge score is its share of wins; votes get a kappa.
    from services.judge import JudgeSettings

    rows = report["questions"][:2]
    pairwise = ex.make_judge(chat, settings, None, judge_settings=JudgeSettings(mode="pairwise"))
    votes = [{"qid": rows[0]["id"], "arm_a": "rag", "arm_b": "base", "choice": "A"}]
    judged = ex._judge(pairwise, rows, ex._passages(index, rows), votes, lambda *a: None)
    assert judged["mode"] == "pairwise" and len(rows[0]["pairwise"]) == 6  # every pair of the four approaches
    assert all(a["judge"] is None or 0.0 <= a["judge"] <= 1.0 for r in rows for a in r["answers"].values())
    assert judged["agreement_votes"]["n"] <= 1 and "votes_reason" in judged
    ws, _ = collection
    exp = ex.create_experiment(ws, "tiny", "squad6", str(tiny_model_dir))
    paths = ex.save_report(exp.folder, report)
    assert json.loads(paths["json"].read_text())["verdict"]["text"] == report["verdict"]["text"]
    assert "Too few questions" in paths["html"].read_text() and paths["csv"].read_text().count("\n") == 1 + 6 * 4

    # Blind votes on the test answers: one pair per question, then the judge's agreement with them (kappa, n).
    assert ex.judge_vs_votes(exp) == ""
    for _ in range(6):
        pair = ex.next_blind_pair(exp)
        assert pair is not None and pair["arm_a"] != pair["arm_b"]
        ex.record_vote(exp, pair["qid"], pair["arm_a"], pair["arm_b"], "tie")
    assert ex.next_blind_pair(exp) is None  # every question has a vote
    assert "your votes" in ex.judge_vs_votes(exp) and "n = " in ex.judge_vs_votes(exp)
    with pytest.raises(ex.ExperimentError, match="Unknown vote"):
        ex.record_vote(exp, "p0", "base", "rag", "C")


def test_review_set_keeps_pairs_a_job_adds_while_the_user_edits(collection: tuple[Workspace, Path]) -> None:
    ws, _ = collection
    exp = ex.create_experiment(ws, "first", "squad6", "bundled/SmolLM2-135M-Instruct")
    rows = corpus_rows(6)
    generated = exp.folder / "generated" / "job1.jsonl"
    generated.parent.mkdir(parents=True)
    generated.write_text("".join(json.dumps(pair_from(r, i).to_dict()) + "\n" for i, r in enumerate(rows[:3])))
    shown = exp.questions()
    assert [p.id for p in shown] == ["p0", "p1", "p2"]
    with generated.open("a") as handle:  # the job adds one more while the table is on screen
        handle.write(json.dumps(pair_from(rows[3], 3).to_dict()) + "\n")
    edited = QAPair(**{**shown[0].to_dict(), "answer": "edited answer", "origin": "edited"})
    exp.save_questions([edited, shown[2]], shown_ids=[p.id for p in shown])  # p1 deleted by the user
    assert [(p.id, p.answer == "edited answer") for p in exp.questions()] == [
        ("p0", True), ("p2", False), ("p3", False)]
    with pytest.raises(ex.ExperimentError, match="exists already"):
        ex.create_experiment(ws, "first", "squad6", "bundled/SmolLM2-135M-Instruct")
    with pytest.raises(ex.ExperimentError, match="Only 3 question"):
        exp.save_questions(exp.questions()[:3])
        ex.split_experiment(ws, exp, ex.ExperimentSplitSettings())
    assert ex.list_experiments(ws) == ["first"]


@pytest.mark.slow
def test_pretraining_then_fine_tuning_continues_the_pretrained_adapter(tmp_path: Path) -> None:
    """The Experiment's optional chain: SFT queued behind a pre-training run starts from that run's adapter."""
    from safetensors.torch import load_file

    from engine.config import TrainConfig
    from engine.data import DatasetError
    from engine.jobs import JobError, JobStore
    from engine.train import train

    quick = dict(max_steps=1, max_length=64, batch_size=2, grad_accum=1, val_fraction=0.0, save_steps=100,
                 warmup_ratio=0.0, lora_dropout=0.0, gradient_checkpointing=False, packing=False, device="cpu")
    text = tmp_path / "pretrain.jsonl"
    text.write_text("".join(json.dumps({"text": r["text"][:300]}) + "\n" for r in corpus_rows(4)))
    qa = tmp_path / "train.jsonl"
    qa.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Who is in {r['title']}?"},
                                                   {"role": "assistant", "content": r["title"]}]}) + "\n"
                          for r in corpus_rows(4)))
    store = JobStore(tmp_path / "home")
    cpt = store.submit(TrainConfig(learning_rate=1e-3, **quick), text, start=False)
    with pytest.raises(JobError, match="has not finished"):
        store.submit(TrainConfig(from_run=cpt.id, **quick), qa, start=False)
    sft = store.submit(TrainConfig(from_run=cpt.id, learning_rate=1e-7, **quick), qa, start=False, queued_after=True)
    with pytest.raises(DatasetError, match="did not finish with an adapter"):
        train(store.load(sft.id))  # its turn came, but the run before it never finished
    assert train(store.load(cpt.id)).status == "done"
    assert train(store.load(sft.id)).status == "done"
    before = load_file(str(cpt.adapter_dir / "adapter_model.safetensors"))
    after = load_file(str(sft.adapter_dir / "adapter_model.safetensors"))
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and any(before[k].abs().sum() > 0 for k in lora_b)  # pre-training moved the adapter...
    assert all((before[k] - after[k]).abs().max() < 1e-4 for k in lora_b)  # ...and SFT (lr ~0) started from it


def test_cli_refuses_an_empty_collection_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.__main__ import main
    from rag.index import RagIndex

    RagIndex.create(tmp_path / "empty")
    assert main(["experiment", "--index", str(tmp_path / "empty"), "--out", str(tmp_path / "out"),
                 "--questions", "4", "--split-mode", "document", "--judge-mode", "pairwise"]) == 2
    assert "The collection empty is empty: add documents to it first." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "--index", "x", "--out", "y", "--split-mode", "by-chapter"])  # not a choice


def test_a_visitor_cannot_fill_the_device_lane_with_generation_jobs(collection: tuple[Workspace, Path]) -> None:
    from engine.limits import LimitError, limits

    ws, _ = collection
    store = ws.store()
    for _ in range(limits().max_queued_runs):
        store.submit_task(ex.GENERATE_KIND, {}, owner=ws.owner, visitor="ada", name="q", start=False)
    ex.check_visitor_jobs(ws, "bob")  # another visitor is not counted
    ex.check_visitor_jobs(ws, None)  # nor the operator
    with pytest.raises(LimitError, match="question-generation and evaluation jobs"):
        ex.check_visitor_jobs(ws, "ada")
