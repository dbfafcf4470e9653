"""Blind votes → preference pairs (TRL conversational format) → "Improve with these votes" → the "After votes" arm.

Fast: hand-built reports of real ``ArmAnswer`` objects for the pairing rules, a fake chat and a three-document
MiniLM index for the prompts each arm really saw, a job store in the test's data directory for the DPO run
(never started: the DPO trainer is not exercised here), and the tiny random Llama with two adapters for the
second arm's provenance.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.generation import GenerationSettings
from engine.config import TrainConfig
from engine.jobs import JobError, JobStore
from engine.workspace import LOCAL_OWNER, Workspace
from services.compare import (
    ARM_LABELS,
    ARMS,
    ArmAnswer,
    CompareError,
    Comparer,
    Question,
    Report,
    ReportRow,
    Vote,
    improve_with_votes,
    parse_arms,
    preference_config,
    preference_pairs,
    write_preference_file,
)

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "ui" / "demo_data" / "tune_studio_faq.json"
PLAIN = "Answer the question with a short phrase.\n\nQuestion: {q}\nAnswer:"
RAG = "Context:\n[1] ({ctx})\n\nQuestion: {q}\nAnswer:"
CORPUS = [
    {"doc_id": "festival", "title": "Quellington festival",
     "text": "The Zorblat festival is held every March in the town of Quellington. Its symbol is a blue heron."},
    {"doc_id": "bridge", "title": "Omm bridge",
     "text": "The stone bridge over the river Omm has seven arches. It was finished in 1790 by the engineer "
             "Ada Pell."},
]


def _answer(arm: str, text: str, prompt: str, *, error: str | None = None) -> ArmAnswer:
    return ArmAnswer(arm, text=text, prompt=prompt, error=error, done=True,
                     retrieved=[{"source": "doc", "location": "doc#1", "score": 1.0, "text": "ctx"}]
                     if "rag" in arm else [])


def _row(qid: str, question: str, answers: dict[str, tuple[str, str]]) -> ReportRow:
    """One question's answers: arm -> (text, context the RAG arm read; ignored for non-RAG arms)."""
    built = {arm: _answer(arm, text, RAG.format(ctx=ctx, q=question) if "rag" in arm else PLAIN.format(q=question))
             for arm, (text, ctx) in answers.items()}
    return ReportRow(Question(question, [], None, qid), built)


def rule_report() -> Report:
    """One vote per rule, in a report whose answers carry the prompts the Comparer records."""
    rows = [
        _row("q1", "Where is Paris?", {"base": ("I do not know", ""), "ft": ("In France", "")}),
        _row("q2", "Capital of Italy?", {"base": ("Rome", ""), "ft": ("Milan", "")}),
        _row("q3", "Who wrote Hamlet?", {"base": ("Shakespeare", ""), "ft": ("William Shakespeare", "")}),
        _row("q4", "What is 2+2?", {"base": ("5", ""), "ft": ("22", "")}),
        _row("q5", "Where is Omm?", {"base": ("No idea", ""), "rag": ("Quellington", "A"), "ft": ("A river", "")}),
        _row("q6", "Who built the bridge?", {"rag": ("Ada Pell", "B"), "ft+rag": ("An engineer", "B")}),
        _row("q7", "When is the festival?", {"rag": ("March", "C"), "ft+rag": ("April", "D")}),
        _row("q8", "Colour of the sky?", {"base": ("Blue", ""), "ft": ("Blue", "")}),
        _row("q9", "Oldest bakery?", {"base": ("", ""), "ft": ("Brindle & Sons", "")}),
    ]
    rows[8].answers["base"].error = "RuntimeError: out of memory"
    votes = [
        Vote("q1", "base", "ft", "B", time="2025-01-01T00:00:01+00:00"),  # ft chosen (right)
        Vote("q2", "base", "ft", "A", time="2025-01-01T00:00:02+00:00"),  # base chosen (left)
        Vote("q3", "ft", "base", "tie"),
        Vote("q4", "base", "ft", "both_bad"),
        Vote("q5", "base", "rag", "B"),  # RAG vs non-RAG: different prompts
        Vote("q5", "rag", "ft", "A"),  # the same, the other way round
        Vote("q6", "ft+rag", "rag", "B", time="2025-01-01T00:00:06+00:00"),  # same context: a pair
        Vote("q7", "rag", "ft+rag", "A"),  # different contexts
        Vote("q8", "base", "ft", "A"),  # identical texts
        Vote("q9", "ft", "base", "A"),  # the loser errored
    ]
    return Report({"run_id": None, "adapter": "my-run"}, ["base", "ft", "rag", "ft+rag"], rows, votes)


# ----------------------------------------------------------------------------------------- the rules


