"""The RAG prompt for small models: the filled template, heading stripping, and citations in replies the bundled
135M model really wrote (taken from ``python -m bench rag --answers`` runs). Pure functions on real SQuAD-small
paragraphs: no model, no index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.rag import PROMPT_VARIANTS, question_sample, score_reply
from rag.answer import build_prompt, parse_citations, tidy_reply
from rag.chunking import Chunk
from rag.hits import Hit
from rag.pipeline import PipelineSpec
from rag.stages import DEFAULT_PROMPT

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"
QUESTION = "In what country is Normandy located?"


@pytest.fixture(scope="module")
def hits() -> list[Hit]:
    """The first three SQuAD-small paragraphs as retrieved hits ("France" is in the first two, not the third)."""
    rows = [json.loads(line) for line in (SQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:3]]
    return [Hit(Chunk(r["text"], r["doc_id"], 0, title=r.get("title")), i, 1.0 - i / 10, rank=i + 1)
            for i, r in enumerate(rows)]


@pytest.mark.parametrize("template", [DEFAULT_PROMPT, *(t for t in PROMPT_VARIANTS.values() if t)])
def test_prompt_numbers_every_passage_and_ends_with_the_question(hits, template):
    prompt = build_prompt(f"  {QUESTION}\n", hits, PipelineSpec().with_params("prompt", template=template))
    for number, hit in enumerate(hits, start=1):
        assert f"[{number}] ({hit.chunk.source})\n{hit.chunk.text[:80]}" in prompt
    assert "{context}" not in prompt and "{question}" not in prompt
    # The question comes after every passage: a 135M model attends most to the end of its prompt.
    assert prompt.rindex(QUESTION) > prompt.index(hits[-1].chunk.text[:80])
    assert f"Question: {QUESTION}\n" in prompt or prompt.endswith(f"Question: {QUESTION}")


def test_short_template_asks_for_a_bracketed_number(hits):
    prompt = build_prompt(QUESTION, hits, PipelineSpec().with_params("prompt", template=PROMPT_VARIANTS["short"]))
    tail = prompt[prompt.rindex(hits[-1].chunk.text[-40:]):]
    assert "[1]" in tail and tail.rstrip().endswith("Answer:")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("# ReAct: Synergizing Reasoning and Acting\n\nReAct interleaves reasoning and actions [1].",
         "ReAct: Synergizing Reasoning and Acting\n\nReAct interleaves reasoning and actions [1]."),
        ("## Normandy ##\nNormandy is in France [1].", "Normandy\nNormandy is in France [1]."),
        ("Answer: France [1].", "France [1]."),
        ("**Answer:** The Normans were Catholic.", "The Normans were Catholic."),
        ("C# and #hashtags stay; so does a line like\n#not-a-heading", "C# and #hashtags stay; so does a line like\n"
         "#not-a-heading"),
        ("  Dorchester  ", "Dorchester"),
    ],
)
def test_tidy_reply_strips_heading_markers_and_answer_label_only(raw, shown):
    assert tidy_reply(raw) == shown


@pytest.mark.parametrize(
    ("reply", "valid", "invalid"),
    [
        ('The answer is [1]: The Norman castle was named "Trim Castle" in the original passage.', [1], []),
        ("In the context of medieval Europe, the answer would be [1] or [3], specifically [1] – King William I",
         [1, 3], []),
        ("Normandy is a region of France [2][1].", [2, 1], []),
        ("(1) The answer is: (1).\n\nWhat is the answer for the question: Who was Emma's brother?", [], []),
        ("Nordic countries", [], []),
        ("The Normans came from Norway [6].", [], [6]),
    ],
)
def test_citations_in_real_small_model_replies(hits, reply, valid, invalid):
    citations, bad = parse_citations(tidy_reply(reply), hits)
    assert [c.number for c in citations] == valid
    assert bad == invalid


def test_a_reply_without_brackets_gets_no_citation_added(hits):
    """Honesty: words copied from passage 1 do not earn a citation the model did not write."""
    copied = "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway."
    assert "raiders and pirates from Denmark, Iceland and Norway" in hits[0].chunk.text
    assert tidy_reply(copied) == copied and parse_citations(tidy_reply(copied), hits) == ([], [])


def test_bench_scores_containment_and_correct_citation(hits):
    right = score_reply("## Where\nNormandy is in France [1].", "Where\nNormandy is in France [1].", hits,
                        ["France"])
    assert (right["contained"], right["cited"], right["cited_correct"], right["heading_raw"],
            right["heading_shown"]) == (1.0, 1.0, 1.0, 1.0, 0.0)
    wrong_source = score_reply("France [3].", "France [3].", hits, ["France"])
    assert (wrong_source["cited"], wrong_source["cited_correct"]) == (1.0, 0.0)
    uncited = score_reply("It is in Djibouti.", "It is in Djibouti.", hits, ["France"])
    assert (uncited["contained"], uncited["cited"]) == (0.0, 0.0)


def test_question_sets_are_disjoint_and_spread():
    questions = [{"qid": str(i)} for i in range(293)]
    a, b = question_sample(questions, "A", 40), question_sample(questions, "B", 40)
    assert len(a) == len(b) == 40 and not {q["qid"] for q in a} & {q["qid"] for q in b}
    assert int(a[-1]["qid"]) > 250
