"""Compare base, fine-tuned, RAG and fine-tuned+RAG answers on the user's own questions.

Why this module exists: users come to learn whether fine-tuning or RAG (or both) helps *their*
questions. Every arm is served by one :class:`~engine.infer.ChatModel` (one copy of the base
weights; the adapter is switched on per request), with the same :class:`GenerationSettings`, so the
arms differ only by the adapter and the retrieved context. Generation is serialised on that one
model, so "side by side" means the arms answer one after another while each pane streams.

Everything here is UI-free (no gradio import): the web tab, the CLI and the tests all drive the
same generators and report objects.
"""

from __future__ import annotations

import csv
import difflib
import html
import io
import json
import random
import re
import string
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.generation import GenerationSettings
from core.settings import Settings, SettingsError, setting
from core.stats import wilson_interval  # also re-exported: tests and callers import it from here
from engine.files import csv_text
from engine.infer import AdapterMismatchError, Provenance, adapter_hash

if TYPE_CHECKING:
    from engine.config import TrainConfig
    from engine.jobs import JobRecord
    from engine.workspace import Workspace
    from rag.index import RagIndex
    from rag.pipeline import PipelineSpec

ARMS = ("base", "ft", "ft2", "rag", "ft+rag")
ARM_LABELS = {"base": "Base model", "ft": "Fine-tuned", "ft2": "After votes (second run)", "rag": "RAG (base + index)",
              "ft+rag": "Fine-tuned + RAG"}
VOTE_CHOICES = ("A", "B", "tie", "both_bad")

#: Every measure of a comparison: (plain name, what it means in one line). The keys stay the column names of
#: the exported JSON/CSV; people see the plain name and the line (Compare tab, HTML report).
METRICS: dict[str, tuple[str, str]] = {
    "questions": ("Questions", "How many questions this approach answered."),
    "exact_match": ("Exact match", "The answer equals the reference (ignoring case, punctuation and a/an/the)."),
    "f1": ("Word match (F1)", "Share of words the answer and the reference have in common (1 = the same words)."),
    "contained": ("Contains the answer", "The reference appears word for word inside the answer."),
    "rouge_l": ("Word overlap (ROUGE-L)", "The longest run of the reference's words the answer keeps in order."),
    "retrieval_hit": ("Found the source", "The document the reference comes from was among the retrieved "
                      "passages (RAG only)."),
    "latency_s": ("Seconds per answer", "Time from the question to the end of the answer."),
    "ttft_s": ("Time to first word (s)", "Seconds until the answer starts to appear."),
    "tokens_per_s": ("Speed (tokens/s)", "Word pieces written per second once the answer has started."),
    "retrieval_failures": ("Missed the source", "Wrong answers where the right document was not retrieved "
                           "(RAG only)."),
    "generation_failures": ("Had the source, still wrong", "Wrong answers although the right document was "
                            "retrieved (RAG only)."),
    "errors": ("Errors", "Answers that failed with an error."),
}
#: The measures of the summary table, in the order shown.
SUMMARY_METRICS = ("questions", "contained", "exact_match", "f1", "rouge_l", "retrieval_hit", "latency_s", "ttft_s",
                   "tokens_per_s", "retrieval_failures", "generation_failures")


def metric_name(key: str) -> str:
    """A measure's plain name ("Exact match"); an unknown key is shown as it is."""
    return METRICS.get(key, (key, ""))[0]
VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}

SHORT_BASE_TEMPLATE = "Answer the question with a short phrase.\n\nQuestion: {question}\nAnswer:"
SHORT_RAG_TEMPLATE = (
    "Answer the question with a short phrase taken from the context.\n\n"
    "Context:\n{context}\n\n"
    "Question: {question}\nAnswer:"
)


class CompareError(ValueError):
    """A comparison cannot start as asked; the message says what to change."""


class CompareSettings(Settings):
    """How questions are prompted and scored; generation itself uses the shared GenerationSettings."""

    base_template: str = setting(
        SHORT_BASE_TEMPLATE,
        "Prompt for the answers without retrieval (base, fine-tuned); must contain {question}. "
        "Write '{question}' alone to send the question unchanged.",
        advanced=True,
    )
    rag_template: str = setting(
        SHORT_RAG_TEMPLATE,
        "Prompt for the RAG answers; must contain {context} and {question}. Leave empty to use the index's own "
        "pipeline prompt (which asks for [n] citations).",
        advanced=True,
    )
    top_k: int = setting(1, "Passages retrieved for the RAG answers (0 = the collection's pipeline setting). "
                         "Small models answer better from one passage (bundled model on SQuAD-small: 5/20 answers "
                         "with 1 passage, 3/20 with 3); raise it for larger models.", label="Retrieved passages",
                         minimum=0, maximum=50, step=1)
    max_context_chars: int = setting(0, "Context budget for the RAG answers' prompt, in characters; 0 uses the "
                                     "collection's own prompt budget (its pipeline's Prompt card).",
                                     minimum=0, maximum=200000, step=100, advanced=True)
    near_duplicate: float = setting(0.8, "Leakage check: a question whose word overlap (Jaccard) or character "
                                    "similarity with a training prompt reaches this is flagged.",
                                    minimum=0.5, maximum=1.0, step=0.01, advanced=True)
    holdout_fraction: float = setting(0.1, "Share of a fine-tuning file held out as a question set.",
                                      minimum=0.01, maximum=0.9, step=0.01, advanced=True)
    seed: int = setting(0, "Seed for blind-mode pairing and position shuffling.", minimum=0,
                        maximum=2**31 - 1, step=1, advanced=True)

    def validate(self) -> None:
        if "{question}" not in self.base_template:
            raise SettingsError("base_template", "must contain {question}.")
        if self.rag_template and not all(p in self.rag_template for p in ("{context}", "{question}")):
            raise SettingsError("rag_template", "must contain {context} and {question}, or be empty.")