def test_every_vote_becomes_a_pair_or_a_counted_reason() -> None:
    export = preference_pairs(rule_report())
    assert export.counts == {"pairs": 3, "ties": 1, "both_bad": 1, "different_prompts": 2, "different_context": 1,
                             "unusable": 1, "identical": 1}
    assert sum(export.counts.values()) == 10  # every vote counted exactly once
    q1, q2, q6 = export.rows
    assert q1 == {"prompt": [{"role": "user", "content": PLAIN.format(q="Where is Paris?")}],
                  "chosen": [{"role": "assistant", "content": "In France"}],
                  "rejected": [{"role": "assistant", "content": "I do not know"}],
                  "arms": {"chosen": "ft", "rejected": "base"}, "qid": "q1", "time": "2025-01-01T00:00:01+00:00"}
    assert q2["chosen"][0]["content"] == "Rome" and q2["arms"] == {"chosen": "base", "rejected": "ft"}
    # Two RAG arms that read the same passage: the prompt is the RAG prompt with that context, as the model saw it.
    assert q6["prompt"] == [{"role": "user", "content": RAG.format(ctx="B", q="Who built the bridge?")}]
    assert q6["chosen"][0]["content"] == "Ada Pell" and q6["arms"] == {"chosen": "rag", "rejected": "ft+rag"}
    assert q6["time"] == "2025-01-01T00:00:06+00:00"
    assert "2 vote(s) compared a RAG answer with a non-RAG one: the two saw different prompts, so they are left " \
           "out" in export.notes
    line = export.line()
    assert line.startswith("3 preference pair(s) from 10 vote(s).") and "1 tie(s)" in line and "identical" in line


def test_no_votes_and_only_ties_say_so_in_plain_words() -> None:
    report = rule_report()
    report.votes = []
    assert preference_pairs(report).line().startswith("No votes yet")
    report.votes = [Vote("q3", "ft", "base", "tie")]
    export = preference_pairs(report)
    assert export.rows == [] and export.line() == ("No preference pairs from 1 vote(s). 1 tie(s): neither answer "
                                                   "was preferred, so there is no pair.")


def test_votes_are_stamped_in_utc_when_recorded() -> None:
    from datetime import datetime

    vote = Vote("q1", "base", "ft", "A")
    stamp = datetime.fromisoformat(vote.time)
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0


def test_the_jsonl_file_reads_back_with_json(tmp_path: Path) -> None:
    export = preference_pairs(rule_report())
    path = write_preference_file(export, tmp_path / "out" / "pairs.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == export.rows and len(lines) == 3
    for row in map(json.loads, lines):  # TRL's conversational preference format
        assert {"prompt", "chosen", "rejected"} <= set(row)
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]


# ----------------------------------------------------------------------------------------- prompts recorded


class RecordingChat:
    """Stands in for ChatModel: records each prompt it is sent, answers by adapter, reports provenance."""

    base_model = "fake/base"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prompts: list[tuple[Any, str | None]] = []

    def stream(self, messages: Any, *, adapter: Any = None, settings: GenerationSettings | None = None,
               adapter_label: str | None = None, on_provenance: Any = None) -> Iterator[str]:
        from engine.infer import Provenance, adapter_hash

        self.prompts.append((messages, str(adapter) if adapter else None))
        yield f"answer from {Path(adapter).parent.name if adapter else 'base'}"
        if on_provenance:
            on_provenance(Provenance(self.base_model, adapter=adapter_label if adapter else None,
                                     adapter_hash=adapter_hash(adapter), generation=settings.to_dict()))


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_each_arm_records_the_prompt_the_model_was_sent(tmp_path: Path, tokenizer) -> None:
    """The pairs' user turn is exactly what the model got: the plain template, or the RAG prompt with context."""
    from services.compare import build_corpus_index

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(row) for row in CORPUS) + "\n")
    index = build_corpus_index(corpus, tmp_path / "index")
    chat = RecordingChat(tokenizer)
    one, two = _adapter(tmp_path / "run-one" / "adapter"), _adapter(tmp_path / "run-two" / "adapter")
    comparer = Comparer(chat, arms=["base", "ft", "ft2", "rag", "ft+rag"], adapter=one, adapter2=two, index=index,
                        adapter_label="run-one", adapter2_label="run-one + votes", run_id="run-1", run2_id="run-2")
    report = comparer.run([Question("  Who finished the stone bridge?", [], None, "q1")])
    answers = report.rows[0].answers
    sent = [prompt for prompt, _ in chat.prompts]
    assert [a.prompt for a in answers.values()] == sent  # recorded, not reconstructed
    assert answers["base"].prompt == comparer.settings.base_template.replace("{question}",
                                                                             "Who finished the stone bridge?")
    assert answers["rag"].prompt == answers["ft+rag"].prompt and "Ada Pell" in answers["rag"].prompt
    assert [adapter for _, adapter in chat.prompts] == [None, str(one), str(two), None, str(one)]
    assert answers["ft2"].provenance["adapter"] == "run-one + votes"
    assert report.config["run_id"] == "run-1" and report.config["adapter2"] == "run-one + votes"
    assert report.config["run2_id"] == "run-2" and report.config["adapter2_hash"]
    assert "prompt" not in report.to_dict()["questions"][0]["answers"]["rag"]  # kept out of the export
    report.votes = [Vote("q1", "rag", "ft+rag", "B"), Vote("q1", "ft2", "ft", "A")]
    rag_pair, ft_pair = preference_pairs(report).rows
    assert rag_pair["prompt"][0]["content"] == sent[3]
    assert ft_pair["prompt"][0]["content"] == sent[0] and ft_pair["chosen"][0]["content"] == "answer from run-two"


