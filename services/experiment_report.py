"""The Experiment's verdict: which approach wins on these documents, by how much, and how sure we are.

Why a module of its own: the numbers are the product here. A user decides between fine-tuning and RAG
from this page, so every figure carries its uncertainty (a paired bootstrap interval for each difference,
Wilson intervals for rates, Holm's correction across the comparisons) and the verdict says "too few
questions to tell" whenever that is the truth. Everything is plain data in, plain data out (no model,
no files), so it is tested against hand-computed values and shared by the job, the CLI and the tab.
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from core.stats import holm, paired_bootstrap, wilson_interval
from engine.files import csv_text

ARMS = ("base", "ft", "rag", "ft+rag")
ARM_NAMES = {"base": "Base model", "ft": "Fine-tuned", "rag": "RAG", "ft+rag": "Fine-tuned + RAG"}
METRIC_NAMES = {
    "judge": "Judged correct (LLM judge)",
    "f1": "Word overlap with the reference answer (token F1)",
    "contained": "Reference answer found in the reply",
}
ALPHA = 0.05


def reference_correct(scores: Mapping[str, Any]) -> bool:
    """Whether an answer counts as right by the reference answer alone (what the judge is checked against):
    the reference appears in it, or half its words match (token F1 >= 0.5)."""
    return bool(scores.get("contained")) or (scores.get("f1") or 0.0) >= 0.5


def arm_values(questions: Sequence[Mapping[str, Any]], arm: str, metric: str) -> list[float]:
    """One number per question for ``arm`` (a judge verdict that could not be read counts as not correct)."""
    values = []
    for q in questions:
        answer = q["answers"].get(arm) or {}
        value = answer.get(metric)
        values.append(float(value) if value is not None else 0.0)
    return values


def arm_summary(questions: Sequence[Mapping[str, Any]], arms: Sequence[str], *, seed: int,
                resamples: int) -> dict[str, dict[str, Any]]:
    """Per arm: mean F1 with a bootstrap interval, and the rates (contained, judged correct) with Wilson intervals."""
    out: dict[str, dict[str, Any]] = {}
    n = len(questions)
    for arm in arms:
        f1 = arm_values(questions, arm, "f1")
        mean = paired_bootstrap(f1, [0.0] * n, resamples=resamples, seed=seed) if n else None
        entry: dict[str, Any] = {"name": ARM_NAMES[arm], "n": n,
                                 "f1": {"mean": mean.diff if mean else None,
                                        "ci95": [mean.low, mean.high] if mean else None}}
        for metric in ("contained", "judge"):
            answers = [(q["answers"].get(arm) or {}).get(metric) for q in questions]
            known = [float(a) for a in answers if a is not None]
            if known:
                entry[metric] = _rate(known, seed=seed, resamples=resamples)
        latencies = [(q["answers"].get(arm) or {}).get("total_s") for q in questions]
        known_latency = [v for v in latencies if v is not None]
        entry["latency_s"] = sum(known_latency) / len(known_latency) if known_latency else None
        out[arm] = entry
    return out


def _rate(values: list[float], *, seed: int, resamples: int) -> dict[str, Any]:
    """A share of right answers with its Wilson interval; a pairwise judge's fractional scores (wins among
    comparisons) get a bootstrap interval of their mean instead."""
    if all(v in (0.0, 1.0) for v in values):
        hits = int(sum(values))
        return {"rate": hits / len(values), "hits": hits, "n": len(values),
                "ci95": list(wilson_interval(hits, len(values)))}
    mean = paired_bootstrap(values, [0.0] * len(values), resamples=resamples, seed=seed)
    return {"rate": mean.diff, "n": len(values), "ci95": [mean.low, mean.high]}


def comparisons(questions: Sequence[Mapping[str, Any]], arms: Sequence[str], metric: str, *, seed: int,
                resamples: int) -> list[dict[str, Any]]:
    """Every pair of arms on ``metric``: paired bootstrap difference, its 95% interval, and Holm-adjusted p.

    Paired because both arms answered the same questions: the question-to-question spread (some questions
    are just hard) cancels out, which is what makes a small question set usable at all.
    """
    rows = []
    for a, b in itertools.combinations(arms, 2):
        d = paired_bootstrap(arm_values(questions, a, metric), arm_values(questions, b, metric),
                             resamples=resamples, seed=seed)
        rows.append({"a": a, "b": b, "metric": metric, "mean_a": d.mean_a, "mean_b": d.mean_b, "diff": d.diff,
                     "ci95": [d.low, d.high], "p": d.p_value, "n": d.n})
    adjusted = holm({f"{r['a']} vs {r['b']}": r["p"] for r in rows})
    for r in rows:
        r["p_holm"] = adjusted[f"{r['a']} vs {r['b']}"]
        r["significant"] = r["p_holm"] < ALPHA and not (r["ci95"][0] <= 0.0 <= r["ci95"][1])
    return rows


def _difference(row: Mapping[str, Any], winner: str) -> tuple[float, float, float]:
    """The difference winner minus other, with its interval, whichever side of the row the winner is on."""
    if row["a"] == winner:
        return row["diff"], row["ci95"][0], row["ci95"][1]
    return -row["diff"], -row["ci95"][1], -row["ci95"][0]


def _signed(value: float) -> str:
    """+0.31 / -0.05, and a plain 0.00 for a difference that rounds to nothing (never "-0.00")."""
    text = f"{value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def _fmt_diff(diff: float, low: float, high: float) -> str:
    return f"{_signed(diff)} (95% interval {_signed(low)} to {_signed(high)})"


def decide(rows: Sequence[Mapping[str, Any]], arms: Sequence[str], n: int, metric: str,
           min_questions: int) -> dict[str, Any]:
    """The verdict in plain words: a winner only when it beats every other arm after Holm's correction."""
    means = {arm: next((r["mean_a"] if r["a"] == arm else r["mean_b"] for r in rows if arm in (r["a"], r["b"])),
                       0.0) for arm in arms}
    best = max(arms, key=lambda arm: means[arm])
    against = [r for r in rows if best in (r["a"], r["b"])]
    beaten = [r for r in against if r["significant"] and _difference(r, best)[0] > 0]
    close = [r["b"] if r["a"] == best else r["a"] for r in against if r not in beaten]
    label = METRIC_NAMES[metric]
    base = {"metric": metric, "metric_name": label, "best": best, "means": means, "n": n}
    if n < min_questions:
        return {**base, "winner": None, "confident": False,
                "text": (f"Too few questions to tell: {n} test question(s), and a verdict needs at least "
                         f"{min_questions}. Best so far: {ARM_NAMES[best]} ({means[best]:.2f}), but with this few "
                         "questions the difference could be chance. Generate or add more questions and run again.")}
    if not close:
        worst = min((r for r in against), key=lambda r: _difference(r, best)[0])
        other = worst["b"] if worst["a"] == best else worst["a"]
        return {**base, "winner": best, "confident": True,
                "text": (f"{ARM_NAMES[best]} wins on these documents: {label} {means[best]:.2f}, ahead of every other "
                         f"approach; its smallest lead, over {ARM_NAMES[other]}, is "
                         f"{_fmt_diff(*_difference(worst, best))}, Holm-adjusted p = {worst['p_holm']:.3f}, "
                         f"n = {n}.")}
    tied = ", ".join(ARM_NAMES[a] for a in close)
    return {**base, "winner": None, "confident": False,
            "text": (f"No clear winner on {n} questions: {ARM_NAMES[best]} scores highest ({label} "
                     f"{means[best]:.2f}), but it is not reliably better than {tied} (the 95% intervals of the "
                     "differences include zero after Holm's correction). More questions would narrow them.")}


