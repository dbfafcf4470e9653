"""Prompt numbering and citation parsing on real retrieved chunks; the answer event protocol."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rag.answer import answer, build_prompt, cited_numbers, parse_citations
from rag.embedders import BUNDLED, get_embedder
from rag.events import AnswerEvent, PromptEvent, RetrievedEvent, TokenEvent
from rag.index import RagIndex
from rag.pipeline import PipelineSpec
from rag.retrieve import search

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs" / "unstructured"


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> RagIndex:
    get_embedder(BUNDLED)
    folder = tmp_path_factory.mktemp("answer")
    index = RagIndex.create(folder / "idx", PipelineSpec().with_params("split", chunk_size=400, chunk_overlap=40))
    for name in ["fake-memo.pdf", "book-war-and-peace-1p.txt", "fake-power-point.pptx", "handbook-1p.docx"]:
        shutil.copy(DOCS / name, folder / name)
    list(index.add_files(sorted(p for p in folder.iterdir() if p.is_file())))
    return index


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("Water was delivered [1].", [1]),
        ("See [2][1] and again [2].", [2, 1]),
        ("Both [1, 3] agree; also [4; 5].", [1, 3, 4, 5]),
        ("A range [2-4] and [1 and 2].", [2, 3, 4, 1]),
        ("No citation here, [a] or [] or [1.5].", []),
    ],
)
def test_cited_numbers(text, numbers):
    assert cited_numbers(text) == numbers


def test_prompt_numbers_real_chunks_and_citations_map_back(index):
    question = "How many bottles of water were there?"
    hits = search(index, question).hits
    assert hits[0].chunk.source == "fake-memo.pdf"
    prompt = build_prompt(question, hits, index.spec)
    for number, hit in enumerate(hits, start=1):
        assert f"[{number}] ({hit.chunk.location})" in prompt
    assert prompt.rstrip().endswith("Answer:") and question in prompt

    written = "There were 20,000 bottles of water [1]. Prince Vasili is unrelated [9]."
    citations, invalid = parse_citations(written, hits)
    assert [c.number for c in citations] == [1] and citations[0].hit.chunk.source == "fake-memo.pdf"
    assert citations[0].hit.chunk.page == 1
    assert invalid == [9]


def test_custom_template_keeps_literal_braces(index):
    spec = index.spec.with_params("prompt", template='Reply as JSON {"answer": ...}.\n{context}\nQ: {question}')
    hits = search(index, "Genoa and Lucca", spec).hits
    prompt = build_prompt("Genoa and Lucca?", hits, spec)
    assert prompt.startswith('Reply as JSON {"answer": ...}.') and "Q: Genoa and Lucca?" in prompt


def test_answer_streams_events_in_order(index):
    seen_prompts: list[str] = []

    def generate(prompt: str):
        # A deterministic "model": quotes the first context line it was given, with a citation.
        seen_prompts.append(prompt)
        first = prompt.split("[1] (", 1)[1].split("\n", 1)[1].split("\n", 1)[0]
        yield from (first[:40], " [1]", ".")

    events = list(answer(index, "What does the memo say about water?", generate))
    kinds = [type(e) for e in events]
    assert kinds[0] is RetrievedEvent and kinds[1] is PromptEvent and kinds[-1] is AnswerEvent
    assert kinds[2:-1] == [TokenEvent] * 3
    final = events[-1]
    assert final.text.endswith("[1].") and final.citations[0].hit == events[0].hits[0]
    assert seen_prompts == [events[1].prompt]