# ------------------------------------------------------------------------------------ metrics


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(prediction: str, references: Iterable[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: Iterable[str]) -> float:
    """Best SQuAD token F1 over the references."""
    pred = _tokens(prediction)
    best = 0.0
    for ref in references:
        gold = _tokens(ref)
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def answer_contained(prediction: str, references: Iterable[str]) -> float:
    """1 when a normalised reference occurs in the normalised answer (on word boundaries)."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(r) and f" {normalize_answer(r)} " in pred for r in references))


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, references: Iterable[str]) -> float:
    """Best ROUGE-L F-measure (longest common subsequence of normalised tokens) over the references."""
    pred = _tokens(prediction)
    best = 0.0
    for ref in references:
        gold = _tokens(ref)
        lcs = _lcs(pred, gold)
        if lcs:
            p, r = lcs / len(pred), lcs / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


# ---------------------------------------------------------------------------------- questions


@dataclass
class Question:
    question: str
    references: list[str] = field(default_factory=list)
    gold_doc_id: str | None = None
    qid: str = ""
    leak: str | None = None  # why the leakage check flagged it, if it did


def _references(row: dict[str, Any]) -> list[str]:
    for key in ("answers", "references", "reference", "answer", "reference_answer", "expected"):
        value = row.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, list):
            return [str(v) for v in value if str(v).strip()]
        text = str(value).strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
                if isinstance(parsed, list):
                    return [str(v) for v in parsed]
            except json.JSONDecodeError:
                pass
        return [v.strip() for v in text.split("|") if v.strip()] if "|" in text else [text]
    return []


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def load_questions(path: str | Path, limit: int = 0) -> list[Question]:
    """Read a CSV or JSONL question set: ``question``, optional reference answer(s), optional ``gold_doc_id``.

    SQuAD-style ``is_impossible`` rows are skipped: they have no answer to score.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Question set {path.name} does not exist.")
    rows = _question_rows(path, path.read_text(encoding="utf-8-sig"))
    questions = []
    for number, row in enumerate(rows, start=1):
        question = _question_of(row, number, path.name)
        if question is not None:
            questions.append(question)
    if not questions:
        raise CompareError(f"{path.name} has no answerable questions.")
    return questions[:limit] if limit and limit > 0 else questions


def _question_rows(path: Path, text: str) -> list[dict[str, Any]]:
    """The rows of a question set: a CSV with a header, or one JSON object per line (blank lines skipped)."""
    if path.suffix.lower() == ".csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompareError(f"{path.name}, line {number}: not valid JSON ({exc.msg}). Use one JSON object "
                               "per line, or a CSV with a 'question' column.") from None
        if not isinstance(row, dict):
            raise CompareError(f"{path.name}, line {number}: expected an object with a 'question' field.")
        rows.append(row)
    return rows


def _question_of(row: dict[str, Any], number: int, name: str) -> Question | None:
    """One row as a question (column names in any case; common aliases accepted), or None if it is unanswerable."""
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    q = str(lowered.get("question") or lowered.get("prompt") or lowered.get("query") or "").strip()
    if not q:
        raise CompareError(f"{name}, row {number}: no 'question' value. The question set needs a "
                           "'question' column (and optionally 'answer' and 'gold_doc_id').")
    if _truthy(lowered.get("is_impossible")):
        return None
    gold = lowered.get("gold_doc_id") or lowered.get("gold_doc") or lowered.get("doc_id") or lowered.get("source")
    return Question(q, _references(lowered), str(gold) if gold else None,
                    str(lowered.get("qid") or lowered.get("id") or number))


def _prompt_and_answer(example: Any) -> tuple[str, str]:
    users = [m.content for m in example.messages if m.role == "user"]
    answers = [m.content for m in example.messages if m.role == "assistant"]
    return (users[-1] if users else (example.text or "")), (answers[-1] if answers else "")


def holdout_questions(data_path: str | Path, fraction: float = 0.1, seed: int = 42) -> tuple[list[Question], list[str]]:
    """Hold out part of a fine-tuning file as a question set; also return the training prompts kept.

    Uses the engine's deterministic split, so identical examples never straddle the two sides.
    """
    from engine.data import prepare, split_train_validation

    prepared = prepare(data_path)
    train, held = split_train_validation(prepared.examples, fraction, seed)
    questions = []
    for i, ex in enumerate(held, start=1):
        prompt, reply = _prompt_and_answer(ex)
        if prompt.strip():
            questions.append(Question(prompt, [reply] if reply.strip() else [], None, f"holdout-{i}"))
    if not questions:
        raise CompareError("The held-out part has no usable questions; raise the held-out share or use a larger file.")
    return questions, [_prompt_and_answer(ex)[0] for ex in train]


def training_prompts(data_path: str | Path) -> list[str]:
    """Every user prompt of a fine-tuning file (what the leakage check compares against)."""
    from engine.data import prepare

    return [_prompt_and_answer(ex)[0] for ex in prepare(data_path).examples]


