"""Pipeline spec (versioned JSON, validation, reordering) and chunking on real documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import SettingsError, describe
from rag.chunking import preview, split_document
from rag.ingest import load_file
from rag.pipeline import FORMAT, VERSION, PipelineSpec, PipelineSpecError
from rag.stages import FIXED_STAGES, POST_STEPS, SplitSettings

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs" / "unstructured"


def test_default_spec_round_trips_through_json(tmp_path):
    spec = PipelineSpec()
    path = tmp_path / "pipeline.json"
    spec.to_json(path)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == VERSION
    names = [s["stage"] for s in data["stages"]]
    assert names[:5] == ["load", "split", "embed", "index", "retrieve"] and names[-2:] == ["prompt", "generate"]
    assert PipelineSpec.load(path) == spec


def test_reorder_toggle_and_params_survive_export():
    spec = PipelineSpec().with_order(["mmr", "dedupe", "threshold", "rerank"])
    spec = spec.with_enabled("mmr", True).with_params("mmr", lambda_mult=0.5).with_params("split", chunk_size=400,
                                                                                           chunk_overlap=40)
    spec = spec.moved("threshold", -2)
    again = PipelineSpec.from_json(spec.to_json())
    assert [s.name for s in again.post] == ["threshold", "mmr", "dedupe", "rerank", "parent_child"]
    assert again["mmr"].lambda_mult == 0.5 and again.split.chunk_size == 400
    assert [s.name for s in again.enabled_post_steps()] == ["mmr", "dedupe", "rerank"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.update(format="something-else"), "format"),
        (lambda d: d["stages"].append({"stage": "summarise", "params": {}}), "Unknown stage 'summarise'"),
        (lambda d: d["stages"][1]["params"].update(chunk_size=10), "chunk_size"),
        (lambda d: d["stages"][1]["params"].update(chunk_overlap=5000), "chunk_overlap"),
        (lambda d: d["stages"][1]["params"].update(colour="red"), "colour"),
        (lambda d: d["stages"].insert(0, d["stages"].pop(2)), "order"),
        (lambda d: d["stages"].insert(1, {"stage": "mmr", "params": {}}), "mmr"),
    ],
)
def test_invalid_specs_are_refused_with_the_stage_named(mutate, fragment):
    data = PipelineSpec().to_dict()
    mutate(data)
    with pytest.raises(PipelineSpecError, match=fragment):
        PipelineSpec.from_dict(data)


def test_bad_json_and_template_messages():
    with pytest.raises(PipelineSpecError, match="line 1"):
        PipelineSpec.from_json("{not json")
    with pytest.raises(PipelineSpecError, match=r"\{context\}"):
        PipelineSpec().with_params("prompt", template="Answer {question}")


def test_missing_stages_take_defaults_so_old_files_load():
    spec = PipelineSpec.from_dict({"format": FORMAT, "version": 1, "stages": [{"stage": "split",
                                                                               "params": {"chunk_size": 500}}]})
    assert spec.split.chunk_size == 500 and spec.embed.model == "all-MiniLM-L6-v2"
    assert {s.name for s in spec.post} == set(POST_STEPS) and not spec.enabled_post_steps()


def test_every_stage_is_describable_for_form_generation():
    for cls in [*FIXED_STAGES.values(), *POST_STEPS.values()]:
        infos = describe(cls)
        assert infos, cls
        for info in infos:
            assert info.spec.help and info.label


def test_split_settings_validate():
    with pytest.raises(SettingsError, match="chunk_overlap"):
        SplitSettings(chunk_size=100, chunk_overlap=100)
    with pytest.raises(SettingsError, match="method"):
        SplitSettings(method="semantic")


@pytest.mark.parametrize("method", ["recursive", "sentence", "markdown"])
def test_splitters_keep_source_and_respect_size(method):
    doc = load_file(DOCS / "multi-column-2p.pdf")
    settings = SplitSettings(method=method, chunk_size=600, chunk_overlap=60)
    chunks = split_document(doc, settings)
    assert len(chunks) > 5
    assert all(c.source == "multi-column-2p.pdf" and c.page in (1, 2) for c in chunks)
    assert max(len(c.text) for c in chunks) <= 600
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunks[0].embed_text.startswith("multi column 2p\n")


def test_sentence_splitter_ends_chunks_at_sentence_boundaries():
    doc = load_file(DOCS / "book-war-and-peace-1p.txt")
    chunks = split_document(doc, SplitSettings(method="sentence", chunk_size=300, chunk_overlap=0))
    endings = [c.text.rstrip()[-1] for c in chunks[:-1]]
    assert sum(e in '.!?"' for e in endings) >= 0.8 * len(endings)


def test_markdown_splitter_records_heading_path():
    doc = load_file(DOCS / "codeblock.md")
    chunks = split_document(doc, SplitSettings(method="markdown", chunk_size=200, chunk_overlap=20))
    assert any(c.section and "HTML Example" in c.section for c in chunks)


def test_preview_counts_lengths_and_first_chunks():
    from rag.ingest import LoadedDocument, Section

    docs = [LoadedDocument(f"doc{i}.txt", str(i), [Section(("word " * 200 * (i + 1)).strip(), f"doc{i}.txt")])
            for i in range(3)]
    chunks = [c for d in docs for c in split_document(d, SplitSettings(chunk_size=300, chunk_overlap=0))]
    p = preview(chunks, first_n=2)
    assert p.count == len(chunks) and sum(p.per_file.values()) == len(chunks)
    assert set(p.first_chunks) == {"doc0.txt", "doc1.txt", "doc2.txt"}
    assert all(len(v) == 2 for v in p.first_chunks.values())
    assert p.length_min <= p.length_median <= p.length_max <= 300
    assert sum(n for _, n in p.histogram) == len(chunks)
    assert str(len(chunks)) in p.summary()