def test_arm_names_are_consistent() -> None:
    assert set(ARMS) == set(ARM_LABELS) and "ft2" in ARMS
    assert parse_arms("base, ft2") == ["base", "ft2"]
    with pytest.raises(CompareError, match="second finished run"):
        Comparer(RecordingChat(None), arms=["base", "ft2"])


# ----------------------------------------------------------------------------------------- the DPO run


def finished_run(home: Path, owner: str = LOCAL_OWNER, name: str = "my-run", **config: Any) -> str:
    """A run that finished with an adapter, as the Compare tab lists it."""
    store = JobStore(home)
    job = store.submit(TrainConfig(max_steps=5, **config), DEMO_DATA, owner=owner, name=name, start=False)
    _adapter(job.adapter_dir)
    store.finish(job.id, "done")
    return job.id


def voted_report(run_id: str | None) -> Report:
    report = rule_report()
    report.config = {"run_id": run_id, "adapter": "my-run"}
    return report


def test_improve_with_votes_queues_a_dpo_run_continuing_the_voted_run(isolated_home: Path) -> None:
    run_id = finished_run(isolated_home, lora_r=8, learning_rate=1e-4)
    ws = Workspace(LOCAL_OWNER)
    job, export = improve_with_votes(voted_report(run_id), ws, visitor="user:alice", start=False)
    assert job.status == "queued" and job.owner == LOCAL_OWNER and job.name == "my-run + votes"
    assert (job.config.method, job.config.from_run, job.config.val_fraction) == ("dpo", run_id, 0.0)
    assert job.config.max_steps == 1  # 3 pairs, two passes, 8 pairs per step (batch 4 x accumulation 2)
    assert job.config.lora_r == 8  # the voted run's own settings...
    assert job.config.learning_rate == pytest.approx(1e-5)  # ...at a tenth of its learning rate
    data = Path(job.data_path)
    assert data.parent == ws.datasets.resolve()
    assert [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()] == export.rows
    assert JobStore(isolated_home).load(job.id).config.from_run == run_id


def test_improve_with_votes_refuses_what_it_cannot_do(isolated_home: Path) -> None:
    ws = Workspace(LOCAL_OWNER)
    with pytest.raises(CompareError, match="no fine-tuned run"):
        improve_with_votes(voted_report(None), ws, start=False)
    someone_elses = finished_run(isolated_home, owner="mallory")
    with pytest.raises(JobError, match="no run with id"):
        improve_with_votes(voted_report(someone_elses), ws, start=False)
    report = voted_report(finished_run(isolated_home))
    report.votes = [Vote("q3", "ft", "base", "tie")]
    with pytest.raises(CompareError, match="No preference pairs"):
        improve_with_votes(report, ws, start=False)
    assert not list(ws.datasets.iterdir())  # nothing written when nothing could start


def test_dpo_steps_are_two_passes_over_the_pairs_within_bounds() -> None:
    config = TrainConfig(batch_size=2, grad_accum=2)  # 4 pairs per step
    assert [preference_config(config, "r1", n).max_steps for n in (1, 2, 3, 20, 120, 121, 500)] == [1, 1, 2, 10,
                                                                                                   60, 60, 60]
    assert preference_config(config, "r1", 5).learning_rate == pytest.approx(config.learning_rate / 10)


# ----------------------------------------------------------------------------------------- the tab