def leakage_check(questions: list[Question], prompts: Iterable[str], threshold: float = 0.8) -> int:
    """Flag questions that appear, exactly or nearly, among the training prompts; return how many.

    A fine-tuned model that saw the question in training is being tested on memory, not skill.
    """
    normalized = [(p, normalize_answer(p)) for p in prompts if p and p.strip()]
    exact = {n for _, n in normalized}
    token_sets = [(p, n, set(n.split())) for p, n in normalized]
    flagged = 0
    for q in questions:
        nq = normalize_answer(q.question)
        q.leak = None
        if nq in exact:
            q.leak = "exact match in the training data"
        else:
            qset = set(nq.split())
            for prompt, n, tokens in token_sets:
                jaccard = len(qset & tokens) / len(qset | tokens) if qset | tokens else 0.0
                if jaccard >= threshold or (abs(len(n) - len(nq)) <= len(nq) * 0.5
                                            and difflib.SequenceMatcher(None, nq, n).ratio() >= threshold):
                    q.leak = f"near-duplicate of a training prompt: {prompt[:80]!r}"
                    break
        flagged += q.leak is not None
    return flagged


# ------------------------------------------------------------------------------------ answers


class ChatLike(Protocol):
    """What the comparison needs from a model: the engine's ChatModel has exactly this."""

    tokenizer: Any
    base_model: str

    def stream(self, messages: Any, *, adapter: str | Path | None = None,
               settings: GenerationSettings | None = None, adapter_label: str | None = None,
               on_provenance: Callable[[Provenance], None] | None = None) -> Iterator[str]: ...


@dataclass
class ArmAnswer:
    """One arm's answer to one question, with its timings and (for RAG arms) the retrieved chunks."""

    arm: str
    text: str = ""
    ttft_s: float | None = None
    total_s: float = 0.0
    tokens: int = 0
    tokens_per_s: float = 0.0
    retrieved: list[dict[str, Any]] = field(default_factory=list)  # source, location, score, text
    cited: list[int] = field(default_factory=list)
    done: bool = False
    error: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    failure: str = ""  # "", "retrieval failure", "generation failure", "wrong answer"
    provenance: dict[str, Any] | None = None  # engine.infer.Provenance.columns(): what produced this answer
    prompt: str = ""  # the user turn exactly as the model got it (RAG arms: with the retrieved context)

    @property
    def provenance_line(self) -> str:
        """"base SmolLM2-135M-Instruct · adapter my-run (3f2a…) · collection handbook v4" (empty before done)."""
        from engine.infer import Provenance

        if not self.provenance:
            return ""
        fields = {k: v for k, v in self.provenance.items() if k in Provenance.__dataclass_fields__}
        return Provenance(**fields).line()

    @property
    def sources(self) -> list[str]:
        return [r["source"] for r in self.retrieved]

    def to_dict(self) -> dict[str, Any]:
        """The exported answer. The prompt is left out: for RAG arms it repeats every retrieved chunk, which
        ``retrieved`` already holds; the report object keeps it for the preference pairs."""
        out = asdict(self)
        out.pop("prompt")
        return out


def arm_label(arm: str, config: dict[str, Any] | None = None) -> str:
    """An arm's name for people; the second run's arm is named after its run when the report knows it."""
    second = (config or {}).get("adapter2")
    if arm == "ft2" and second:
        return f"After votes: {second}"
    return ARM_LABELS.get(arm, arm)


def parse_arms(arms: str | Iterable[str]) -> list[str]:
    names = [a.strip().lower() for a in (arms.split(",") if isinstance(arms, str) else arms) if a.strip()]
    names = ["ft+rag" if a in ("rag+ft", "ft_rag", "ftrag") else a for a in names]
    bad = [a for a in names if a not in ARMS]
    if bad or not names:
        raise CompareError(f"Unknown arm(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ARMS)}.")
    return list(dict.fromkeys(names))


def build_corpus_index(corpus: str | Path, path: str | Path | None = None,
                       spec: PipelineSpec | None = None) -> RagIndex:
    """Index a ``{doc_id,title,text}`` JSONL corpus the way ``rag.evaluate`` does (doc ids become sources)."""
    from rag.evaluate import build_index, load_corpus
    from rag.pipeline import PipelineSpec

    docs, titles = load_corpus(corpus)
    target = Path(path) if path else Path(tempfile.mkdtemp(prefix="compare-index-")) / "index"
    index, _ = build_index(docs, titles, spec or PipelineSpec(), target)
    return index


