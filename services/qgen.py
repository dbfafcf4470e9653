"""Question–answer pairs generated from a collection's own passages: the Experiment's question set.

Why grounded and checked: the Experiment asks whether fine-tuning or RAG answers questions about the
user's documents better, so every question must be answerable from one passage, and its gold (the
passage's own words, :class:`rag.gold.Gold`) must be findable again after re-chunking. A model is
asked for one ``Question:``/``Answer:`` pair per passage; a pair is kept only when its answer is found in
that passage (verbatim, or most of its content words in one sentence). Small models often answer with
long or invented text: those pairs are dropped and *counted by reason*, so the user sees why few were kept.

Generation runs as a background job of kind "generate" (lane "device", beside training):
:func:`run_generate_job` writes each kept pair to the questions file the moment it is made, so a cancel,
a crash or a restart keeps what was made. Payload (JSON, never a secret)::

    {"collection_path": "/…/indexes/handbook", "model": "<model id>", "settings": QGenSettings.to_dict(),
     "out": "/…/questions.jsonl", "existing": "/…/earlier.jsonl" | None}
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings, SettingsError, setting
from engine.events import Cancelled, Done, EventLog, Interrupted, Log, Progress
from engine.jobs import TOKEN_ENV, JobRecord, JobStore, record_failure
from rag.chunking import Chunk
from rag.gold import Gold, chunk_id, contains_phrase, content_words, find_phrase, normalise, sentences, words
from services.index_jobs import StopSignal

KIND = "generate"
RESULT_FILE = "result.json"
ORIGINS = ("generated", "edited", "user", "imported")
TURN_SEPARATOR = re.compile(r"^[ \t]*---[ \t]*$", re.MULTILINE)
PASSAGE = "{passage}"

NO_PAIR = "no question/answer in the model's reply"
NOT_FOUND = "answer not found in the passage"
DUPLICATE = "duplicate question"
COPIES = "question copies the passage"
GIVES_AWAY = "question contains its answer"
EMPTY = "empty passage"
REASONS = (NO_PAIR, NOT_FOUND, DUPLICATE, COPIES, GIVES_AWAY, EMPTY)
"""Why a candidate pair was dropped, in the words the user reads."""

_PLURAL = {NO_PAIR: "the model's replies had no question and answer", NOT_FOUND: "the model's answers were not "
           "found in the passages", DUPLICATE: "the questions repeated earlier ones", COPIES: "the questions copied "
           "a sentence of the passage", GIVES_AWAY: "the questions contained their own answers",
           EMPTY: "the passages were empty"}

EMPTY_COLLECTION = "The collection is empty: add documents in the RAG tab first."
SIMILAR = 0.8  # word-Jaccard at or above which two questions are the same question
COPY_SHARE = 0.8  # share of a passage sentence a question may repeat, in order, before it is a copy
TRIES_PER_QUESTION = 3  # a small model drops many pairs: try up to this many passages per wanted pair

DEFAULT_SYSTEM = ("You write quiz questions about a passage. Reply with one line 'Question: ...' and one line "
                  "'Answer: ...' where the answer is a short phrase copied from the passage.")
DEFAULT_TEMPLATE = """Passage:
The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall.
---
Question: When was the Eiffel Tower completed?
Answer: 1889
---
Passage:
{passage}"""
"""Turns separated by lines of ``---``: the visitor's turn, then (optionally) example replies and turns,
ending with the visitor's turn that holds ``{passage}``. The worked example shows even a 135M model the
exact reply format (measured: without it the bundled model rarely writes the two lines)."""


class QGenSettings(Settings):
    """How questions are made from passages and which generated pairs are kept."""

    questions: int = setting(20, "How many question–answer pairs to make (generation stops once this many are kept).",
                             label="Questions", minimum=1, maximum=500, step=1)
    template: str = setting(DEFAULT_TEMPLATE, "The prompt. Turns are separated by a line '---': your turn, an "
                            "example reply, ..., and last your turn with {passage} (the passage's text). Keep the "
                            "example: small models copy its format.", advanced=True)
    system: str = setting(DEFAULT_SYSTEM, "System message: asks for one 'Question: ...' and one 'Answer: ...' line, "
                          "the answer copied from the passage. Empty sends none.", advanced=True)
    min_chunk_chars: int = setting(200, "Skip passages shorter than this many characters (titles, lists, "
                                   "fragments give poor questions).", minimum=0, maximum=10000, step=10, advanced=True)
    max_passage_chars: int = setting(700, "Cut each passage to about this many characters in the prompt (small "
                                     "models lose track of long ones).", minimum=100, maximum=20000, step=50,
                                     advanced=True)
    support: float = setting(0.6, "Keep a pair only when its answer is in the passage verbatim, or this share of "
                             "its content words is in one sentence of it.", minimum=0.1, maximum=1.0, step=0.05)
    max_new_tokens: int = setting(64, "Longest reply per passage, in tokens.", minimum=8, maximum=1024, step=8,
                                  advanced=True)
    seed: int = setting(0, "Seed for choosing passages (the same seed picks the same ones).", minimum=0,
                        maximum=2**31 - 1, step=1, advanced=True)
    per_chunk: int = setting(1, "Most pairs kept from one passage (a larger model may write several).",
                             minimum=1, maximum=10, step=1, advanced=True)

    def validate(self) -> None:
        turns = split_turns(self.template)
        if PASSAGE not in turns[-1]:
            raise SettingsError("template", "the last turn (after the last '---' line) must contain {passage}.")
        if len(turns) % 2 == 0:
            raise SettingsError("template", "turns alternate your turn / example reply and must end with your "
                                "turn holding {passage}; remove or add one '---' section.")


def split_turns(template: str) -> list[str]:
    """The template's turns (split at ``---`` lines), stripped."""
    return [t.strip() for t in TURN_SEPARATOR.split(template)]


