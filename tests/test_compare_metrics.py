"""Compare without a model: metrics, question sets, leakage, blind votes, exports, arm plumbing, CLI errors."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.generation import GenerationSettings
from engine.__main__ import main
from services import compare
from services.compare import (
    ArmAnswer,
    CompareError,
    Comparer,
    CompareSettings,
    Question,
    Report,
    Vote,
    answer_contained,
    blind_pairs,
    exact_match,
    leakage_check,
    load_questions,
    normalize_answer,
    rouge_l,
    score_answer,
    token_f1,
    wilson_interval,
    win_rates,
)

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert exact_match("the France.", ["France"]) == 1.0
    assert exact_match("in France", ["France"]) == 0.0
    assert token_f1("in France", ["France"]) == pytest.approx(2 / 3)
    assert token_f1("Germany", ["France"]) == 0.0
    assert answer_contained("Normandy is located in France.", ["France"]) == 1.0
    assert answer_contained("Francesca", ["France"]) == 0.0  # word boundaries, not substrings of words
    assert rouge_l("the 10th and 11th centuries", ["in the 10th and 11th centuries"]) == pytest.approx(
        2 * 1 * 0.8 / 1.8)
    assert rouge_l("", ["x"]) == 0.0


def test_wilson_interval_is_the_textbook_one():
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.3968, abs=1e-3) and high == pytest.approx(0.8922, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5


def test_load_questions_csv_and_jsonl(tmp_path: Path):
    csv_file = tmp_path / "q.csv"
    csv_file.write_text("Question,Answer,gold_doc_id\nWhere is Paris?,France|FR,doc1\nWho?,,\n", encoding="utf-8")
    qs = load_questions(csv_file)
    assert [q.question for q in qs] == ["Where is Paris?", "Who?"]
    assert qs[0].references == ["France", "FR"] and qs[0].gold_doc_id == "doc1"
    assert qs[1].references == [] and qs[1].gold_doc_id is None
    jl = tmp_path / "q.jsonl"
    jl.write_text('{"question": "a?", "answers": ["x"], "is_impossible": true}\n'
                  '{"qid": "7", "question": "b?", "answers": ["y", "z"]}\n', encoding="utf-8")
    qs = load_questions(jl)
    assert len(qs) == 1 and qs[0].qid == "7" and qs[0].references == ["y", "z"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "x"}\n', encoding="utf-8")
    with pytest.raises(CompareError, match="question"):
        load_questions(bad)


def test_load_squad_questions_skips_impossible():
    qs = load_questions(SQUAD / "questions.jsonl", limit=20)
    assert len(qs) == 20 and all(q.references and q.gold_doc_id for q in qs)


def test_leakage_check_flags_exact_and_near_duplicates():
    qs = [Question("What is the capital of France?"), Question("what is the CAPITAL of france"),
          Question("How do I reset my password in the app settings?"), Question("Completely unrelated one")]
    prompts = ["What is the capital of France?", "How do I reset my password in the app's settings?"]
    assert leakage_check(qs, prompts, 0.8) == 3
    assert "exact" in (qs[0].leak or "") and "exact" in (qs[1].leak or "")
    assert "near-duplicate" in (qs[2].leak or "")
    assert qs[3].leak is None


def test_holdout_from_fine_tuning_data(tmp_path: Path):
    data = tmp_path / "ft.jsonl"
    words = ["apple", "river", "engine", "violin", "planet", "garden", "castle", "winter", "copper", "falcon"]
    rows = [{"instruction": f"Why does the {words[i % 10]} need {words[(i * 3 + 1) % 10]} and {i * 17} "
                            f"{words[i // 4]}?", "output": f"Answer {i}"} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    questions, train = compare.holdout_questions(data, 0.1, seed=1)
    assert len(questions) == 4 and len(train) == 36
    assert all(q.references and q.references[0].startswith("Answer") for q in questions)
    assert leakage_check(questions, train, 0.95) == 0  # held-out questions are not in the training part
    assert leakage_check(questions, [q.question for q in questions]) == 4


def test_failure_kinds_for_rag_arms():
    q = Question("Where?", ["France"], "doc1")
    miss = ArmAnswer("rag", text="Germany", retrieved=[{"source": "doc2", "location": "doc2", "score": 1, "text": ""}])
    score_answer(miss, q)
    assert miss.failure == "retrieval failure" and miss.scores["retrieval_hit"] == 0.0
    used = ArmAnswer("ft+rag", text="Germany", retrieved=[{"source": "doc1", "location": "doc1", "score": 1,
                                                          "text": ""}])
    score_answer(used, q)
    assert used.failure == "generation failure" and used.scores["retrieval_hit"] == 1.0
    right = ArmAnswer("rag", text="It is in France.", retrieved=used.retrieved)
    score_answer(right, q)
    assert right.failure == "" and right.scores["contained"] == 1.0
    base = ArmAnswer("base", text="Germany")
    score_answer(base, q)
    assert base.failure == "wrong answer" and base.scores["retrieval_hit"] is None


def test_blind_pairs_are_seeded_and_shuffled():
    qids = [str(i) for i in range(40)]
    pairs = blind_pairs(qids, ["base", "rag"], seed=3)
    assert pairs == blind_pairs(qids, ["base", "rag"], seed=3)
    lefts = {a for _, a, _ in pairs}
    assert lefts == {"base", "rag"}  # positions really are shuffled per question
    with pytest.raises(CompareError):
        blind_pairs(qids, ["base"])


def test_win_rates_with_confidence_intervals():
    votes = [Vote("1", "base", "rag", "B"), Vote("2", "rag", "base", "A"), Vote("3", "rag", "base", "tie"),
             Vote("4", "base", "rag", "both_bad"), Vote("5", "base", "rag", "A")]
    rates = win_rates(votes)
    assert rates["rag"]["wins"] == 2 and rates["rag"]["votes"] == 5 and rates["rag"]["losses"] == 1
    assert rates["base"]["ties"] == 1 and rates["base"]["both_bad"] == 1
    assert rates["rag"]["win_rate"] == pytest.approx(0.4)
    assert rates["rag"]["ci95"] == pytest.approx(list(wilson_interval(2, 5)))
    with pytest.raises(CompareError):
        Vote("1", "a", "b", "maybe")


class FakeChat:
    """Stands in for ChatModel (the Comparer is under test, not the model): records what each arm asked for,
    streams a canned answer with the real bundled tokenizer, and reports provenance as ChatModel does."""

    base_model = "fake/base"

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.calls: list[tuple[str, str | None, GenerationSettings | None]] = []

    def stream(self, messages: Any, *, adapter: Any = None, settings: GenerationSettings | None = None,
               adapter_label: str | None = None, on_provenance: Any = None) -> Iterator[str]:
        from engine.infer import Provenance, adapter_hash

        self.calls.append((messages, adapter, settings))
        yield from (["Paris ", "is in ", "France"] if adapter else ["I ", "do not know"])
        if on_provenance:
            on_provenance(Provenance(self.base_model, adapter=adapter_label if adapter else None,
                                     adapter_hash=adapter_hash(adapter), generation=settings.to_dict()))


def _report(tmp_path: Path, tokenizer: Any) -> Report:
    chat = FakeChat(tokenizer)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    comparer = Comparer(chat, arms=["base", "ft"], adapter=adapter, generation=GenerationSettings(max_new_tokens=7))
    report = comparer.run([Question("Where is Paris? <script>x</script>", ["France"], None, "q1"),
                           Question("Capital?", ["Paris"], None, "q2")])
    return report


def test_arms_share_settings_and_switch_only_the_adapter(tmp_path: Path, tokenizer):
    report = _report(tmp_path, tokenizer)
    summary = report.summary()
    assert summary["ft"]["contained"] == 1.0 and summary["base"]["contained"] == 0.0
    first = report.rows[0].answers["ft"]
    assert first.text == "Paris is in France" and first.ttft_s is not None and first.total_s >= first.ttft_s
    assert first.tokens == 4
    assert report.config["generation"]["max_new_tokens"] == 7
    assert report.config["adapter_hash"] and report.config["base_model"] == "fake/base"
    with pytest.raises(CompareError, match="adapter"):
        Comparer(FakeChat(), arms=["base", "ft"])
    with pytest.raises(CompareError, match="index"):
        Comparer(FakeChat(), arms=["rag"])
    with pytest.raises(CompareError, match="Unknown"):
        Comparer(FakeChat(), arms=["base", "gpt5"])


def test_exports_json_csv_and_self_contained_html(tmp_path: Path, tokenizer):
    report = _report(tmp_path, tokenizer)
    report.votes.append(Vote("q1", "ft", "base", "A"))
    data = json.loads(report.save(tmp_path / "r.json").read_text())
    assert set(data) == {"config", "summary", "questions", "votes", "win_rates"}
    assert data["questions"][0]["answers"]["ft"]["text"] == "Paris is in France"
    assert data["win_rates"]["ft"]["wins"] == 1
    provenance = data["questions"][0]["answers"]["ft"]["provenance"]
    assert provenance["base_model"] == "fake/base" and provenance["adapter_hash"] == report.config["adapter_hash"]
    assert provenance["generation"]["max_new_tokens"] == 7
    assert data["questions"][0]["answers"]["base"]["provenance"]["adapter"] is None
    csv_text = report.save(tmp_path / "r.csv").read_text()
    assert csv_text.splitlines()[0].startswith("qid,question") and len(csv_text.strip().splitlines()) == 5
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert {r["arm"]: r["adapter_hash"] for r in rows if r["qid"] == "q1"} == {"base": "",
                                                                               "ft": report.config["adapter_hash"]}
    assert all(json.loads(r["generation"])["max_new_tokens"] == 7 for r in rows)
    page = report.save(tmp_path / "r.html").read_text()
    text = html.unescape(page)
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "&lt;script&gt;" in page and "<script" not in page  # user text is escaped; no scripts at all
    assert not re.search(r"(src|href)=", page)  # self-contained: nothing fetched from elsewhere
    for needle in ("fake/base", report.config["adapter_hash"], '"max_new_tokens": 7', "Paris is in France",
                   "Blind votes", "A is better", "Fine-tuned"):
        assert needle in text, needle


def test_compare_settings_validate():
    with pytest.raises(ValueError, match="question"):
        CompareSettings(base_template="no placeholder")
    with pytest.raises(ValueError, match="context"):
        CompareSettings(rag_template="{question} only")
    assert CompareSettings(rag_template="").rag_template == ""


def test_cli_refuses_bad_requests_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "a?", "answer": "b"}\n')
    assert main(["compare", "--questions", str(q), "--arms", "base,rag", "--out", str(tmp_path / "r.json")]) == 2
    assert "--corpus" in capsys.readouterr().err
    assert main(["compare", "--questions", str(q), "--arms", "base,nope", "--out", str(tmp_path / "r.json")]) == 2
    assert "Unknown arm" in capsys.readouterr().err