class Comparer:
    """Runs the chosen arms on one shared model, with one set of generation settings."""

    def __init__(self, chat: ChatLike, *, arms: Iterable[str], adapter: str | Path | None = None,
                 index: RagIndex | None = None, generation: GenerationSettings | None = None,
                 settings: CompareSettings | None = None, adapter_label: str | None = None,
                 collection: str | None = None, adapter2: str | Path | None = None,
                 adapter2_label: str | None = None, run_id: str | None = None, run2_id: str | None = None):
        """``adapter_label`` (the run's name) and ``collection`` (the collection's name) label each answer's
        provenance; without them the run folder's and the index folder's names are used.

        ``adapter2`` is a second finished run's adapter (the ``ft2`` arm, e.g. the run trained on this
        comparison's votes), served by the same model with the adapter switched like ``ft``'s. ``run_id`` and
        ``run2_id`` are the runs' ids in the job store: the report keeps them so its votes can continue the run.
        """
        self.chat = chat
        self.arms = parse_arms(list(arms))
        self.adapter = str(adapter) if adapter else None
        self.adapter_label = adapter_label
        self.adapter2 = str(adapter2) if adapter2 else None
        self.adapter2_label = adapter2_label
        self.run_id, self.run2_id = run_id, run2_id
        self.collection = collection or (Path(index.path).name if index is not None else None)
        self.index = index
        self.generation = generation or GenerationSettings()
        self.settings = settings or CompareSettings()
        self._check_inputs()

    def _check_inputs(self) -> None:
        """Each chosen arm has what it needs, so no arm fails on every question for a missing input."""
        if any("ft" in a.split("+") for a in self.arms) and not self.adapter:
            raise CompareError("The fine-tuned arms need an adapter: pick a finished run (or pass --adapter DIR).")
        if "ft2" in self.arms and not self.adapter2:
            raise CompareError("The after-votes arm needs a second finished run: pick it under 'Second run'.")
        uses_rag = any("rag" in a for a in self.arms)
        if uses_rag and self.index is None:
            raise CompareError("The RAG arms need documents: pick an index (or pass --corpus FILE / --index DIR).")
        if uses_rag and self.index is not None and not self.index.chunks:
            raise CompareError(f"The collection {Path(self.index.path).name} is empty; add documents in the RAG tab "
                               "first.")

    @property
    def spec(self) -> PipelineSpec | None:
        """The index's pipeline with this comparison's retrieval depth and prompt applied."""
        if self.index is None:
            return None
        spec = self.index.spec
        if self.settings.top_k:
            spec = spec.with_params("retrieve", top_k=self.settings.top_k)
        params: dict[str, Any] = {}
        if self.settings.max_context_chars:
            params["max_context_chars"] = self.settings.max_context_chars
        if self.settings.rag_template:
            params["template"] = self.settings.rag_template
        return spec.with_params("prompt", **params)

    def config(self) -> dict[str, Any]:
        """What the report is stamped with: enough to reproduce every number in it."""
        spec = self.spec
        return {
            "base_model": getattr(self.chat, "base_model", "?"),
            "adapter": self.adapter_label or (Path(self.adapter).parent.name if self.adapter else None),  # no paths
            "adapter_hash": adapter_hash(self.adapter),
            "run_id": self.run_id,  # what "Improve with these votes" continues
            "adapter2": self.adapter2_label or (Path(self.adapter2).parent.name if self.adapter2 else None),
            "adapter2_hash": adapter_hash(self.adapter2),
            "run2_id": self.run2_id,
            "index": self.collection,
            "index_version": getattr(self.index, "version", None),
            "pipeline": spec.to_dict() if spec is not None else None,
            "generation": self.generation.to_dict(),
            "compare": self.settings.to_dict(),
            "arms": self.arms,
            "created": utc_now(),
        }

    def _count_tokens(self, text: str) -> int:
        return len(self.chat.tokenizer.encode(text, add_special_tokens=False))

    def stream_arm(self, arm: str, question: Question) -> Iterator[ArmAnswer]:
        """Yield the growing answer of one arm (same object, updated), ending with ``done=True`` and scores.

        The finished answer carries its provenance as reported by the model (which adapter was really
        active); an answer the model withheld (``AdapterMismatchError``) keeps no text at all.
        """
        result = ArmAnswer(arm)
        start = time.perf_counter()
        try:
            yield from self._generate_arm(arm, question, result, start)
        except AdapterMismatchError as exc:
            result.text, result.error = "", str(exc)
        except Exception as exc:  # one arm failing must not lose the others' answers
            result.error = f"{type(exc).__name__}: {exc}"
        result.text = result.text.strip()
        result.total_s = time.perf_counter() - start
        result.tokens = self._count_tokens(result.text)
        gen_time = result.total_s - (result.ttft_s or 0.0)
        result.tokens_per_s = (result.tokens - 1) / gen_time if result.tokens > 1 and gen_time > 0 else 0.0
        score_answer(result, question)
        result.done = True
        yield result

    def _generate_arm(self, arm: str, question: Question, result: ArmAnswer, start: float) -> Iterator[ArmAnswer]:
        """Stream one arm's answer into ``result``: the question alone, or retrieval first and then the answer."""
        generate, add = self._arm_callbacks(arm, result, start)
        if "rag" in arm:
            yield from self._stream_rag(question, result, generate, add)
            return
        result.prompt = self.settings.base_template.replace("{question}", question.question.strip())
        for piece in generate(result.prompt):
            add(piece)
            yield result

    def _arm_callbacks(self, arm: str, result: ArmAnswer,
                       start: float) -> tuple[Callable[[Any], Iterator[str]], Callable[[str], None]]:
        """The arm's generator (its adapter or none; it records what produced the answer) and its token sink.

        The sink also times the first token, which is what "time to first token" means for every arm alike.
        """
        adapter, label = self._adapter_of(arm)
        uses_rag = "rag" in arm

        def record(provenance: Provenance) -> None:
            if uses_rag:
                provenance = provenance.with_collection(self.collection, getattr(self.index, "version", None))
            result.provenance = provenance.columns()

        def generate(prompt: Any) -> Iterator[str]:
            return self.chat.stream(prompt, adapter=adapter, settings=self.generation,
                                    adapter_label=label, on_provenance=record)

        def add(piece: str) -> None:
            if piece and result.ttft_s is None:
                result.ttft_s = time.perf_counter() - start
            result.text += piece

        return generate, add

    def _adapter_of(self, arm: str) -> tuple[str | None, str | None]:
        """The adapter folder an arm asks the model for and the run name its answers are labelled with."""
        if arm == "ft2":
            return self.adapter2, self.adapter2_label
        if "ft" in arm.split("+"):
            return self.adapter, self.adapter_label
        return None, None

    def _stream_rag(self, question: Question, result: ArmAnswer, generate: Callable[[Any], Iterator[str]],
                    add: Callable[[str], None]) -> Iterator[ArmAnswer]:
        """A RAG arm: the retrieved chunks first (shown before any token), then tokens, then the cited answer."""
        from rag.answer import answer as rag_answer
        from rag.events import AnswerEvent, PromptEvent, RetrievedEvent, TokenEvent

        for event in rag_answer(self.index, question.question, generate, self.spec):  # type: ignore[arg-type]
            if isinstance(event, RetrievedEvent):
                result.retrieved = [{"source": h.chunk.source, "location": h.chunk.location,
                                     "score": round(float(h.score), 4), "text": h.chunk.text} for h in event.hits]
                yield result
            elif isinstance(event, PromptEvent):
                result.prompt = event.prompt  # the template filled with this arm's retrieved context
            elif isinstance(event, TokenEvent):
                add(event.text)
                yield result
            elif isinstance(event, AnswerEvent):
                result.text = event.text
                result.cited = [c.number for c in event.citations]

    def answer_all(self, question: Question) -> Iterator[tuple[str, ArmAnswer]]:
        """Every arm in turn on one question (they share one model, so they run one after another)."""
        for arm in self.arms:
            for partial in self.stream_arm(arm, question):
                yield arm, partial

    def iter_run(self, questions: list[Question]) -> Iterator[Progress | Report]:
        """Run every arm over the question set, yielding progress before each answer and the report last."""
        rows = []
        total = len(questions) * len(self.arms)
        done = 0
        for q in questions:
            answers: dict[str, ArmAnswer] = {}
            for arm in self.arms:
                yield Progress(done, total, f"{ARM_LABELS[arm]}: {q.question[:60]}")
                final = None
                for final in self.stream_arm(arm, q):  # noqa: B007 - the last yield is the finished answer
                    pass
                assert final is not None
                answers[arm] = final
                done += 1
            rows.append(ReportRow(q, answers))
        yield Progress(total, total, "done")
        yield Report(self.config(), self.arms, rows)

    def run(self, questions: list[Question],
            on_progress: Callable[[int, int, str], None] | None = None) -> Report:
        """Run every arm over the question set and return the scored report."""
        for item in self.iter_run(questions):
            if isinstance(item, Report):
                return item
            if on_progress:
                on_progress(item.done, item.total, item.what)
        raise AssertionError("iter_run always ends with a report")


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    what: str

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else self.done / self.total