def build_messages(settings: QGenSettings, passage: str) -> list[dict[str, str]]:
    """Chat messages for one passage: the system message, then the template's turns, user first.

    ``{passage}`` is replaced by plain substitution (a passage may contain braces).
    """
    messages = [{"role": "system", "content": settings.system}] if settings.system.strip() else []
    for number, turn in enumerate(split_turns(settings.template)):
        messages.append({"role": "user" if number % 2 == 0 else "assistant",
                         "content": turn.replace(PASSAGE, passage)})
    return messages


def cut_passage(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, at a sentence end when one is in the last third, else a space."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", head)]
    if ends and ends[-1] >= limit * 2 // 3:
        return head[: ends[-1]]
    return head.rsplit(None, 1)[0] if " " in head else head


# ----------------------------------------------------------------------------------------- pairs and files


@dataclass
class QAPair:
    """One question with its answer and where that answer is written (``quote``, the passage's own words)."""

    id: str
    question: str
    answer: str
    source: str
    page: int | None
    quote: str
    chunk_id: str
    origin: str = "generated"

    @staticmethod
    def make_id(chunk: str, question: str) -> str:
        """Stable id: the same question from the same chunk is the same pair across runs and edits."""
        return hashlib.sha1(f"{chunk}\n{question}".encode()).hexdigest()[:12]

    @property
    def gold(self) -> Gold:
        return Gold(self.source, self.quote, self.page, self.chunk_id or None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QAPair:
        """A pair from JSON; tolerant of files written by hand (missing id, page, quote or chunk id)."""
        question, chunk = str(data["question"]), str(data.get("chunk_id") or "")
        origin = str(data.get("origin") or "imported")
        return cls(id=str(data.get("id") or cls.make_id(chunk, question)), question=question,
                   answer=str(data.get("answer") or ""), source=str(data.get("source") or ""),
                   page=data.get("page"), quote=str(data.get("quote") or ""), chunk_id=chunk,
                   origin=origin if origin in ORIGINS else "imported")


def read_pairs(path: str | Path) -> list[QAPair]:
    """Pairs of a JSONL questions file; lines that are not a pair (a torn last line) are skipped."""
    pairs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
            pairs.append(QAPair.from_dict(data))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return pairs


def append_pair(path: str | Path, pair: QAPair) -> None:
    """Add one pair to a JSONL file and push it to disk now, so a cancel or a crash keeps it.

    A torn last line (a writer killed mid-write) is closed first, so it costs only itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        torn = False
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        line = json.dumps(pair.to_dict(), ensure_ascii=False) + "\n"
        handle.write((("\n" if torn else "") + line).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------------------- parsing replies

_LABEL = re.compile(r"^\s*(?:[-*>#]+\s*|\d+[.)]\s*)?\**\s*(question|answer|q|a)\s*\d*\s*\**\s*[:：]\s*\**\s*(.*)$",
                    re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def _clean(text: str) -> str:
    """A field without markdown emphasis, wrapping quotes or trailing spaces."""
    text = re.sub(r"\s+", " ", text.replace("**", "").replace("__", "")).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _json_pairs(text: str) -> list[tuple[str, str]]:
    """``{"question": ..., "answer": ...}`` objects (a list of them, or in a ```json fence)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    candidates += re.findall(r"\{[^{}]*\}", text)
    for candidate in candidates:
        try:
            data = json.loads(candidate.strip())
        except ValueError:
            continue
        items = data if isinstance(data, list) else [data]
        found = []
        for item in items:
            keys = {str(k).lower(): v for k, v in item.items()} if isinstance(item, dict) else {}
            if isinstance(keys.get("question"), str) and isinstance(keys.get("answer"), (str, int, float)):
                found.append((_clean(keys["question"]), _clean(str(keys["answer"]))))
        if found:
            return found
    return []


def _line_pairs(text: str) -> list[tuple[str, str]]:
    """``Question:``/``Answer:`` lines (any case, bold, ``Q:``/``A:``); a field runs on until a blank line."""
    fields: list[list[str]] = []  # [kind, text] in reading order
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            fields.append(["q" if label.group(1).lower().startswith("q") else "a", label.group(2)])
        elif not line.strip():
            fields.append(["", ""])  # a blank line ends the field above it
        elif fields and fields[-1][0]:
            fields[-1][1] += " " + line.strip()
    pairs, question = [], None
    for kind, value in fields:
        if kind == "q":
            question = _clean(value)
        elif kind == "a" and question is not None:
            pairs.append((question, _clean(value)))
            question = None
    return pairs


def _is_question(text: str) -> bool:
    return text.endswith("?") or len(text.split()) >= 4


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Every well-formed (question, answer) in a model's reply, in order; see :func:`parse_pair`."""
    pairs = _line_pairs(text) or _json_pairs(text)
    return [(q, a) for q, a in pairs if q and a and _is_question(q)]


def parse_pair(text: str) -> tuple[str, str] | None:
    """The first (question, answer) in a model's reply, or None.

    Accepts ``Question:``/``Answer:`` lines in any case, in markdown bold, as ``Q:``/``A:``, an answer
    running over several lines until a blank line, or a JSON object ``{"question", "answer"}`` (also in a
    ```json fence). The question must end with "?" or have at least 4 words.
    """
    pairs = parse_pairs(text)
    return pairs[0] if pairs else None


# ----------------------------------------------------------------------------------------- checks


def supporting_span(answer: str, passage: str, support: float) -> str | None:
    """The passage's words that back ``answer``, or None when the passage does not.

    The answer itself when it occurs in the passage (normalised, returned as the passage writes it); else the
    sentence holding the largest share of the answer's content words, if that share is at least ``support``.
    """
    span = find_phrase(passage, answer)
    if span is not None:
        return passage[span[0]:span[1]]
    wanted = Counter(content_words(answer))
    if not wanted:
        return None
    best, best_share = None, 0.0
    for start, end in sentences(passage):
        found = wanted & Counter(words(passage[start:end]))
        share = sum(found.values()) / sum(wanted.values())
        if share > best_share:
            best, best_share = passage[start:end], share
    return best if best is not None and best_share >= support else None


def similar_questions(a: str, b: str) -> bool:
    """The same question: equal once normalised, or word-Jaccard at least :data:`SIMILAR`."""
    if normalise(a) == normalise(b):
        return True
    wa, wb = set(words(a)), set(words(b))
    return bool(wa | wb) and len(wa & wb) / len(wa | wb) >= SIMILAR


def copies_passage(question: str, passage: str) -> bool:
    """True when the question repeats, in order, at least :data:`COPY_SHARE` of one passage sentence
    (of 4+ words): such a question is found by any keyword search and tests nothing."""
    asked = words(question)
    for start, end in sentences(passage):
        sentence = words(passage[start:end])
        if len(sentence) < 4:
            continue
        blocks = difflib.SequenceMatcher(None, sentence, asked, autojunk=False).get_matching_blocks()
        if sum(b.size for b in blocks) / len(sentence) >= COPY_SHARE:
            return True
    return False


def judge(question: str, answer: str, passage: str, settings: QGenSettings,
          seen: Sequence[str]) -> tuple[str | None, str]:
    """(quote, "") for a pair worth keeping, else (None, the reason it is dropped)."""
    quote = supporting_span(answer, passage, settings.support)
    if quote is None:
        return None, NOT_FOUND
    if copies_passage(question, passage):
        return None, COPIES
    if contains_phrase(question, answer):
        return None, GIVES_AWAY
    if any(similar_questions(question, other) for other in seen):
        return None, DUPLICATE
    return quote, ""


# ----------------------------------------------------------------------------------------- choosing passages


def pick_chunks(chunks: Sequence[Chunk], n: int, settings: QGenSettings,
                skip: frozenset[str] | set[str] = frozenset()) -> list[Chunk]:
    """Up to ``n`` chunks spread over the documents: sources in a seeded order, one chunk from each in turn
    (seeded positions inside each), so a long document cannot crowd out the others.

    Chunks shorter than ``min_chunk_chars`` are skipped, and those whose id is in ``skip`` (chunks existing
    pairs came from: greedy decoding would only repeat their question).
    """
    rng = random.Random(settings.seed)
    by_source: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        if len(chunk.text.strip()) >= settings.min_chunk_chars and chunk_id(chunk) not in skip:
            by_source.setdefault(chunk.source, []).append(chunk)
    sources = sorted(by_source)
    rng.shuffle(sources)
    queues = []
    for source in sources:
        items = sorted(by_source[source], key=lambda c: c.ordinal)
        rng.shuffle(items)
        queues.append(items)
    picked: list[Chunk] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


# ----------------------------------------------------------------------------------------- generating


@dataclass(frozen=True)
class ChunkTried:
    """One candidate pair judged: passage ``number`` of ``total`` chosen, kept or dropped (with ``reason``)."""

    number: int
    total: int
    source: str
    kept: bool
    reason: str = ""
    pair: QAPair | None = None


@dataclass(frozen=True)
class QGenSummary:
    """How generation ended: ``kept + sum(dropped.values()) == tried`` (candidates judged) over ``passages``."""

    kept: int
    tried: int
    dropped: dict[str, int] = field(default_factory=dict)
    passages: int = 0


QGenEvent = ChunkTried | QGenSummary


def _candidates(chunk: Chunk, generate: Callable[[list[dict[str, str]]], str], settings: QGenSettings,
                seen: list[str]) -> Iterator[tuple[QAPair | None, str]]:
    """Ask the model about one passage and judge each pair of its reply: (pair, "") or (None, reason)."""
    passage = cut_passage(chunk.text, settings.max_passage_chars)
    if not passage:
        yield None, EMPTY
        return
    pairs = parse_pairs(generate(build_messages(settings, passage)))[: settings.per_chunk]
    if not pairs:
        yield None, NO_PAIR
    ident = chunk_id(chunk)
    for question, answer in pairs:
        quote, reason = judge(question, answer, passage, settings, seen)
        if quote is None:
            yield None, reason
            continue
        seen.append(question)
        # An answer backed only by a sentence's words (not found as written) may carry invented details around
        # them: the reference answer becomes the passage's own sentence, so every gold answer is grounded.
        grounded = answer if find_phrase(passage, answer) is not None else quote
        yield QAPair(QAPair.make_id(ident, question), question, grounded, chunk.source, chunk.page, quote, ident), ""


def generate_pairs(chunks: Sequence[Chunk], generate: Callable[[list[dict[str, str]]], str],
                   settings: QGenSettings, *, existing: Sequence[QAPair] = (),
                   cancelled: Callable[[], bool] = lambda: False) -> Iterator[QGenEvent]:
    """Make up to ``settings.questions`` checked pairs from ``chunks``; one :class:`ChunkTried` per candidate,
    then a :class:`QGenSummary`.

    ``generate`` turns chat messages into the model's reply (the caller owns the model and its decoding).
    Pairs duplicating ``existing`` ones (or each other) are dropped. Stops when enough pairs are kept, after
    ``3 × questions`` passages, or when ``cancelled()`` says so (checked before each passage).
    """
    seen = [p.question for p in existing]
    picked = pick_chunks(chunks, settings.questions * TRIES_PER_QUESTION, settings,
                         skip={p.chunk_id for p in existing if p.chunk_id})
    kept, tried, passages, dropped = 0, 0, 0, Counter[str]()
    for number, chunk in enumerate(picked, start=1):
        if kept >= settings.questions or cancelled():
            break
        passages = number
        for pair, reason in _candidates(chunk, generate, settings, seen):
            tried += 1
            kept += pair is not None
            if pair is None:
                dropped[reason] += 1
            yield ChunkTried(number, len(picked), chunk.source, pair is not None, reason, pair)
            if kept >= settings.questions:
                break
    yield QGenSummary(kept, tried, dict(dropped), passages)


def nothing_usable_message(summary: QGenSummary, settings: QGenSettings) -> str:
    """Why a generation kept no pair, in the user's terms, with what to do next."""
    if not summary.passages:
        return (f"No passage of the collection is at least {settings.min_chunk_chars} characters long, so no "
                "question was asked. Lower 'Min chunk chars', or write questions yourself in the table.")
    causes = ", ".join(f"{_PLURAL.get(r, r)} ({n})" for r, n in sorted(summary.dropped.items(), key=lambda x: -x[1]))
    return (f"Nothing usable was generated from {summary.passages} passages: {causes}. Try a larger model on a GPU "
            "Space, or write questions yourself in the table.")


# ----------------------------------------------------------------------------------------- the job


class QGenError(ValueError):
    """Generation cannot go on; the message is for the person who pressed the button."""


class _CancelledByUser(Exception):
    """The owner pressed Cancel: keep the pairs made so far."""

    def __init__(self, made: int):
        super().__init__(made)
        self.made = made


class _Interrupted(BaseException):
    """SIGTERM (a Space restarting or going to sleep): stop between passages; the pairs made are kept."""


def _load_model(job: JobRecord, log: EventLog, model_id: str) -> Any:
    """The model, its loading announced first (a large one takes minutes); the job's own token only."""
    from engine.infer import ChatModel
    from engine.train import model_label

    log.append(Progress(job.id, phase="load", item=model_label(model_id), message="weights"))
    chat = ChatModel(model_id, token=os.environ.get(TOKEN_ENV) or None)
    log.append(Progress(job.id, phase="load", done=1, total=1, item=model_label(model_id), message="ready"))
    return chat


def answered(reply: str, per_chunk: int) -> int | None:
    """Where ``reply`` holds ``per_chunk`` complete pairs (just after the line break ending the last answer
    line), or None while it does not yet."""
    ends = [m.end() for m in re.finditer(r"^\W*(?:answer|a)\W*\s*\d*\s*[:：].*\n", reply,
                                         re.IGNORECASE | re.MULTILINE)]
    return ends[per_chunk - 1] if len(ends) >= per_chunk else None


def model_generator(chat: Any, settings: QGenSettings) -> Callable[[list[dict[str, str]]], str]:
    """``generate`` for :func:`generate_pairs` from an :class:`engine.infer.ChatModel`.

    Greedy, without repetition penalty (the answer should copy the passage's words, not avoid them), and
    stopped as soon as the reply holds the pairs wanted: small models go on with more questions that would
    only be thrown away (measured: about half the replies did), so this saves their time.
    """
    from core.generation import GenerationSettings

    decoding = GenerationSettings(temperature=0.0, max_new_tokens=settings.max_new_tokens,
                                  repetition_penalty=1.0, seed=settings.seed)

    def generate(messages: list[dict[str, str]]) -> str:
        reply = ""
        stream = chat.stream(messages, settings=decoding)
        try:
            for piece in stream:
                reply += piece
                end = answered(reply, settings.per_chunk)
                if end is not None:
                    return reply[:end]  # what came after it is the start of a pair nobody asked for
        finally:
            stream.close()
        return reply

    return generate


def _collection_chunks(payload: dict[str, Any]) -> list[Chunk]:
    """The collection's current chunks, from the shared read-only copy."""
    from services.collections import open_collection

    if not payload.get("collection_path"):
        raise QGenError("The generation names no collection; pick one and press Generate again.")
    chunks = list(open_collection(Path(str(payload["collection_path"]))).chunks)
    if not chunks:
        raise QGenError(EMPTY_COLLECTION)
    return chunks


def _write_result(job: JobRecord, status: str, summary: QGenSummary, made: int, t0: float) -> dict[str, Any]:
    result = {"status": status, "kept": made, "kept_now": summary.kept, "tried": summary.tried,
              "passages": summary.passages, "dropped": summary.dropped, "seconds": round(time.time() - t0, 3)}
    (job.run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def _report(job: JobRecord, log: EventLog, event: ChunkTried, made: int, target: int) -> None:
    log.append(Progress(job.id, phase="generate", done=event.number, total=event.total, unit="passages",
                        item=event.source, message=f"{made} of {target} pairs kept"))


def perform(job: JobRecord, store: JobStore, log: EventLog, stop: StopSignal, t0: float) -> dict[str, Any]:
    """Generate into the job's questions file; returns the result (also in ``result.json``).

    Pairs already in the file (a run interrupted by a restart) count towards the target and are not repeated.
    Raises :class:`_CancelledByUser` / :class:`_Interrupted` between passages, :class:`QGenError` when
    nothing can or could be made.
    """
    if job.kind != KIND:
        raise QGenError(f"Job {job.id} is a {job.kind} job, not a question generation.")
    if store.cancel_requested(job.id):
        raise _CancelledByUser(0)
    payload = job.payload
    settings = QGenSettings.from_dict(payload.get("settings"))
    chunks = _collection_chunks(payload)
    out = Path(str(payload["out"]))
    made = read_pairs(out) if out.exists() else []
    existing = read_pairs(payload["existing"]) if payload.get("existing") else []
    remaining = settings.questions - len(made)
    summary = QGenSummary(0, 0)
    if remaining > 0:
        from engine.models import BUNDLED_ID

        generate = model_generator(_load_model(job, log, str(payload.get("model") or BUNDLED_ID)), settings)
        events = generate_pairs(chunks, generate, dataclasses.replace(settings, questions=remaining),
                                existing=[*existing, *made],
                                cancelled=lambda: stop.received or store.cancel_requested(job.id))
        for event in events:
            if isinstance(event, ChunkTried):
                if event.pair is not None:
                    append_pair(out, event.pair)
                    made.append(event.pair)
                _report(job, log, event, len(made), settings.questions)
            else:
                summary = event
    return _finish_generation(job, store, log, stop, summary, settings, len(made), t0)


def _finish_generation(job: JobRecord, store: JobStore, log: EventLog, stop: StopSignal, summary: QGenSummary,
                       settings: QGenSettings, made: int, t0: float) -> dict[str, Any]:
    """Log the drop reasons, write the result, and raise for a stop request or an empty harvest."""
    for reason, count in sorted(summary.dropped.items(), key=lambda x: -x[1]):
        log.append(Log(job.id, message=f"Dropped {count} of {summary.tried}: {reason}."))
    if stop.received:
        _write_result(job, "interrupted", summary, made, t0)
        raise _Interrupted
    if store.cancel_requested(job.id):
        _write_result(job, "cancelled", summary, made, t0)
        raise _CancelledByUser(made)
    if not made:
        _write_result(job, "failed", summary, made, t0)
        raise QGenError(nothing_usable_message(summary, settings))
    if made < settings.questions:
        log.append(Log(job.id, level="warning", message=f"Only {made} of {settings.questions} pairs were kept "
                       f"after trying {summary.passages} passages; add more documents, try a larger model, or "
                       "write more questions yourself."))
    log.append(Log(job.id, message=f"{made} question–answer pairs kept ({summary.kept} made now from "
                   f"{summary.passages} passages, {summary.tried} candidates)."))
    return _write_result(job, "done", summary, made, t0)


def explain_failure(exc: BaseException) -> str:
    """One sentence for the person who pressed the button (their own words for known problems)."""
    from engine.models import ModelError

    if isinstance(exc, (QGenError, SettingsError, ModelError)):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "Question generation ran out of memory. Pick a smaller model."
    if isinstance(exc, FileNotFoundError):
        return f"Question generation stopped: the file '{Path(exc.filename or '?').name}' is missing."
    return f"Question generation stopped with an error: {type(exc).__name__}: {exc}"


def run_generate_job(job_id: str, store: JobStore | None = None) -> int:
    """Worker entry point for kind "generate": make the pairs, record how it ended, then start the next job.

    Same contract as :func:`services.index_jobs.run_index_job`: the terminal event (Done / Failed /
    Cancelled, or Interrupted after a SIGTERM) is appended before ``store.finish``; 0 means done or
    cancelled, 1 failed, 75 interrupted (queued again when the server starts; the pairs made are kept).
    """
    store = store or JobStore()
    job = store.load(job_id)
    log = EventLog(job.events_path)
    t0, exit_code = time.time(), 0
    try:
        with StopSignal() as stop:
            perform(job, store, log, stop, t0)
        log.append(Done(job.id, duration_seconds=time.time() - t0))
        store.finish(job.id, "done")
    except _CancelledByUser as exc:
        log.append(Log(job.id, message=f"Cancelled: the {exc.made} pairs made so far are kept."))
        log.append(Cancelled(job.id, step=exc.made, resumable=False))
        store.finish(job.id, "cancelled")
    except _Interrupted:
        reason = ("The server restarted or went to sleep during question generation; the pairs made so far are "
                  "kept, and it continues when the server is back.")
        log.append(Interrupted(job.id, reason=reason, resumable=True))
        store.finish(job.id, "interrupted", error=reason)
        exit_code = 75
    except BaseException as exc:
        record_failure(store, job.id, explain_failure(exc), exc)
        exit_code = 1
    finally:
        if exit_code != 75:  # a stopping server starts nothing new
            store.dispatch()
    return exit_code
