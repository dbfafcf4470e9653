"""The long-document development set and ``python -m rag eval --ablation`` (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path

from rag import __main__ as rag_cli
from rag.devset import WIKI_SOURCE, check_answers, long_docs, written_questions

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata"
SQUAD = TESTDATA / "rag" / "squad_small" / "derived"


def test_long_docs_devset_finds_every_answer_in_its_gold_document():
    devset = long_docs(TESTDATA)  # squad_small.json, wiki_demo.txt and the shared PDF/HTML/EPUB/text files
    assert check_answers(devset) == []
    written = written_questions()
    assert len(written) >= 60 and len({q["qid"] for q in written}) == len(written)
    sources = {d.source for d in devset.documents}
    assert {"squad:Normans", "squad:Computational_complexity_theory", "multi-column.pdf", "winter-sports.epub",
            "wiki_demo.txt#29"} <= sources
    assert {q["source_file"] for q in written} >= {WIKI_SOURCE, "docs/unstructured/norwich-city.txt"}
    # A written question whose answer is missing from its document is caught (not a test that cannot fail).
    broken = type(devset)(devset.name, devset.documents, devset.titles,
                          [{**written[0], "answers": ["words that are in no article"]}])
    assert check_answers(broken) == [f"{written[0]['qid']}: answer 'words that are in no article' not in "
                                     f"{written[0]['gold_doc_id']}"]


def test_eval_ablation_prints_one_row_per_variant(tmp_path, capsys):
    corpus = (SQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    ids = {json.loads(line)["doc_id"] for line in corpus}
    questions = [line for line in (SQUAD / "questions.jsonl").read_text(encoding="utf-8").splitlines()
                 if json.loads(line).get("gold_doc_id") in ids][:5]
    (tmp_path / "corpus.jsonl").write_text("\n".join(corpus), encoding="utf-8")
    (tmp_path / "questions.jsonl").write_text("\n".join(questions), encoding="utf-8")
    code = rag_cli.main(["eval", "--corpus", str(tmp_path / "corpus.jsonl"), "--questions",
                         str(tmp_path / "questions.jsonl"), "--ablation"])
    out, err = capsys.readouterr()
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out)["variants"]}
    expected = {"default", "dedupe off", "threshold on", "mmr on", "retrieve dense", "retrieve bm25",
                "split.prepend_title off", "naive recipe"}
    assert expected <= set(rows)
    table = [line for line in err.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[:13] == ["variant", "chunks", "doc h@1", "doc h@5", "doc h@10", "doc MRR", "psg h@1", "psg h@5",
                           "psg h@10", "psg MRR", "index s", "p50 ms", "p95 ms"]
    assert {"embed question ms", "dense search ms", "bm25 ms", "fusion ms", "dedupe ms"} <= set(header)
    assert {line.split("|")[1].strip() for line in table[1:]} == {v for v, r in rows.items() if "skipped" not in r}
    # Index once per index-affecting setting: retrieval-only variants reuse the default's index.
    assert rows["default"]["index_built"] and not rows["retrieve bm25"]["index_built"]
    assert rows["split.prepend_title off"]["index_built"]
    assert "embed question" not in rows["retrieve bm25"]["stages_ms"] and "bm25" in rows["retrieve bm25"]["stages_ms"]
    assert 0 <= rows["default"]["hit_at_1"] <= rows["default"]["hit_at_5"] <= rows["default"]["hit_at_10"] <= 1