def key_question(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fine-tuning against RAG directly: the one line most people came for."""
    row = next((r for r in rows if {r["a"], r["b"]} == {"ft", "rag"}), None)
    if row is None:
        return ""
    diff, low, high = _difference(row, "rag")
    if row["significant"]:
        who = "RAG" if diff > 0 else "Fine-tuning"
        return (f"{who} is better than {'fine-tuning' if who == 'RAG' else 'RAG'} here: RAG minus fine-tuned "
                f"{_fmt_diff(diff, low, high)}, Holm-adjusted p = {row['p_holm']:.3f}.")
    return (f"Fine-tuning and RAG cannot be told apart here: RAG minus fine-tuned {_fmt_diff(diff, low, high)}, "
            f"Holm-adjusted p = {row['p_holm']:.3f}.")


# ------------------------------------------------------------------------------------ rendering


def to_csv(report: Mapping[str, Any]) -> str:
    """One line per question and arm, for a spreadsheet (formula-looking cells neutralised)."""
    header = ["id", "question", "reference", "source", "page", "arm", "answer", "f1", "contained", "exact_match",
              "rouge_l", "judge", "reference_correct", "total_s", "doc_rank", "passage_rank"]
    rows: list[list[Any]] = [header]
    for q in report["questions"]:
        for arm, a in q["answers"].items():
            rows.append([q["id"], q["question"], q["reference"], q["source"], q.get("page"), arm, a.get("text"),
                         a.get("f1"), a.get("contained"), a.get("exact_match"), a.get("rouge_l"), a.get("judge"),
                         a.get("reference_correct"),
                         a.get("total_s"), q.get("doc_rank"), q.get("passage_rank")])
    return csv_text(rows)


def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, default=str)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("" if value is None else str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """Per arm: the figures people compare, intervals included (shared by the HTML page and the tab)."""
    rows = []
    unjudged = "no readable verdict" if (report.get("judge") or {}).get("used") else "not judged"
    for s in report["arms"].values():
        f1 = s["f1"]
        judge = s.get("judge") or {}
        contained = s.get("contained") or {}
        rows.append([s["name"], _interval(f1.get("mean"), f1.get("ci95")),
                     _interval(contained.get("rate"), contained.get("ci95")),
                     _interval(judge.get("rate"), judge.get("ci95")) if judge else unjudged,
                     None if s.get("latency_s") is None else round(s["latency_s"], 2)])
    return rows


SUMMARY_HEADER = ["Approach", "Word overlap (F1)", "Reference found", "Judged correct", "Seconds per answer"]


def _interval(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.2f}"


def comparison_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    return [[f"{ARM_NAMES[r['a']]} − {ARM_NAMES[r['b']]}", _fmt_diff(r["diff"], *r["ci95"]), round(r["p_holm"], 4),
             "yes" if r["significant"] else "no"] for r in report["comparisons"]]


COMPARISON_HEADER = ["Difference", "Mean difference (95% interval)", "Holm-adjusted p", "Clear difference?"]


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained page (inline CSS, no scripts or links) stamped with every setting."""
    verdict = report["verdict"]
    retrieval = report.get("retrieval") or {}
    judge = report.get("judge") or {}
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Experiment report</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style>",
        f"<h1>Experiment: {html.escape(str(report['config'].get('name', '')))}</h1>",
        f"<p><b>{html.escape(verdict['text'])}</b></p>",
        f"<p>{html.escape(report.get('key_question') or '')}</p>",
        f"<p>{html.escape(report.get('split_summary') or '')}</p>",
        f"<p>{html.escape(judge.get('reason') or '')}</p>",
        "<h2>Per approach</h2>", _table(SUMMARY_HEADER, summary_rows(report)),
        "<h2>Differences</h2>", _table(COMPARISON_HEADER, comparison_rows(report)),
        "<h2>Retrieval on the test questions</h2>",
        _table(["Level", "hit@1", "hit@5", "hit@10", "MRR@10"],
               [[level, m.get("hit_at_1"), m.get("hit_at_5"), m.get("hit_at_10"), m.get("mrr_at_10")]
                for level, m in retrieval.items() if isinstance(m, dict)]),
        "<h2>Questions</h2>",
        _table(["Question", "Reference", "Source", *[ARM_NAMES[a] for a in report["config"]["arms"]]],
               [[q["question"], q["reference"], q["source"],
                 *[(q["answers"].get(a) or {}).get("text") for a in report["config"]["arms"]]]
                for q in report["questions"]]),
        "<h2>Settings</h2>", f"<pre>{html.escape(json.dumps(report['config'], indent=2, default=str))}</pre>",
    ]
    return "\n".join(parts)
