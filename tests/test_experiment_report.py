"""The Experiment's verdict from per-question scores: winners only when the data say so, "too few" when it is so."""

from __future__ import annotations

from typing import Any

from services import experiment_report as er


def rows(scores: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Question rows as the evaluation writes them, with F1 per arm from ``scores``."""
    n = len(next(iter(scores.values())))
    return [{"id": f"q{i}", "question": f"question {i}?", "reference": "x", "source": "doc", "page": None,
             "answers": {arm: {"text": "t", "f1": values[i], "contained": values[i] >= 0.5, "total_s": 1.0}
                         for arm, values in scores.items()}} for i in range(n)]


def test_a_clear_winner_is_named_with_its_smallest_lead_and_interval() -> None:
    n = 30
    questions = rows({"base": [0.0] * n, "ft": [0.1] * n, "rag": [0.9] * n, "ft+rag": [0.5] * n})
    comparisons = er.comparisons(questions, er.ARMS, "f1", seed=0, resamples=500)
    assert len(comparisons) == 6  # every pair of the four approaches
    assert all(c["p_holm"] >= c["p"] for c in comparisons)  # Holm never makes a difference look surer
    verdict = er.decide(comparisons, er.ARMS, n, "f1", min_questions=10)
    assert verdict["winner"] == "rag" and verdict["confident"]
    assert "RAG wins on these documents" in verdict["text"]
    assert "Fine-tuned + RAG" in verdict["text"] and "+0.40" in verdict["text"]  # smallest lead: 0.9 - 0.5
    assert "RAG is better than fine-tuning" in er.key_question(comparisons)


def test_noise_gives_no_winner_and_few_questions_give_too_few_to_tell() -> None:
    pattern = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    noisy = rows({"base": pattern, "ft": pattern[1:] + pattern[:1], "rag": pattern[::-1],
                  "ft+rag": pattern[2:] + pattern[:2]})
    comparisons = er.comparisons(noisy, er.ARMS, "f1", seed=0, resamples=500)
    verdict = er.decide(comparisons, er.ARMS, len(noisy), "f1", min_questions=10)
    assert verdict["winner"] is None and "No clear winner on 12 questions" in verdict["text"]

    few = rows({"base": [0.0] * 4, "ft": [0.0] * 4, "rag": [1.0] * 4, "ft+rag": [1.0] * 4})
    verdict = er.decide(er.comparisons(few, er.ARMS, "f1", seed=0, resamples=500), er.ARMS, 4, "f1", 10)
    assert verdict["winner"] is None and verdict["text"].startswith("Too few questions to tell: 4 test question(s)")


def test_arm_summary_has_wilson_intervals_for_rates_and_the_html_page_holds_every_table() -> None:
    questions = rows({"base": [1.0] * 8 + [0.0] * 2, "ft": [0.0] * 10, "rag": [1.0] * 10, "ft+rag": [0.5] * 10})
    summary = er.arm_summary(questions, er.ARMS, seed=0, resamples=300)
    assert summary["base"]["contained"]["hits"] == 8
    low, high = summary["base"]["contained"]["ci95"]
    assert round(low, 3) == 0.490 and round(high, 3) == 0.943  # Wilson 95% for 8/10
    assert summary["base"]["f1"]["mean"] == 0.8
    comparisons = er.comparisons(questions, er.ARMS, "f1", seed=0, resamples=300)
    report = {"config": {"name": "demo", "arms": list(er.ARMS)}, "questions": questions, "arms": summary,
              "comparisons": comparisons, "verdict": er.decide(comparisons, er.ARMS, 10, "f1", 10),
              "retrieval": {"n": 10, "document": {"hit_at_1": 0.5}, "passage": {"hit_at_1": 0.3}}, "judge": {}}
    page = er.render_html(report)
    for heading in ("Per approach", "Differences", "Retrieval on the test questions", "Questions", "Settings"):
        assert heading in page
    assert "<script" not in page
    assert er.to_csv(report).count("\n") == 1 + 10 * 4  # header + one line per question and approach