def score_answer(result: ArmAnswer, question: Question) -> None:
    """Fill the metrics and, for a wrong RAG answer, say whether retrieval or generation failed."""
    refs = question.references
    hit = (question.gold_doc_id in result.sources) if (question.gold_doc_id and "rag" in result.arm) else None
    if refs:
        result.scores = {"exact_match": exact_match(result.text, refs), "f1": token_f1(result.text, refs),
                         "contained": answer_contained(result.text, refs), "rouge_l": rouge_l(result.text, refs)}
    else:
        result.scores = {"exact_match": None, "f1": None, "contained": None, "rouge_l": None}
    result.scores["retrieval_hit"] = None if hit is None else float(hit)
    result.failure = ""
    if refs and not result.scores["contained"]:
        if hit is False:
            result.failure = "retrieval failure"
        elif hit is True:
            result.failure = "generation failure"
        else:
            result.failure = "wrong answer"


# ------------------------------------------------------------------------------------- report


@dataclass
class ReportRow:
    question: Question
    answers: dict[str, ArmAnswer]


def utc_now() -> str:
    """Now, as an ISO 8601 UTC time stamp to the second (what reports and votes are stamped with)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Vote:
    """One blind judgement: which of two anonymous answers (A left, B right) was better, and when it was made
    (so preference pairs exported from several rounds can be told apart and ordered)."""

    qid: str
    arm_a: str
    arm_b: str
    choice: str
    time: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        if self.choice not in VOTE_CHOICES:
            raise CompareError(f"A vote is one of {', '.join(VOTE_CHOICES)}, not {self.choice!r}.")


def blind_pairs(qids: list[str], arms: list[str], seed: int = 0) -> list[tuple[str, str, str]]:
    """For each question, two of the arms in random left/right positions (seeded, so a reload shows the same)."""
    if len(arms) < 2:
        raise CompareError("Blind mode needs at least two arms.")
    rng = random.Random(seed)
    out = []
    for qid in qids:
        a, b = rng.sample(arms, 2)
        out.append((qid, a, b))
    return out


def win_rates(votes: Iterable[Vote]) -> dict[str, dict[str, Any]]:
    """Per arm: wins, ties, losses, both-bad and win rate (wins / votes it took part in) with a 95% Wilson CI."""
    table: dict[str, Counter] = {}
    for v in votes:
        for arm in (v.arm_a, v.arm_b):
            table.setdefault(arm, Counter())["votes"] += 1
        if v.choice in ("A", "B"):
            winner, loser = (v.arm_a, v.arm_b) if v.choice == "A" else (v.arm_b, v.arm_a)
            table[winner]["wins"] += 1
            table[loser]["losses"] += 1
        else:
            key = "ties" if v.choice == "tie" else "both_bad"
            table[v.arm_a][key] += 1
            table[v.arm_b][key] += 1
    out = {}
    for arm, c in table.items():
        low, high = wilson_interval(c["wins"], c["votes"])
        out[arm] = {"votes": c["votes"], "wins": c["wins"], "ties": c["ties"], "losses": c["losses"],
                    "both_bad": c["both_bad"], "win_rate": c["wins"] / c["votes"], "ci95": [low, high]}
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class Report:
    config: dict[str, Any]
    arms: list[str]
    rows: list[ReportRow]
    votes: list[Vote] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Mean of each metric per arm, plus latency and (for RAG arms) failure counts."""
        out: dict[str, dict[str, Any]] = {}
        for arm in self.arms:
            answers = [r.answers[arm] for r in self.rows if arm in r.answers]
            entry: dict[str, Any] = {"questions": len(answers)}
            for metric in ("exact_match", "f1", "contained", "rouge_l", "retrieval_hit"):
                entry[metric] = _mean([a.scores.get(metric) for a in answers])
            entry["latency_s"] = _mean([a.total_s for a in answers])
            entry["ttft_s"] = _mean([a.ttft_s for a in answers])
            entry["tokens_per_s"] = _mean([a.tokens_per_s for a in answers if a.tokens_per_s])
            entry["errors"] = sum(a.error is not None for a in answers)
            if "rag" in arm:
                entry["retrieval_failures"] = sum(a.failure == "retrieval failure" for a in answers)
                entry["generation_failures"] = sum(a.failure == "generation failure" for a in answers)
            out[arm] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "summary": self.summary(),
            "questions": [{**asdict(r.question), "answers": {a: ans.to_dict() for a, ans in r.answers.items()}}
                          for r in self.rows],
            "votes": [asdict(v) for v in self.votes],
            "win_rates": win_rates(self.votes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)

    def to_csv(self) -> str:
        """One line per question and arm: the per-question table a spreadsheet user wants.

        Cells that a spreadsheet would run as formulas are neutralised (:func:`engine.files.csv_text`).
        """
        header = ["qid", "question", "references", "gold_doc_id", "leak", "arm", "answer", "exact_match", "f1",
                  "contained", "rouge_l", "retrieval_hit", "failure", "ttft_s", "total_s", "tokens", "tokens_per_s",
                  "retrieved_sources", "error", *PROVENANCE_COLUMNS]
        rows: list[list[Any]] = [header]
        for r in self.rows:
            q = r.question
            for arm, a in r.answers.items():
                s = a.scores
                rows.append([q.qid, q.question, " | ".join(q.references), q.gold_doc_id or "", q.leak or "",
                                 arm, a.text, s.get("exact_match"), s.get("f1"), s.get("contained"),
                                 s.get("rouge_l"), s.get("retrieval_hit"), a.failure,
                                 None if a.ttft_s is None else round(a.ttft_s, 3), round(a.total_s, 3), a.tokens,
                                 round(a.tokens_per_s, 2), ";".join(a.sources), a.error or "",
                                 *_provenance_cells(a)])
        return csv_text(rows)

    def to_html(self) -> str:
        """A single self-contained page (inline CSS, no scripts or links) to share or archive."""
        return render_html(self)

    def save(self, path: str | Path) -> Path:
        """Write by extension: .json, .csv or .html."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = {".csv": self.to_csv, ".html": self.to_html, ".htm": self.to_html}.get(path.suffix.lower(),
                                                                                         self.to_json)
        path.write_text(writer(), encoding="utf-8")
        return path


# --------------------------------------------------------------------------------- preference pairs

#: Why a vote gave no pair, in plain words (``{n}`` votes); the keys are :attr:`PreferenceExport.counts`' keys.
LEFT_OUT = {
    "ties": "{n} tie(s): neither answer was preferred, so there is no pair",
    "both_bad": "{n} 'both bad' vote(s): neither answer is one to prefer, so there is no pair",
    "different_prompts": "{n} vote(s) compared a RAG answer with a non-RAG one: the two saw different prompts, so "
                         "they are left out",
    "different_context": "{n} vote(s) compared two RAG answers that read different retrieved passages: the two saw "
                         "different prompts, so they are left out",
    "unusable": "{n} vote(s) involved an answer that failed, is empty, or whose question is no longer in the "
                "report, so they are left out",
    "identical": "{n} vote(s) compared two identical answers, which teach no preference, so they are left out",
}


@dataclass
class PreferenceExport:
    """The blind votes as preference pairs in TRL's conversational format, and what was left out and why."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    notes: list[str]

    def line(self) -> str:
        """One sentence for under the export: how many pairs, and each reason votes were left out."""
        votes = sum(self.counts.values())
        pairs = self.counts["pairs"]
        head = (f"{pairs} preference pair(s) from {votes} vote(s)." if pairs else
                f"No preference pairs from {votes} vote(s)." if votes else
                "No votes yet: vote blind to turn your judgements into preference pairs.")
        return " ".join([head, *(f"{note}." for note in self.notes)])


