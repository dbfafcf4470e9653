"""A local LLM judge: scores answers without hand labelling, with prompts the user can read and edit.

Why this module exists: token F1 against a short reference undersells a correct answer phrased
differently, and labelling answers by hand does not scale to an experiment. A judge model reads the
question, the reference answer and the source passage and says whether an answer is correct (graded),
or which of two answers is better (pairwise). A judge is only worth listening to when it is known to
agree with something trustworthy, so this module also measures that agreement (Cohen's kappa against
the reference answers or the user's own votes) and :func:`trust` says, in plain words, whether the
report may use the judge's verdict.

The model is an input (a ``generate(messages) -> text`` callable), so the same logic runs with the
bundled model, a larger one on a GPU Space, or a scripted function in the tests. Outputs the parser
cannot read are kept as "unparsed" (``None``), never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from core.generation import GenerationSettings
from core.settings import Settings, SettingsError, setting
from core.stats import Agreement, cohen_kappa, kappa_label

Generate = Callable[[list[dict[str, str]]], str]

GRADED_TEMPLATE = (
    "You grade an answer to a question. Use the passage and the reference answer.\n\n"
    "Passage:\n{passage}\n\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Answer to grade: {answer}\n\n"
    "Is the answer to grade correct? It is correct if it says the same as the reference answer, "
    "even in other words.\n"
    "Reply with exactly one line: Verdict: CORRECT or Verdict: INCORRECT"
)
PAIRWISE_TEMPLATE = (
    "You compare two answers to a question. Use the passage and the reference answer.\n\n"
    "Passage:\n{passage}\n\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n\n"
    "Answer A: {answer_a}\n"
    "Answer B: {answer_b}\n\n"
    "Which answer is more correct? If both are equally good or equally bad, say TIE.\n"
    "Reply with exactly one line: Better: A or Better: B or Better: TIE"
)
GRADED_FIELDS = ("question", "reference", "passage", "answer")
PAIRWISE_FIELDS = ("question", "reference", "passage", "answer_a", "answer_b")
#: Fewer judged answers than this and no agreement figure is trusted, whatever its value.
MIN_JUDGED = 10
SMALL_MODEL_HINT = "Small models judge near chance; pick a larger judge model on a GPU Space."


class JudgeSettings(Settings):
    """How the judge is asked; its generation is greedy so the same answer always gets the same verdict."""

    mode: str = setting(
        "graded",
        "graded: the judge says whether each answer is correct, by itself. pairwise: the judge says which of "
        "two answers is better (asked in both orders, so it cannot simply favour the first one).",
        choices=("graded", "pairwise"),
    )
    graded_template: str = setting(
        GRADED_TEMPLATE,
        "What the judge reads in graded mode. Must contain {question}, {reference}, {passage} and {answer}; "
        "the judge's reply should end with 'Verdict: CORRECT' or 'Verdict: INCORRECT'.",
        advanced=True,
    )
    pairwise_template: str = setting(
        PAIRWISE_TEMPLATE,
        "What the judge reads in pairwise mode. Must contain {question}, {reference}, {passage}, {answer_a} "
        "and {answer_b}; the reply should end with 'Better: A', 'Better: B' or 'Better: TIE'.",
        advanced=True,
    )
    kappa_threshold: float = setting(
        0.4,
        "Below this agreement with the reference answers (Cohen's kappa: 0 = chance, 1 = always agrees) the "
        "report gives no judge-based verdict. 0.4 is the start of 'moderate' agreement.",
        label="Trust the judge from kappa", minimum=0.0, maximum=1.0, step=0.05,
    )
    max_new_tokens: int = setting(
        48,
        "Longest judge reply in tokens. The verdict is one short line; more room lets a model ramble.",
        label="Judge max new tokens", minimum=1, maximum=1024, step=1, advanced=True,
    )

    def validate(self) -> None:
        for name, fields in (("graded_template", GRADED_FIELDS), ("pairwise_template", PAIRWISE_FIELDS)):
            missing = [f"{{{f}}}" for f in fields if f"{{{f}}}" not in getattr(self, name)]
            if missing:
                raise SettingsError(name, f"must contain {', '.join(missing)}.")


def fill(template: str, **values: str) -> str:
    """Put values into a template's {placeholders} in one pass.

    Not ``str.format``: a user-edited prompt may contain other braces (a JSON example), and an answer
    that happens to contain "{passage}" must not be expanded a second time.
    """
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in values) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], template)


# ---------------------------------------------------------------------------------------- parsing

_MARKUP = str.maketrans("", "", "*_`#>")
_GRADE_WORDS = {"correct": True, "right": True, "true": True, "yes": True,
                "incorrect": False, "wrong": False, "false": False, "no": False, "not correct": False}
_WORD = r"(not\s+correct|incorrect|correct|wrong|right|true|false|yes|no)"
#: A finished verdict line ("Verdict: INCORRECT", "Better: B") followed by something that is not a letter, so a
#: reply cut at "Better: A" is not mistaken for one that goes on "Better: Answer B".
_FINAL_LINE = re.compile(r"(?:verdict|better)\**\s*[:=]\s*\**\s*(?:correct|incorrect|a|b|tie)\b(?=[^A-Za-z])",
                         re.IGNORECASE)
_VERDICT_RE = re.compile(r"verdict\s*(?:[:=\-]|is\b)?\s*(?:is\s+)?" + _WORD + r"\b")
_SENTENCE_RE = re.compile(r"\b(?:answer|it|this|that)(?:\s+to\s+grade)?\s+is\s+(partially\s+|partly\s+)?"
                          r"(not\s+correct|incorrect|correct|wrong|right)\b")
_BARE_GRADE = {"correct": True, "incorrect": False, "not correct": False, "wrong": False}
#: "... does not match the reference answer" / "... matches the reference answer": how small models often say it.
_NO_MATCH_RE = re.compile(r"\b(?:does\s+not|doesn'?t|do\s+not)\s+match\b")
_MATCH_RE = re.compile(r"\b(?:matches|is\s+the\s+same\s+as)\s+the\s+reference\b")


def _lines(text: str) -> list[str]:
    """Lower-cased lines without Markdown emphasis, so '**Verdict:** Incorrect' reads as plain text."""
    return [" ".join(line.translate(_MARKUP).lower().split()) for line in (text or "").splitlines()]


def _one(values: Sequence[Any]) -> Any:
    """The single distinct value in ``values``, or None when there is none or they conflict."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def _fallback_grade(line: str) -> bool | None:
    """A verdict without the word "verdict": a bare 'CORRECT.' line, or 'The answer is correct.'."""
    bare = line.strip(" .!:")
    if bare in _BARE_GRADE:
        return _BARE_GRADE[bare]
    found = [(part, " ".join(word.split())) for part, word in _SENTENCE_RE.findall(line)]
    if any(part for part, _ in found):
        return None  # "partially correct" is not a verdict either way
    matched = [False] * len(_NO_MATCH_RE.findall(line)) + [True] * len(_MATCH_RE.findall(line))
    return _one([_GRADE_WORDS[word] for _, word in found] + matched)


