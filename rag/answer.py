"""Prompting with numbered context, citation parsing, and the answer protocol the engine plugs into.

Generation is not this package's job: :func:`answer` takes ``generate``, any callable that turns a
prompt into a stream of text pieces (the engine's model, an API, a test double written by hand).
Everything else — retrieval, numbering the context [1], [2]..., mapping the answer's [n] back to
chunks — happens here, as typed events the UI only formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from rag.events import AnswerEvent, AnswerStreamEvent, PromptEvent, RetrievedEvent, TokenEvent
from rag.hits import Citation, Hit
from rag.pipeline import PipelineSpec
from rag.quotes import best_quote, sentences
from rag.retrieve import search

if TYPE_CHECKING:
    from rag.index import RagIndex

Generate = Callable[[str], Iterable[str]]
"""Prompt in, text pieces out (tokens or larger deltas); the engine provides it."""


def format_context(hits: list[Hit], max_chars: int) -> str:
    """Number each passage and name its source, so the model can cite it and the user can check it."""
    blocks: list[str] = []
    used = 0
    for number, hit in enumerate(hits, start=1):
        header = f"[{number}] ({hit.chunk.location})\n"
        room = max_chars - used - len(header)
        if room <= 50:
            break
        text = hit.chunk.text if len(hit.chunk.text) <= room else hit.chunk.text[:room].rsplit(" ", 1)[0] + " …"
        blocks.append(header + text)
        used += len(header) + len(text) + 2
    return "\n\n".join(blocks)


def build_prompt(question: str, hits: list[Hit], spec: PipelineSpec | None = None) -> str:
    """Fill the template's ``{context}`` and ``{question}``; other braces in the template stay literal."""
    settings = (spec or PipelineSpec()).stages["prompt"]
    context = format_context(hits, settings.max_context_chars)
    # str.format would choke on literal braces a user types (e.g. JSON examples), so substitute by hand.
    return settings.template.replace("{context}", context).replace("{question}", question.strip())


_CITATION = re.compile(r"\[(\s*\d+\s*(?:(?:,|;|-|–|and)\s*\d+\s*)*)\]")


def cited_numbers(text: str) -> list[int]:
    """Numbers cited as [1], [1, 2], [1][3], [2-4] or [1; 3], in order of first appearance."""
    numbers: list[int] = []
    for match in _CITATION.finditer(text):
        body = match.group(1)
        for part in re.split(r",|;|and", body):
            part = part.strip()
            range_match = re.fullmatch(r"(\d+)\s*[-–]\s*(\d+)", part)
            if range_match:
                lo, hi = int(range_match.group(1)), int(range_match.group(2))
                values = range(lo, hi + 1) if 0 < hi - lo < 20 else [lo, hi]
            else:
                values = [int(part)] if part.isdigit() else []
            for value in values:
                if value not in numbers:
                    numbers.append(value)
    return numbers


def parse_citations(text: str, hits: list[Hit]) -> tuple[list[Citation], list[int]]:
    """Map [n] in an answer to ``hits[n-1]``; numbers with no such passage are returned separately."""
    citations, invalid = [], []
    for number in cited_numbers(text):
        if 1 <= number <= len(hits):
            citations.append(Citation(number, hits[number - 1]))
        else:
            invalid.append(number)
    return citations, invalid


def citing_text(answer: str, number: int) -> str:
    """The answer sentences that cite ``[number]`` (``[1, 3]`` and ``[2-4]`` count), or the whole answer."""
    citing = [s for s in sentences(answer) if number in cited_numbers(s)]
    return " ".join(citing) or answer


def citation_quotes(answer: str, citations: list[Citation]) -> dict[int, str]:
    """Each citation's number → the sentence of its chunk that best supports the answer sentence citing it."""
    return {c.number: best_quote(c.hit.chunk.text, citing_text(answer, c.number)) for c in citations}


_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_ANSWER_LABEL = re.compile(r"^\s*(?:\*\*)?answer(?:\*\*)?\s*:(?:\*\*)?\s*", re.IGNORECASE)


def tidy_reply(text: str) -> str:
    """The reply without Markdown heading markers and without an echoed leading "Answer:" label.

    Small models often open with ``# Some Title`` copied from the passages, which renders as a huge heading
    that reads like the answer's title. The words are kept (only the markers go) and nothing is added: a
    reply without a citation stays without one — the sources list shows what was retrieved instead.
    """
    text = _HEADING.sub(lambda m: m.group(1), text.strip())
    return _ANSWER_LABEL.sub("", text, count=1).strip()


def answer(index: RagIndex, question: str, generate: Generate,
           spec: PipelineSpec | None = None) -> Iterator[AnswerStreamEvent]:
    """Retrieve, prompt, stream the generated answer, then resolve its citations.

    Yields ``RetrievedEvent`` → ``PromptEvent`` → ``TokenEvent``* → ``AnswerEvent`` (whose text is the
    :func:`tidy_reply` of the tokens, with each citation's quoted span: :func:`citation_quotes`).
    """
    spec = spec or index.spec
    result = search(index, question, spec)
    yield RetrievedEvent(result.hits)
    prompt = build_prompt(question, result.hits, spec)
    yield PromptEvent(prompt)
    pieces: list[str] = []
    for piece in generate(prompt):
        pieces.append(piece)
        yield TokenEvent(piece)
    text = tidy_reply("".join(pieces))
    citations, invalid = parse_citations(text, result.hits)
    yield AnswerEvent(text, citations, invalid, quotes=citation_quotes(text, citations))