def preference_pairs(report: Report) -> PreferenceExport:
    """Turn the report's votes into chosen/rejected pairs a DPO trainer can learn from.

    Why the rules: DPO compares the two answers' likelihoods *under one prompt*, so a pair is only valid when
    both arms saw exactly the same user turn. Base and fine-tuned share the plain prompt; two RAG arms share
    one only when they read the same context; a RAG answer and a non-RAG answer never do (inventing a context
    for the non-RAG answer would teach a preference the voter never expressed). Ties, "both bad", failed or
    empty answers and identical texts hold no preference either. Each left-out vote is counted, with a note.
    """
    counts = dict.fromkeys(["pairs", *LEFT_OUT], 0)
    rows: list[dict[str, Any]] = []
    questions = {r.question.qid: r for r in report.rows}
    for vote in report.votes:
        verdict = _pair_verdict(vote, questions.get(vote.qid))
        if isinstance(verdict, str):
            counts[verdict] += 1
            continue
        rows.append(verdict)
        counts["pairs"] += 1
    notes = [LEFT_OUT[key].format(n=n) for key, n in counts.items() if key != "pairs" and n]
    return PreferenceExport(rows, counts, notes)


def _pair_verdict(vote: Vote, row: ReportRow | None) -> dict[str, Any] | str:
    """The pair a vote gives, or the :data:`LEFT_OUT` key saying why it gives none."""
    if vote.choice in ("tie", "both_bad"):
        return "ties" if vote.choice == "tie" else "both_bad"
    if ("rag" in vote.arm_a) != ("rag" in vote.arm_b):
        return "different_prompts"
    winner, loser = (vote.arm_a, vote.arm_b) if vote.choice == "A" else (vote.arm_b, vote.arm_a)
    chosen = row.answers.get(winner) if row else None
    rejected = row.answers.get(loser) if row else None
    if not _usable(chosen) or not _usable(rejected):
        return "unusable"
    assert chosen is not None and rejected is not None  # for the type checker: _usable said so
    if chosen.text.strip() == rejected.text.strip():
        return "identical"
    if chosen.prompt != rejected.prompt:
        return "different_context" if "rag" in winner else "different_prompts"
    return {"prompt": [{"role": "user", "content": chosen.prompt}],
            "chosen": [{"role": "assistant", "content": chosen.text.strip()}],
            "rejected": [{"role": "assistant", "content": rejected.text.strip()}],
            "arms": {"chosen": winner, "rejected": loser}, "qid": vote.qid, "time": vote.time}


