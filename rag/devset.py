"""Development sets for ``python -m rag eval --devset NAME``, read at run time from the shared test data.

``long-docs``: whole documents, not paragraphs. The two SQuAD-small articles (their paragraphs joined back in
order; each question keeps its answers, its gold document is the article), the 30 long Wikipedia articles of
LLaMA-Factory's ``wiki_demo.txt`` (one article per line) and long shared files (PDF, HTML, EPUB, text), loaded
with :func:`rag.ingest.load_file` as the app loads uploads, with the questions written for them in
``rag/devsets/long_docs/questions.jsonl``. Sources and licences: ``rag/devsets/long_docs/SOURCES.md``. No
third-party text is copied into the repository: only our questions and the answer spans they point at.

``squad-small``: the shared SQuAD-small corpus as it is (one paragraph per document).

It is a development set: look at it, do not tune defaults to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.evaluate import load_corpus, load_questions
from rag.gold import contains_phrase
from rag.ingest import LoadedDocument, Section, file_sha256, load_file

HERE = Path(__file__).resolve().parent / "devsets" / "long_docs"
QUESTIONS = HERE / "questions.jsonl"
WIKI_TITLES = HERE / "wiki_titles.json"
WIKI_SOURCE = "ft/llama_factory/wiki_demo.txt"
SQUAD_SOURCE = "rag/squad_small/squad_small.json"
DEVSETS = ("long-docs", "squad-small")


class DevSetError(ValueError):
    """The shared test data is missing or does not hold what the development set expects."""


@dataclass(frozen=True)
class DevSet:
    name: str
    documents: list[LoadedDocument]
    titles: dict[str, str]
    questions: list[dict[str, Any]]

    def text_of(self, doc_id: str) -> str:
        doc = next(d for d in self.documents if d.source == doc_id)
        return "\n".join(s.text for s in doc.sections)


def default_testdata() -> Path:
    """``../shared/testdata`` beside the repository (where CI and the development machines keep it)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "testdata"


def _text_document(doc_id: str, text: str, title: str) -> LoadedDocument:
    return LoadedDocument(doc_id, file_sha256(text.encode("utf-8")), [Section(text, doc_id)], title=title)


def squad_articles(testdata: Path) -> tuple[list[LoadedDocument], list[dict[str, Any]]]:
    """SQuAD-small's articles as documents (paragraphs joined by blank lines) and their answerable questions."""
    path = testdata / SQUAD_SOURCE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise DevSetError(f"Cannot read the SQuAD-small articles from {path}: {exc}.") from None
    docs, questions = [], []
    for article in data:
        doc_id = f"squad:{article['title']}"
        text = "\n\n".join(p["context"] for p in article["paragraphs"])
        docs.append(_text_document(doc_id, text, article["title"].replace("_", " ")))
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa.get("answers"):
                    continue
                questions.append({"qid": f"squad-{qa['id']}", "question": qa["question"],
                                  "answers": [a["text"] for a in qa["answers"]], "gold_doc_id": doc_id,
                                  "source_file": SQUAD_SOURCE})
    return docs, questions


def wiki_articles(testdata: Path) -> list[LoadedDocument]:
    """``wiki_demo.txt``: one Wikipedia article per non-empty line, named ``wiki_demo.txt#NN`` (0-based)."""
    path = testdata / WIKI_SOURCE
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise DevSetError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    titles = json.loads(WIKI_TITLES.read_text(encoding="utf-8"))
    if len(titles) != len(lines):
        raise DevSetError(f"{path} has {len(lines)} articles; {WIKI_TITLES.name} names {len(titles)}.")
    return [_text_document(f"wiki_demo.txt#{n:02d}", line, titles[n]) for n, line in enumerate(lines)]


def file_documents(testdata: Path, source_files: list[str]) -> list[LoadedDocument]:
    """Each shared file once, loaded as the app loads an upload (named by its file name)."""
    docs = []
    for rel in dict.fromkeys(source_files):
        loaded = load_file(testdata / rel)
        if not isinstance(loaded, LoadedDocument):
            raise DevSetError(f"{rel} was refused by the loader: {loaded.message}")
        docs.append(loaded)
    return docs


def written_questions() -> list[dict[str, Any]]:
    return [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]


def long_docs(testdata: Path | None = None) -> DevSet:
    testdata = testdata or default_testdata()
    squad_docs, squad_questions = squad_articles(testdata)
    written = written_questions()
    files = [q["source_file"] for q in written if q["source_file"] != WIKI_SOURCE]
    docs = [*squad_docs, *wiki_articles(testdata), *file_documents(testdata, files)]
    titles = {d.source: d.title for d in docs if d.title}
    return DevSet("long-docs", docs, titles, [*squad_questions, *written])


def squad_small(testdata: Path | None = None) -> DevSet:
    folder = (testdata or default_testdata()) / "rag" / "squad_small" / "derived"
    docs, titles = load_corpus(folder / "corpus.jsonl")
    return DevSet("squad-small", docs, titles, load_questions(folder / "questions.jsonl"))


def load_devset(name: str, testdata: Path | None = None) -> DevSet:
    if name == "long-docs":
        return long_docs(testdata)
    if name == "squad-small":
        return squad_small(testdata)
    raise DevSetError(f"Unknown development set '{name}'; use one of {', '.join(DEVSETS)}.")


def check_answers(devset: DevSet) -> list[str]:
    """Problems with the questions: a gold document missing, or an answer not found in it (normalised words)."""
    problems = []
    texts = {d.source: "\n".join(s.text for s in d.sections) for d in devset.documents}
    for q in devset.questions:
        text = texts.get(q["gold_doc_id"])
        if text is None:
            problems.append(f"{q['qid']}: no document {q['gold_doc_id']}")
        elif not any(contains_phrase(text, a) for a in q["answers"]):
            problems.append(f"{q['qid']}: answer {q['answers'][0]!r} not in {q['gold_doc_id']}")
    return problems