def _last_explicit_or_agreed(text: str, explicit_of: Callable[[str], list[Any]],
                             fallback_of: Callable[[str], Any]) -> Any:
    """The rule both parsers share: the last line with one explicit verdict wins (a line naming several is the
    instruction echoed, and is skipped); without any, the fallback readings count only if they all agree."""
    explicit, fallback = [], []
    for line in _lines(text):
        found = explicit_of(line)
        if found:
            value = _one(found)
            if value is not None:
                explicit.append(value)
            continue
        value = fallback_of(line)
        if value is not None:
            fallback.append(value)
    return explicit[-1] if explicit else _one(fallback)


def parse_graded(text: str) -> bool | None:
    """True (correct), False (incorrect) or None when the reply holds no unambiguous verdict.

    An explicit "Verdict: ..." line wins, the last one if the model wrote several; a line naming both
    verdicts (the model echoing the instruction) is ignored. Without one, bare or sentence verdicts
    count only if they all agree. Anything else is None: counted as unparsed, never guessed.
    """
    return _last_explicit_or_agreed(
        text, lambda line: [_GRADE_WORDS[" ".join(w.split())] for w in _VERDICT_RE.findall(line)], _fallback_grade)

_PREF_WORDS = {"a": "A", "b": "B", "tie": "tie", "both": "tie", "neither": "tie", "equal": "tie"}
_BETTER_RE = re.compile(r"better\s*(?:[:=\-]|is\b)\s*(?:answer\s+)?(a|b|tie|both|neither|equal)\b")
_PREF_SENTENCE_RE = re.compile(r"(?:^|\banswer\s+)(a|b)\s+is\s+(?:the\s+)?better\b")
_TIE_SENTENCE_RE = re.compile(r"\b(?:it'?s|it is)\s+a\s+tie\b|\bboth\s+(?:answers\s+)?are\s+equally\b")