def _usable(answer: ArmAnswer | None) -> bool:
    """An answer that can stand in a pair: it exists, did not fail, has text, and records its prompt."""
    return answer is not None and answer.error is None and bool(answer.text.strip()) and bool(answer.prompt)


def write_preference_file(export: PreferenceExport, path: str | Path) -> Path:
    """Write the pairs as JSONL (one pair per line, UTF-8), the file a DPO run trains on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(preference_jsonl(export), encoding="utf-8")
    return path


def preference_jsonl(export: PreferenceExport) -> str:
    """The pairs as JSONL text (non-ASCII kept as is)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in export.rows)


#: A DPO pass on votes: two passes over the pairs, at most this many steps.
VOTE_RUN_EPOCHS, VOTE_RUN_MAX_STEPS = 2, 60
#: ... at a tenth of the voted run's learning rate: DPO on a handful of pairs at an SFT learning rate drives the
#: rejected answers' likelihood down until the model answers in single words (measured: 2 pairs, 10 steps at
#: 2e-3 turned "The capital of France is Paris." into "Not.").
VOTE_RUN_LR_FACTOR = 0.1


def preference_config(config: TrainConfig, run_id: str, pairs: int) -> TrainConfig:
    """The voted run's own settings, switched to a short, gentle DPO pass that continues that run's adapter.

    Why the voted run's settings: same base model, LoRA shape and quantization, so the new adapter is a
    continuation of the one that was voted on. No validation split: the pairs are few and all are needed.
    """
    per_step = max(1, config.batch_size * config.grad_accum)
    steps = min(VOTE_RUN_MAX_STEPS, max(1, -(-VOTE_RUN_EPOCHS * pairs // per_step)))
    return config.replace(method="dpo", from_run=run_id, max_steps=steps, val_fraction=0.0,
                          learning_rate=config.learning_rate * VOTE_RUN_LR_FACTOR)


def improve_with_votes(report: Report, ws: Workspace, *, visitor: str | None = None, hf_token: str | None = None,
                       start: bool = True) -> tuple[JobRecord, PreferenceExport]:
    """Write the report's preference pairs into the workspace and queue a DPO run continuing the voted run.

    The run is looked up in ``ws`` (someone else's run reads as missing) and must have finished with an
    adapter; the pairs file is checked against the workspace's disk quota before it is written.
    """
    from engine.quotas import check_room

    run_id = report.config.get("run_id")
    if not run_id:
        raise CompareError("This comparison has no fine-tuned run to improve: pick a finished run, run the "
                           "question set again and vote.")
    voted = ws.run(run_id)
    if voted.status != "done" or not (voted.adapter_dir / "adapter_config.json").exists():
        raise CompareError(f"The run {voted.name} has no finished adapter to continue.")
    export = preference_pairs(report)
    if not export.rows:
        raise CompareError(f"No preference pairs to learn from yet. {export.line()}")
    check_room(ws, len(preference_jsonl(export).encode("utf-8")), "the preference pairs file")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = write_preference_file(export, ws.datasets / f"votes-{voted.id}-{stamp}.jsonl")
    config = preference_config(voted.config, voted.id, len(export.rows))
    job = ws.store().submit(config, path, owner=ws.owner, visitor=visitor, hf_token=hf_token,
                            name=f"{voted.name} + votes", start=start)
    return job, export


PROVENANCE_COLUMNS = ("base_model", "base_revision", "adapter", "adapter_hash", "collection", "collection_version",
                      "generation")


def _provenance_cells(answer: ArmAnswer) -> list[Any]:
    """What produced the answer, as CSV cells (generation settings as JSON), so a row can be audited."""
    record = answer.provenance or {}
    cells = [record.get(name) for name in PROVENANCE_COLUMNS]
    cells[-1] = json.dumps(record.get("generation"), sort_keys=True) if record.get("generation") else None
    return ["" if c is None else c for c in cells]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f3f3f3}
.ans{white-space:pre-wrap;max-width:36em}.fail{color:#b00}.ok{color:#070}pre{background:#f6f6f6;padding:1em;
overflow:auto}.leak{color:#a60}.prov{color:#666;font-size:.85em}"""


def _second_run_rows(config: dict[str, Any]) -> str:
    """The second run's configuration rows, only in a report that had one (older reports look as before)."""
    if not config.get("adapter2"):
        return ""
    e = html.escape
    return (f"<tr><th>Second adapter (after votes)</th><td>{e(str(config['adapter2']))}</td></tr>"
            f"<tr><th>Second adapter hash</th><td>{e(str(config.get('adapter2_hash') or '–'))}</td></tr>")


def render_html(report: Report) -> str:
    e = html.escape
    summary = report.summary()
    metrics = SUMMARY_METRICS
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Tune Studio comparison</title>"
             f"<style>{_CSS}</style></head><body><h1>Tune Studio comparison</h1>",
             "<h2>Configuration</h2>",
             f"<table id='config'><tr><th>Base model</th><td>{e(str(report.config.get('base_model')))}</td></tr>"
             f"<tr><th>Adapter</th><td>{e(str(report.config.get('adapter') or '–'))}</td></tr>"
             f"<tr><th>Adapter hash</th><td>{e(str(report.config.get('adapter_hash') or '–'))}</td></tr>"
             + _second_run_rows(report.config) +
             f"<tr><th>Index</th><td>{e(str(report.config.get('index') or '–'))}</td></tr>"
             f"<tr><th>Generation settings</th><td>{e(json.dumps(report.config.get('generation')))}</td></tr>"
             f"<tr><th>Created</th><td>{e(str(report.config.get('created')))}</td></tr></table>",
             f"<details><summary>Pipeline spec</summary><pre>{e(json.dumps(report.config.get('pipeline'), indent=2))}"
             "</pre></details>",
             "<h2>Summary</h2><table id='summary'><tr><th>measure</th>"
             + "".join(f"<th>{e(arm_label(a, report.config))}</th>" for a in report.arms)
             + "<th>what it means</th></tr>"]
    for m in metrics:
        cells = "".join(f"<td>{_fmt(summary[a].get(m))}</td>" for a in report.arms)
        parts.append(f"<tr><th>{e(metric_name(m))}</th>{cells}<td>{e(METRICS[m][1])}</td></tr>")
    parts.append("</table>")
    rates = win_rates(report.votes)
    if rates:
        parts.append("<h2>Blind votes</h2><table id='votes'><tr><th>arm</th><th>votes</th><th>wins</th><th>ties</th>"
                     "<th>losses</th><th>both bad</th><th>win rate (95% CI)</th></tr>")
        for arm, r in rates.items():
            parts.append(f"<tr><td>{e(arm_label(arm, report.config))}</td><td>{r['votes']}</td><td>{r['wins']}</td>"
                         f"<td>{r['ties']}</td><td>{r['losses']}</td><td>{r['both_bad']}</td>"
                         f"<td>{r['win_rate']:.2f} ({r['ci95'][0]:.2f}–{r['ci95'][1]:.2f})</td></tr>")
        parts.append("</table><table><tr><th>question</th><th>A</th><th>B</th><th>vote</th><th>time (UTC)</th></tr>")
        for v in report.votes:
            parts.append(f"<tr><td>{e(v.qid)}</td><td>{e(v.arm_a)}</td><td>{e(v.arm_b)}</td>"
                         f"<td>{e(VOTE_LABELS[v.choice])}</td><td>{e(v.time)}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Questions</h2><table id='questions'><tr><th>#</th><th>question</th><th>reference</th>"
                 + "".join(f"<th>{e(arm_label(a, report.config))}</th>" for a in report.arms) + "</tr>")
    for i, r in enumerate(report.rows, start=1):
        q = r.question
        leak = f"<div class='leak'>⚠ {e(q.leak)}</div>" if q.leak else ""
        gold = f"<div>gold doc: {e(q.gold_doc_id)}</div>" if q.gold_doc_id else ""
        cells = []
        for arm in report.arms:
            a = r.answers.get(arm)
            if a is None:
                cells.append("<td>–</td>")
                continue
            ok = a.scores.get("contained")
            verdict = ("<span class='ok'>✓ contains the answer</span>" if ok else
                       f"<span class='fail'>✗ {e(a.failure or 'no reference')}</span>" if ok is not None else "")
            scores = " · ".join(f"{metric_name(k)} {_fmt(v, 2)}" for k, v in a.scores.items() if v is not None)
            src = f"<div>retrieved: {e(', '.join(a.sources))}</div>" if a.retrieved else ""
            made_by = f"<div class='prov'>{e(a.provenance_line)}</div>" if a.provenance else ""
            cells.append(f"<td><div class='ans'>{e(a.text)}</div>{verdict}<div>{e(scores)}</div>{src}"
                         f"<div>{a.total_s:.2f} s, {a.tokens} tokens</div>{made_by}</td>")
        parts.append(f"<tr><td>{i}</td><td>{e(q.question)}{leak}{gold}</td><td>{e(' | '.join(q.references))}</td>"
                     + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)