def test_the_tab_enables_improve_only_with_a_run_and_pairs_then_preselects_the_new_run(
        isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import compare_tab

    run_id = finished_run(isolated_home)
    assert compare_tab.improve_hint(None)[0] is False
    assert compare_tab.improve_hint(voted_report(None)) == (
        False, "This comparison had no fine-tuned run, so there is nothing to improve: pick one under *Fine-tuned "
               "run*, run the question set again and vote.")
    no_pairs = voted_report(run_id)
    no_pairs.votes = no_pairs.votes[2:4]
    assert compare_tab.improve_hint(no_pairs)[0] is False
    ready, text = compare_tab.improve_hint(voted_report(run_id))
    assert ready and "a DPO run continues **my\\-run** on your 3 preference pair(s)" in text
    assert "appears in Compare as another answer so you can ask the same questions before and after" in text

    monkeypatch.setattr(compare_tab, "improve_with_votes", functools.partial(improve_with_votes, start=False))
    status, picker, arms, button = compare_tab.improve_for_request(voted_report(run_id), ["base", "ft"], None)
    new = [job for job in Workspace(LOCAL_OWNER).runs() if job.config.method == "dpo"]
    assert len(new) == 1 and picker.value == new[0].id
    assert (f"{new[0].name} (still training)", new[0].id) in picker.choices  # listed while it trains
    assert arms.value == ["base", "ft", "ft2"] and button.interactive is False
    assert "Started" in status and "3 preference pair(s) (1 step(s) at learning rate" in status


def test_export_adds_the_preference_pairs_and_says_the_counts(isolated_home: Path) -> None:
    from ui import compare_tab

    files = compare_tab.export_files(rule_report(), Workspace(LOCAL_OWNER))
    names = sorted(Path(f).name for f in files)
    assert names == ["comparison.csv", "comparison.html", "comparison.json", "preference-pairs.jsonl"]
    pairs = next(Path(f) for f in files if f.endswith(".jsonl"))
    assert len(pairs.read_text(encoding="utf-8").splitlines()) == 3
    note = compare_tab.pairs_note(rule_report())
    assert note.startswith("**Preference pairs (preference-pairs.jsonl):** 3 preference pair(s) from 10 vote(s).")
    data = json.loads(next(Path(f) for f in files if f.endswith(".json")).read_text())
    assert data["votes"][0]["time"] == "2025-01-01T00:00:01+00:00"


def test_the_second_run_must_have_finished_and_share_the_base(isolated_home: Path) -> None:
    from ui import compare_tab

    ws = Workspace(LOCAL_OWNER)
    first = finished_run(isolated_home)
    training = JobStore(isolated_home).submit(TrainConfig(max_steps=5), DEMO_DATA, owner=LOCAL_OWNER,
                                              name="still going", start=False)
    with pytest.raises(ValueError, match="has not finished"):
        compare_tab.picked_runs(ws, ["ft", "ft2"], first, training.id)
    job, job2 = compare_tab.picked_runs(ws, ["ft"], first, training.id)  # no After-votes arm: not used
    assert job.id == first and job2 is None


# ----------------------------------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Any, Path, Path]:
    """The tiny random Llama with two different random adapters (the voted run and the run after the votes)."""
    from engine.infer import ChatModel
    from tests.tiny_models import make_tiny_adapter

    first = make_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("voted") / "adapter", seed=1)
    second = make_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("after") / "adapter", seed=2)
    return ChatModel(str(tiny_model_dir)), first, second


def test_ft2_answers_come_from_the_second_adapter(two_adapters: tuple[Any, Path, Path]) -> None:
    """One shared model, switched per arm: the After-votes answer is the second adapter's, and says so."""
    from engine.infer import adapter_hash, adapter_name

    chat, first, second = two_adapters
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0)
    comparer = Comparer(chat, arms=["ft", "ft2", "base"], adapter=first, adapter_label="voted", adapter2=second,
                        adapter2_label="voted + votes", generation=settings)
    seen: list[str | None] = []
    original = chat._select
    chat.gate._select = lambda name: (seen.append(name), original(name))[1]
    question = Question("Say something.", [], None, "q1")
    answers = {arm: final for arm, final in comparer.answer_all(question) if final.done}
    ft, ft2, base = answers["ft"], answers["ft2"], answers["base"]
    assert all(a.error is None for a in answers.values()), {k: a.error for k, a in answers.items()}
    assert seen == [adapter_name(first), adapter_name(second), None]  # the gate switched to each arm's adapter
    assert ft2.provenance["adapter"] == "voted + votes" and ft2.provenance["adapter_hash"] == adapter_hash(second)
    assert ft.provenance["adapter_hash"] == adapter_hash(first) != adapter_hash(second)
    assert ft2.provenance_line.startswith("base ") and f"adapter voted + votes ({adapter_hash(second)[:4]}…)" \
        in ft2.provenance_line
    # Greedy decoding: the arm's answer is exactly what the second adapter alone gives for the same prompt.
    alone = chat.generate(ft2.prompt, adapter=second, settings=settings).strip()
    assert ft2.text == alone and ft2.text != ft.text  # (the two random adapters answer differently)
    assert base.provenance["adapter"] is None