def _fallback_pref(line: str) -> str | None:
    """A preference without "Better:": a bare 'A' / 'B' / 'TIE' line, 'Answer B is better', 'It is a tie'."""
    bare = line.strip(" .!:")
    if bare in ("a", "b", "tie"):
        return _PREF_WORDS[bare]
    found = [_PREF_WORDS[w] for w in _PREF_SENTENCE_RE.findall(line)]
    if _TIE_SENTENCE_RE.search(line):
        found.append("tie")
    return _one(found)


def parse_pairwise(text: str) -> str | None:
    """"A", "B" or "tie" from a pairwise reply, or None when it holds no unambiguous preference.

    Same rules as :func:`parse_graded`: the last explicit "Better: X" line wins, a line naming several
    options is an echo of the instruction and is ignored, and fallback sentences must all agree.
    """
    return _last_explicit_or_agreed(text, lambda line: [_PREF_WORDS[w] for w in _BETTER_RE.findall(line)],
                                    _fallback_pref)

# ------------------------------------------------------------------------------------------ judge


@dataclass(frozen=True)
class JudgeResult:
    """One graded answer: the verdict (None = unparsed), what the judge said and exactly what it read."""

    verdict: bool | None
    raw: str
    prompt: str
    skipped: str | None = None  # why the model was not asked (e.g. "empty answer")

    @property
    def unparsed(self) -> bool:
        return self.verdict is None and self.skipped is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairwiseResult:
    """Two answers compared in both orders; ``winner`` is "A", "B", "tie" or None (an order was unparsed).

    ``first`` is the verdict with the answers as given (A first), ``second`` the verdict with them
    swapped, already mapped back to the original labels. ``consistent`` is True only when both orders
    named the same winner; a judge that just prefers whatever comes first ends up "tie", inconsistent.
    """

    winner: str | None
    consistent: bool
    first: str | None
    second: str | None
    raw_ab: str
    raw_ba: str
    prompt_ab: str
    prompt_ba: str
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ChatLike(Protocol):
    def generate(self, messages: list[dict[str, str]] | str, **kwargs: Any) -> str: ...


_SWAP = {"A": "B", "B": "A", "tie": "tie"}


class Judge:
    """Asks a model to grade or compare answers, with the prompts of :class:`JudgeSettings`."""

    def __init__(self, generate: Generate, settings: JudgeSettings | None = None):
        self.generate = generate
        self.settings = settings or JudgeSettings()

    @classmethod
    def from_chat(cls, chat: _ChatLike, settings: JudgeSettings | None = None, *,
                  adapter: str | None = None) -> Judge:
        """A judge over a ChatModel: greedy decoding, the settings' token budget, base model by default."""
        settings = settings or JudgeSettings()
        generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=0.0)

        def generate(messages: list[dict[str, str]]) -> str:
            """Stop once the verdict line is written: what a model adds after it is never read."""
            reply = ""
            stream = chat.stream(messages, adapter=adapter, settings=generation)
            try:
                for piece in stream:
                    reply += piece
                    if _FINAL_LINE.search(reply):
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            return reply

        return cls(generate, settings)

    def _ask(self, prompt: str) -> str:
        return self.generate([{"role": "user", "content": prompt}]) or ""

    def grade(self, question: str, reference: str, passage: str, answer: str) -> JudgeResult:
        """Is ``answer`` correct? An empty answer is INCORRECT without asking the model (it cannot be right)."""
        if not (answer or "").strip():
            return JudgeResult(verdict=False, raw="", prompt="", skipped="empty answer")
        prompt = fill(self.settings.graded_template, question=question, reference=reference,
                      passage=passage, answer=answer)
        raw = self._ask(prompt)
        return JudgeResult(verdict=parse_graded(raw), raw=raw, prompt=prompt)

    def compare(self, question: str, reference: str, passage: str, answer_a: str, answer_b: str) -> PairwiseResult:
        """Which answer is better, asked as (A, B) and again as (B, A) to cancel the judge's position bias.

        Both empty: a tie without asking. Otherwise the same winner both ways is the winner; any
        disagreement is a "tie" marked inconsistent; an unparsed order leaves the winner None.
        """
        if not (answer_a or "").strip() and not (answer_b or "").strip():
            return PairwiseResult(winner="tie", consistent=True, first=None, second=None, raw_ab="",
                                  raw_ba="", prompt_ab="", prompt_ba="", skipped="empty answers")
        common = {"question": question, "reference": reference, "passage": passage}
        prompt_ab = fill(self.settings.pairwise_template, answer_a=answer_a, answer_b=answer_b, **common)
        prompt_ba = fill(self.settings.pairwise_template, answer_a=answer_b, answer_b=answer_a, **common)
        raw_ab, raw_ba = self._ask(prompt_ab), self._ask(prompt_ba)
        first = parse_pairwise(raw_ab)
        swapped = parse_pairwise(raw_ba)
        second = _SWAP[swapped] if swapped is not None else None
        if first is None or second is None:
            winner, consistent = None, False
        elif first == second:
            winner, consistent = first, True
        else:
            winner, consistent = "tie", False
        return PairwiseResult(winner=winner, consistent=consistent, first=first, second=second, raw_ab=raw_ab,
                              raw_ba=raw_ba, prompt_ab=prompt_ab, prompt_ba=prompt_ba)


