"""Parent-child (small-to-big) retrieval: small pieces are searched, their parent chunk is what the model reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import SettingsError
from rag.answer import build_prompt
from rag.chunking import Chunk, split_document, split_parent_child
from rag.gold import Gold, hit_rank, sentences
from rag.index import PARENTS_FILE, RagIndex
from rag.ingest import load_file
from rag.pipeline import PipelineSpec
from rag.retrieve import search
from rag.stages import ParentChildSettings, SplitSettings

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs" / "unstructured"
BOOK = DOCS / "book-war-and-peace-1p.txt"  # ~3,000 characters: 4 parents of 1,000, ~20 pieces of 200
pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data missing at {DOCS}")

QUESTION = "What did the prince say about the fete at the English ambassador's on Wednesday?"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_STUDIO_HOME", str(tmp_path / "home"))


def _run(events):
    return list(events)


def _parent_child_spec() -> PipelineSpec:
    return (PipelineSpec().with_enabled("parent_child", True)
            .with_params("parent_child", child_size=200, child_overlap=20))


def test_children_are_pieces_of_their_parents():
    doc = load_file(BOOK)
    split = SplitSettings()
    children, parents = split_parent_child(doc, split, ParentChildSettings(child_size=200, child_overlap=20))
    assert [p.text for p in parents] == [c.text for c in split_document(doc, split)]  # parents = the split's chunks
    assert len(children) > 2 * len(parents) and [c.ordinal for c in children] == list(range(len(children)))
    for child in children:
        assert len(child.text) <= 200 and child.text in parents[child.parent].text
        assert Chunk.from_dict(child.to_dict()) == child
    assert {c.parent for c in children} == {p.ordinal for p in parents}
    assert "parent" not in parents[0].to_dict()  # collections without parent-child keep their chunk rows as they were
    whole = split_parent_child(doc, split, ParentChildSettings(child_size=2000, child_overlap=20))[0]
    assert [c.text for c in whole] == [p.text for p in parents]  # a parent shorter than a piece is its own piece
    with pytest.raises(SettingsError, match="child_overlap"):
        ParentChildSettings(child_size=100, child_overlap=100)


def test_search_hands_parents_and_survives_reopen(tmp_path):
    path = tmp_path / "book"
    index = RagIndex.create(path, PipelineSpec())
    _run(index.add_files([BOOK]))
    spec = _parent_child_spec()
    assert index.set_spec(spec) is True and index.spec == PipelineSpec()  # other pieces: re-index, nothing adopted
    _run(index.reindex(spec))
    assert index.parents and len(index.chunks) > 2 * len(index.parents)

    result = search(index, QUESTION)
    assert "parent_child" in result.log[-1] and result.hits
    parents = [(h.chunk.source, h.chunk.ordinal) for h in result.hits]
    assert len(parents) == len(set(parents))  # one hit per parent
    assert len(parents) == min(3, len(index.parents))  # dedupe's "3 per document" counts parents, not pieces
    top = result.hits[0]
    assert top.chunk in index.parents and top.child == result.candidates[0].chunk  # the best piece's parent leads
    assert top.matched is top.child and top.child.text in top.chunk.text
    start, end = top.matched_span
    assert top.chunk.text[start:end] == top.child.text
    siblings = [c for c in result.candidates if c.chunk.parent == top.child.parent]
    assert len(siblings) >= 2  # several matching pieces of that parent collapsed into this one hit
    assert top.chunk.text in build_prompt(QUESTION, result.hits, spec)  # the model reads the whole parent

    # A sentence of the parent outside the matched piece is a passage hit: evaluation sees what the model reads.
    outside = next(top.chunk.text[a:b] for a, b in sentences(top.chunk.text) if top.chunk.text[a:b] not in
                   top.child.text)
    assert hit_rank([h.chunk for h in result.hits], Gold(top.chunk.source, outside), "passage") == 1

    again = RagIndex.open(path)
    assert again.spec == spec and again.parents == index.parents and again.chunks == index.chunks
    assert [(h.chunk, h.child) for h in search(again, QUESTION).hits] == [(h.chunk, h.child) for h in result.hits]


def test_old_specs_and_collections_load_without_parent_child(tmp_path):
    old = PipelineSpec().to_dict()
    old["stages"] = [s for s in old["stages"] if s["stage"] != "parent_child"]  # written before the step existed
    spec = PipelineSpec.from_dict(old)
    assert spec == PipelineSpec() and spec.child_split() is None
    assert spec["parent_child"] == ParentChildSettings()
    assert set(spec.index_fingerprint()) == {"split", "embed"}  # stored collections need no re-index

    path = tmp_path / "old"
    index = RagIndex.create(path, spec)
    _run(index.add_files([BOOK]))
    (path / f"v{index.version:06d}" / PARENTS_FILE).unlink()  # as a version written before parent-child
    again = RagIndex.open(path)
    assert again.parents == [] and again.chunks == index.chunks
    hits = search(again, QUESTION).hits
    assert hits and all(h.child is None and h.matched is h.chunk for h in hits)
