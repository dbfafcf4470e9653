"""Prompting, RAG, fine-tuning or both: the usual decision, as questions a non-coder can answer.

The rules are the ones courses teach, in order of cost: try prompting first; knowledge that changes or must
be cited belongs in documents (RAG); style, format and behaviour that a prompt cannot hold belong in the
weights (fine-tuning), given enough examples; facts *and* style need both. Where the user has measured
(a Compare report), the measurement is shown next to the advice, because their own questions beat any rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "changes": ("Does the knowledge the model needs change often (prices, policies, new documents)?",
                ("yes", "no", "not sure")),
    "citations": ("Must answers point to the source they came from?", ("yes", "no")),
    "goal": ("What should change in the answers: the facts they know, or their style and format?",
             ("facts", "style", "both")),
    "examples": ("How many good example question–answer pairs do you have?",
                 ("none", "under 100", "100 to 1,000", "over 1,000")),
    "prompt_works": ("Does a well-written instruction already get the answers mostly right?",
                     ("yes", "no", "not tried")),
}
APPROACHES = ("Prompting", "RAG", "Fine-tuning", "Fine-tuning + RAG")
ARM_NAMES = {"base": "the base model", "ft": "the fine-tuned model", "rag": "RAG", "ft+rag": "fine-tuned + RAG"}
SMALL_SAMPLE = 30  # questions: below this, differences of a few points are likely chance


@dataclass(frozen=True)
class Advice:
    """The recommended approach, why, and what the user's own measurements say."""

    approach: str
    reasons: list[str]
    evidence: list[str] = field(default_factory=list)


def _check(answers: dict[str, str]) -> None:
    for key, (question, choices) in QUESTIONS.items():
        if answers.get(key) not in choices:
            raise ValueError(f"Answer the question “{question}” ({', '.join(choices)}).")


def recommend(answers: dict[str, str], report: dict[str, Any] | None = None) -> Advice:
    """Advice for the answers to :data:`QUESTIONS`; ``report`` is a Compare report's JSON, when there is one."""
    _check(answers)
    needs_documents = (answers["changes"] == "yes" or answers["citations"] == "yes"
                       or answers["goal"] in ("facts", "both"))
    wants_style = answers["goal"] in ("style", "both")
    enough = answers["examples"] in ("100 to 1,000", "over 1,000")
    reasons = []
    if answers["prompt_works"] == "yes" and not needs_documents:
        approach = "Prompting"
        reasons.append("A good instruction already works: keep it, it costs nothing to change.")
    elif wants_style and enough and needs_documents:
        approach = "Fine-tuning + RAG"
        reasons.append("You want a style the weights should learn and knowledge that documents should supply.")
    elif wants_style and enough:
        approach = "Fine-tuning"
        reasons.append("Style, format and tone are what fine-tuning teaches best, and you have enough examples.")
    else:
        approach = "RAG" if needs_documents else "Prompting"
        reasons.extend(_rag_reasons(answers, enough))
    if answers["prompt_works"] == "not tried":
        reasons.append("Try a clear instruction first (Chat tab): it is the cheapest baseline to beat.")
    return Advice(approach, reasons, evidence_from(report) if report else [])


def _rag_reasons(answers: dict[str, str], enough: bool) -> list[str]:
    reasons = []
    if answers["changes"] == "yes":
        reasons.append("Knowledge that changes belongs in documents: re-index them, no retraining.")
    if answers["citations"] == "yes":
        reasons.append("RAG can show the passage behind each answer; fine-tuned weights cannot.")
    if answers["goal"] == "facts":
        reasons.append("Fine-tuning teaches facts poorly and can make a model confidently wrong; retrieval gives "
                       "it the text.")
    if answers["goal"] in ("style", "both") and not enough:
        reasons.append("Fine-tuning needs at least about a hundred good examples; with fewer, describe the style "
                       "in the prompt and collect examples as you go.")
    return reasons or ["Start with documents and a clear prompt; fine-tune later if the style still falls short."]


def evidence_from(report: dict[str, Any]) -> list[str]:
    """What the user's own Compare report measured: the arms ranked by answers containing the reference."""
    summary = report.get("summary") or {}
    scored = [(arm, entry.get("contained"), entry.get("questions", 0)) for arm, entry in summary.items()
              if isinstance(entry, dict) and entry.get("contained") is not None]
    if not scored:
        return ["Your latest comparison has no scored questions (add reference answers to score them)."]
    scored.sort(key=lambda item: -item[1])
    questions = max(n for _, _, n in scored)
    ranking = ", ".join(f"{ARM_NAMES.get(arm, arm)} {score:.0%}" for arm, score, _ in scored)
    lines = [f"On your {questions} question(s), answers containing the reference: {ranking}."]
    if questions < SMALL_SAMPLE:
        lines.append(f"With fewer than {SMALL_SAMPLE} questions, gaps of a few points may be chance: add questions "
                     "before deciding.")
    return lines