# -------------------------------------------------------------------------------------- agreement


def agreement_with_reference(judge_verdicts: Sequence[bool | None], reference_correct: Sequence[bool]) -> Agreement:
    """Kappa between the judge's verdicts and correctness by the reference answers (e.g. exact match).

    Unparsed verdicts (None) are left out, so ``n`` counts only answers the judge really judged.
    """
    if len(judge_verdicts) != len(reference_correct):
        raise ValueError(f"{len(judge_verdicts)} verdicts for {len(reference_correct)} reference labels.")
    pairs = [(bool(v), bool(r)) for v, r in zip(judge_verdicts, reference_correct, strict=True) if v is not None]
    return cohen_kappa([v for v, _ in pairs], [r for _, r in pairs])


_VOTE_AS_PREF = {"A": "A", "B": "B", "tie": "tie", "both_bad": "tie"}


def agreement_with_votes(judge_prefs: Sequence[str | None], votes: Sequence[str | None]) -> Agreement:
    """Kappa between the judge's pairwise preferences and the user's Compare votes.

    Votes are Compare's "A", "B", "tie" or "both_bad" (a tie for this purpose); a pair where the judge
    is unparsed or no vote was cast (None) is left out. The judge must have seen A and B in the
    positions the voter saw them, or the labels do not mean the same thing.
    """
    if len(judge_prefs) != len(votes):
        raise ValueError(f"{len(judge_prefs)} judge preferences for {len(votes)} votes.")
    unknown = sorted({str(v) for v in votes if v is not None and v not in _VOTE_AS_PREF})
    if unknown:
        raise ValueError(f"Unknown vote(s) {', '.join(unknown)}; expected A, B, tie or both_bad.")
    pairs = [(p, _VOTE_AS_PREF[v]) for p, v in zip(judge_prefs, votes, strict=True) if p is not None and v is not None]
    return cohen_kappa([p for p, _ in pairs], [v for _, v in pairs])


def trust(agreement: Agreement, threshold: float, *, against: str = "the reference answers") -> tuple[bool, str]:
    """Whether the report may give a judge-based verdict, and why, in words a non-statistician reads.

    ``against`` names what the judge was checked against ("your votes" for pairwise agreement).
    """
    n, kappa = agreement.n, agreement.kappa
    if n < MIN_JUDGED:
        return False, (f"Too few judged answers to check the judge against {against} (n = {n}, at least "
                       f"{MIN_JUDGED} needed): no judge-based verdict is given.")
    if kappa is None:
        return False, (f"The judge's agreement with {against} cannot be measured (kappa undefined: both gave "
                       f"the same label to all {n} answers): no judge-based verdict is given.")
    label = kappa_label(kappa)
    if kappa < threshold:
        return False, (f"The judge's agreement with {against} is {label} (kappa {kappa:.2f} < {threshold:.2f}, "
                       f"n = {n}): no judge-based verdict is given. {SMALL_MODEL_HINT}")
    agreed = round(agreement.observed * n)
    return True, (f"The judge agrees with {against} on {agreed} of {n} answers (kappa {kappa:.2f}, {label}, "
                  f"n = {n}): its verdict is shown.")
