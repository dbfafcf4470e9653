"""Preference data for DPO, ORPO and KTO: read, check, tokenise and preview it; and SFT's public ``prepare``.

Typical use (the preference trainer and the Data tab)::

    prepared = prepare_preferences(path)                    # pairs (DPO/ORPO) or feedback (KTO), else DatasetError
    report = validate_preferences(prepared, tokenizer, max_length)
    pairs = training_preferences(prepared, report)          # without the rows the report marks as errors
    encoded = encode_pairs(tokenizer, pairs, max_length)    # prompt / chosen / rejected token ids, cut to fit
    examples = feedback_from_pairs(pairs)                   # KTO on a pair file

Why tokens come from the SFT encoder: a pair is encoded as the two conversations prompt + chosen and
prompt + rejected with ``encoding.render`` (the model's chat template, assistant tokens marked), and split where
the final reply's marked tokens start. So ``prompt_ids + chosen_ids`` is exactly what SFT trains on for the same
conversation, end-of-turn token included, and a model trained with SFT and then DPO sees one format.

Cutting to the maximum length keeps the end of the prompt (where the question is) and the start of the answers:
when prompt + longest answer is too long, the prompt loses its start down to
``max(max_length // 2, max_length - longest answer)`` tokens, then the answers lose their end.

``prepare`` is the public SFT entry (``engine.data.prepare``): it refuses pair files, or, with ``sft_on_chosen``,
trains on their chosen answers (:func:`chosen_examples`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.data.detection import MEDIA_FIX, detect_format, media_refusal, sample_rows
from engine.data.encoding import tokenize_for_stats
from engine.data.errors import DatasetError, Issue
from engine.data.formats import (
    RowError,
    _no_rows,
    fill_placeholders,
    prepare_sft,
    rows_of,
    unfilled_placeholders_warning,
)
from engine.data.loading import load_dataset_file
from engine.data.pair_rows import Finding, check_item, parse_feedback, parse_pair
from engine.data.pair_shapes import PairShape, detect_preference
from engine.data.schema import (
    ColumnMapping,
    DataOptions,
    Detection,
    EncodedFeedback,
    EncodedPair,
    Example,
    FeedbackExample,
    LoadedData,
    PairPreview,
    PreferencePair,
    PreferenceReport,
    PreparedData,
    PreparedPreferences,
    TokenStats,
)
from engine.data.stats import TOO_LONG_FIX, fill_stats, too_long
from engine.limits import Limits, limits

__all__ = [
    "EncodedFeedback",
    "EncodedPair",
    "FeedbackExample",
    "PairPreview",
    "PreferencePair",
    "PreferenceReport",
    "PreparedPreferences",
    "chosen_examples",
    "encode_feedback",
    "encode_feedbacks",
    "encode_pair",
    "encode_pairs",
    "feedback_from_pairs",
    "preference_kind",
    "prepare",
    "prepare_preferences",
    "preview_pair",
    "training_preferences",
    "validate_preferences",
]

Item = PreferencePair | FeedbackExample
_FEW_EXAMPLES = 20
_NOT_PREFERENCE_FIX = (
    "For DPO or ORPO give each row a prompt with a 'chosen' (better) and a 'rejected' (worse) answer; for KTO give "
    "each row an answer and a true/false 'label'. To learn from the answers alone, choose SFT as the training method."
)


# ----------------------------------------------------------------------------------------- reading


def preference_kind(records_or_path: Sequence[Any] | str | Path, mapping: ColumnMapping | None = None) -> str | None:
    """"pairs", "feedback" or None (not preference data, or multimodal), from the first rows only.

    Cheap enough for the Data tab to decide which view to show before reading every row; a path that
    cannot be read raises the same :class:`DatasetError` as :func:`prepare` would.
    """
    records = load_dataset_file(records_or_path).records if isinstance(records_or_path, str | Path) \
        else records_or_path
    rows = sample_rows(rows_of(records))
    if media_refusal(rows, Counter(k for r in rows for k in r)):
        return None
    shape = detect_preference(rows, mapping)
    return shape.kind if shape else None


def prepare_preferences(path: str | Path, mapping: ColumnMapping | None = None) -> PreparedPreferences:
    """Load a preference file, detect its shape and read every row into pairs or labelled answers.

    Rows that cannot be used are left out and listed in ``issues`` with their row (and line) numbers; the
    file is refused with a :class:`DatasetError` when it is not preference data or no row is usable.
    """
    loaded = load_dataset_file(path)
    return _prepare_loaded(loaded, rows_of(loaded.records), mapping)


def _prepare_loaded(loaded: LoadedData, records: Sequence[Any], mapping: ColumnMapping | None) -> PreparedPreferences:
    """:func:`prepare_preferences` on a file already loaded (``prepare`` loads it once for both paths)."""
    name = loaded.info.path.name
    shape = _shape_or_refusal(sample_rows(records), mapping, name)
    items, issues = _items_and_issues(records, loaded, shape)
    if not items:
        raise _no_rows(name, len(records), issues, 0)
    pairs = [i for i in items if isinstance(i, PreferencePair)]
    feedback = [i for i in items if isinstance(i, FeedbackExample)]
    warnings = list(loaded.warnings)
    unfilled = unfilled_placeholders_warning(_as_examples(items))
    if unfilled:
        warnings.append(unfilled)
    return PreparedPreferences(kind=shape.kind, source=shape.source, explanation=shape.explanation, pairs=pairs,
                               feedback=feedback, info=loaded.info, n_rows=len(records), issues=issues,
                               warnings=warnings, lines=loaded.lines, mapping=shape.mapping)


def _shape_or_refusal(rows: list[dict[str, Any]], mapping: ColumnMapping | None, name: str) -> PairShape:
    """The file's preference shape, or the :class:`DatasetError` that says why it has none."""
    columns = Counter(k for r in rows for k in r)
    media = media_refusal(rows, columns)
    if media:
        raise DatasetError(media, where=name, code="multimodal", fix=MEDIA_FIX)
    present = ", ".join(c for c, _ in columns.most_common(12)) or "none"
    missing = [c for c in (mapping.explicit().values() if mapping else ()) if c not in columns]
    if missing:
        raise DatasetError(f"The mapped column '{missing[0]}' is not in the file.", where=name,
                           code="missing_column", fix=f"Choose one of the columns: {present}.")
    shape = detect_preference(rows, mapping)
    if shape is None:
        raise DatasetError(f"This is not preference data: no chosen/rejected answers and no true/false label were "
                           f"found (columns: {present}).", where=name, code="not_preference",
                           fix=_NOT_PREFERENCE_FIX)
    if shape.source == "no_prompt":
        raise DatasetError(shape.explanation, where=name, code="missing_column",
                           fix="Name the prompt column in the column mapping (prompt=<column>).")
    return shape


def _items_and_issues(records: Sequence[Any], loaded: LoadedData, shape: PairShape) -> tuple[list[Item], list[Issue]]:
    """Every row read and checked: the usable pairs (or labelled answers) and the issues, with row and line."""
    parse = parse_pair if shape.kind == "pairs" else parse_feedback
    items: list[Item] = []
    issues: list[Issue] = []
    for row, record in enumerate(records, start=1):
        item: Item | None
        try:
            item = parse(record, shape, row)
            findings: list[Finding] = check_item(item)
        except RowError as err:
            item, findings = None, [("error", err.kind, err.message, err.fix, err.field)]
        if findings:
            line = loaded.line_of(row)
            issues += [Issue(row, sev, kind, msg, fix, fld, line) for sev, kind, msg, fix, fld in findings]
        if item is not None and not any(f[0] == "error" for f in findings):
            items.append(item)
    return items, issues


def feedback_from_pairs(pairs: Sequence[PreferencePair]) -> list[FeedbackExample]:
    """KTO on a pair file: each chosen answer becomes a good (desirable) example, each rejected one a bad one."""
    return [FeedbackExample(p.row, p.prompt, answer, good, p.tools)
            for p in pairs for answer, good in ((p.chosen, True), (p.rejected, False))]


def chosen_examples(prepared: PreparedPreferences) -> list[Example]:
    """SFT on preference data: prompt + chosen answer per pair (for feedback data: the answers marked good)."""
    if prepared.kind == "pairs":
        return [Example(p.row, (*p.prompt, p.chosen), p.tools) for p in prepared.pairs]
    return [Example(f.row, (*f.prompt, f.completion), f.tools) for f in prepared.feedback if f.desirable]


def _as_examples(items: Sequence[Item]) -> list[Example]:
    """Each item as one conversation holding all its answers: for placeholder and size checks, not training."""
    return [Example(i.row, (*i.prompt, *_answers(i)), i.tools) for i in items]


def _answers(item: Item) -> tuple[Any, ...]:
    return (item.chosen, item.rejected) if isinstance(item, PreferencePair) else (item.completion,)


def prepare(path: str | Path, mapping: ColumnMapping | None = None, **options: Any) -> PreparedData:
    """Load, detect, normalise and check a dataset file for SFT: the examples the trainer and preview use.

    ``options`` are :class:`DataOptions` fields (``keep_negative_feedback``, ``placeholders``, ``sft_on_chosen``).
    A pair file is refused (code ``"preference"``: choose DPO/ORPO/KTO) unless ``sft_on_chosen`` is on, which
    trains on its chosen answers and says that the rejected ones are ignored. Everything else is ``formats``'
    SFT path (:func:`engine.data.formats.prepare_sft`).
    """
    opts = DataOptions.from_dict(options)
    loaded = load_dataset_file(path)
    records = rows_of(loaded.records)
    detection = detect_format(records, mapping)
    if detection.refusal_code == "preference" and opts.sft_on_chosen:
        return _chosen_prepared(_prepare_loaded(loaded, records, mapping), opts)
    return prepare_sft(loaded, records, detection, opts)


def _chosen_prepared(prepared: PreparedPreferences, opts: DataOptions) -> PreparedData:
    """A pair file as SFT data: its chosen conversations, with a warning that the rejected answers are ignored."""
    examples = fill_placeholders(chosen_examples(prepared), opts.placeholders)
    note = (f"Training on the chosen answers only (SFT): the rejected answers of {len(prepared.pairs)} pairs are "
            "ignored. Choose DPO or ORPO in the Train tab to learn from both.")
    detection = Detection(format=prepared.source, mapping=prepared.mapping,
                          explanation=prepared.explanation + " SFT learns the chosen answers.", warnings=[note])
    warnings = [w for w in prepared.warnings if "placeholder" not in w] + [note]
    unfilled = unfilled_placeholders_warning(examples)
    if unfilled:
        warnings.append(unfilled)
    return PreparedData(examples=examples, detection=detection, info=prepared.info, n_rows=prepared.n_rows,
                        issues=list(prepared.issues), warnings=warnings, lines=prepared.lines)


# ----------------------------------------------------------------------------------------- tokens


def _conversations(item: Item) -> list[Example]:
    """The conversations SFT would encode for this item: prompt + each answer."""
    return [Example(item.row, (*item.prompt, answer), item.tools) for answer in _answers(item)]


def _reply_start(mask: list[int]) -> int:
    """Where the last run of learned tokens (the final reply) starts; -1 when nothing is learned."""
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    if not end:
        return -1
    start = end
    while start and mask[start - 1]:
        start -= 1
    return start


def _split(item: Item, toks: list[Any]) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, ids of each answer): the prompts of both conversations should agree; if the tokenizer
    merged differently across the boundary, the shared prompt is their common prefix."""
    splits = []
    for tok in toks:
        start = _reply_start(tok.mask)
        if start < 0:
            raise DatasetError("The chat template's output has no assistant reply to learn.", code="template",
                               fix="Report this with the row: the model's chat template drops replies.")
        splits.append((tok.ids[:start], tok.ids[start:]))
    first = splits[0][0]
    k = min(len(p) for p, _ in splits)
    for p, _ in splits[1:]:
        k = next((i for i in range(k) if p[i] != first[i]), k)
    return first[:k], [p[k:] + r for p, r in splits]


def _fit(prompt: list[int], answers: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]], int]:
    """Cut to ``max_length``: the prompt loses its start, then the answers their end; returns the prompt cut."""
    longest = max(len(a) for a in answers)
    keep = len(prompt)
    if keep + longest > max_length:
        keep = min(keep, max(max_length // 2, max_length - longest))
    room = max(0, max_length - keep)
    return prompt[len(prompt) - keep:], [a[:room] for a in answers], len(prompt) - keep


def _encoded(item: Item, toks: list[Any], max_length: int) -> EncodedPair | EncodedFeedback:
    """One item's token ids, cut to fit, with what was cut and the counts before cutting."""
    prompt, answers = _split(item, toks)
    kept_prompt, kept, prompt_cut = _fit(prompt, answers, max_length)
    cuts = [len(a) - len(k) for a, k in zip(answers, kept, strict=True)]
    if isinstance(item, PreferencePair):
        return EncodedPair(item.row, kept_prompt, kept[0], kept[1], prompt_cut, cuts[0], cuts[1], len(prompt),
                           len(answers[0]), len(answers[1]))
    return EncodedFeedback(item.row, kept_prompt, kept[0], item.desirable, prompt_cut, cuts[0], len(prompt),
                           len(answers[0]))


def _encode_items(tokenizer: Any, items: Sequence[Item],
                  max_length: int) -> list[EncodedPair | EncodedFeedback | DatasetError]:
    """Encode many items in tokenizer batches (as SFT validation does); a row the template cannot format
    comes back as its :class:`DatasetError` instead of stopping the others."""
    conversations = [_conversations(item) for item in items]
    toks = iter(tokenize_for_stats(tokenizer, [ex for group in conversations for ex in group]))
    out: list[EncodedPair | EncodedFeedback | DatasetError] = []
    for item, group in zip(items, conversations, strict=True):
        part = [next(toks) for _ in group]
        error = next((t for t in part if isinstance(t, DatasetError)), None)
        if error is None:
            try:
                out.append(_encoded(item, part, max_length))
            except DatasetError as err:
                out.append(err)
        else:
            out.append(error)
    return out


def _raise_errors(items: Sequence[Item], encoded: list[Any]) -> list[Any]:
    """For training: a row that cannot be encoded stops with its row number (validation lists them first)."""
    for item, enc in zip(items, encoded, strict=True):
        if isinstance(enc, DatasetError):
            raise DatasetError(f"Row {item.row}: {enc.problem}", fix=enc.fix, code=enc.code)
    return encoded


def encode_pairs(tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int) -> list[EncodedPair]:
    """Token ids of many pairs, cut to ``max_length`` (see the module docstring); batched like SFT encoding."""
    return _raise_errors(pairs, _encode_items(tokenizer, pairs, max_length))


def encode_feedbacks(tokenizer: Any, examples: Sequence[FeedbackExample], max_length: int) -> list[EncodedFeedback]:
    """Token ids of many KTO examples, cut to ``max_length`` like pairs."""
    return _raise_errors(examples, _encode_items(tokenizer, examples, max_length))


def encode_pair(tokenizer: Any, pair: PreferencePair, max_length: int) -> EncodedPair:
    """Token ids of one pair: ``prompt_ids + chosen_ids`` is the SFT encoding of prompt + chosen (before cutting)."""
    return encode_pairs(tokenizer, [pair], max_length)[0]


def encode_feedback(tokenizer: Any, example: FeedbackExample, max_length: int) -> EncodedFeedback:
    """Token ids of one KTO example."""
    return encode_feedbacks(tokenizer, [example], max_length)[0]


# ----------------------------------------------------------------------------------------- preview and checks


def cut_note(encoded: EncodedPair | EncodedFeedback, max_length: int) -> str:
    """What the maximum length cuts, in words ("" when nothing)."""
    if isinstance(encoded, EncodedPair):
        answers = [(encoded.chosen_cut, "chosen answer"), (encoded.rejected_cut, "rejected answer")]
    else:
        answers = [(encoded.completion_cut, "answer")]
    parts = [(encoded.prompt_cut, "from the start of the prompt")]
    parts += [(n, f"from the end of the {what}") for n, what in answers]
    words = [f"{n}{' tokens' if not i else ''} {where}" for i, (n, where) in enumerate(p for p in parts if p[0])]
    if not words:
        return ""
    joined = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"Max length {max_length} cuts {joined}."


def preview_pair(tokenizer: Any, pair_or_feedback: Item, max_length: int) -> PairPreview:
    """A pair (or KTO example) as the model sees it after cutting: chat template applied, token counts per side.

    For a KTO example the answer is in ``chosen_text``, ``rejected_text`` is empty and ``label`` is good/bad.
    """
    items = [pair_or_feedback]
    enc = _raise_errors(items, _encode_items(tokenizer, items, max_length))[0]

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    note = cut_note(enc, max_length)
    if isinstance(enc, EncodedPair):
        return PairPreview(enc.row, text(enc.prompt_ids), text(enc.chosen_ids), text(enc.rejected_ids),
                           len(enc.prompt_ids), len(enc.chosen_ids), len(enc.rejected_ids), note)
    return PairPreview(enc.row, text(enc.prompt_ids), text(enc.completion_ids), "", len(enc.prompt_ids),
                       len(enc.completion_ids), 0, note, label="good" if enc.desirable else "bad")


def validate_preferences(prepared: PreparedPreferences, tokenizer: Any, max_length: int,
                         lim: Limits | None = None) -> PreferenceReport:
    """Row issues, what the maximum length cuts, token statistics and duplicates, as ``validate`` for SFT.

    Rows over ``max_row_chars`` are errors and are not tokenised; rows the chat template cannot format are
    errors; cut rows are warnings (kept), or errors when nothing of an answer would be left.
    """
    lim = lim or limits()
    items: list[Item] = list(prepared.pairs if prepared.kind == "pairs" else prepared.feedback)
    issues = list(prepared.issues)
    fitting = []
    for item, example in zip(items, _as_examples(items), strict=True):
        refusal = too_long(example, lim)
        if refusal:
            issues.append(Issue(item.row, "error", "too_long", refusal, TOO_LONG_FIX, "", prepared.line_of(item.row)))
        else:
            fitting.append(item)
    usable, encoded = _usable(prepared, fitting, _encode_items(tokenizer, fitting, max_length), issues, max_length)
    n_duplicates = _duplicates(prepared, usable, issues)
    return _report(prepared, usable, encoded, issues, max_length, n_duplicates)


def _usable(prepared: PreparedPreferences, items: list[Item], encoded: list[Any], issues: list[Issue],
            max_length: int) -> tuple[list[Item], list[EncodedPair | EncodedFeedback]]:
    """The items that can be trained on and their encodings; encoding errors and cuts become issues."""
    usable: list[Item] = []
    kept: list[EncodedPair | EncodedFeedback] = []
    for item, enc in zip(items, encoded, strict=True):
        line = prepared.line_of(item.row)
        if isinstance(enc, DatasetError):
            issues.append(Issue(item.row, "error", enc.code, enc.problem, enc.fix, "", line))
            continue
        if enc.cut:
            lost = not all(_kept_answers(enc))
            severity, tail = ("error", " Nothing of an answer would be left.") if lost else ("warning", "")
            issues.append(Issue(item.row, severity, "truncated", cut_note(enc, max_length) + tail,
                                "Raise the maximum length, or shorten this example.", "", line))
            if lost:
                continue
        usable.append(item)
        kept.append(enc)
    return usable, kept


def _duplicates(prepared: PreparedPreferences, usable: list[Item], issues: list[Issue]) -> int:
    """Rows that repeat an earlier row exactly: a warning each (the model would see them twice)."""
    first: dict[Any, int] = {}
    n = 0
    for item in usable:
        key = (item.prompt, _answers(item), item.tools, getattr(item, "desirable", None))
        if key in first:
            n += 1
            issues.append(Issue(item.row, "warning", "duplicate", f"This row is a duplicate of row {first[key]}.",
                                "Delete repeated rows; duplicates make the model memorise them.", "",
                                prepared.line_of(item.row)))
        else:
            first[key] = item.row
    return n


def _report(prepared: PreparedPreferences, usable: list[Item], encoded: list[EncodedPair | EncodedFeedback],
            issues: list[Issue], max_length: int, n_duplicates: int) -> PreferenceReport:
    """Counts, token statistics and file-level warnings of a validated preference file."""
    prompt_stats, answer_stats = TokenStats(), TokenStats()
    fill_stats(prompt_stats, [e.full_prompt for e in encoded])
    fill_stats(answer_stats, [n for e in encoded for n in _full_answers(e)])
    good = sum(1 for i in usable if isinstance(i, FeedbackExample) and i.desirable)
    bad = sum(1 for i in usable if isinstance(i, FeedbackExample) and not i.desirable)
    n_cut = sum(1 for e in encoded if e.cut)
    issues.sort(key=lambda i: (i.row, i.severity != "error"))
    warnings = list(prepared.warnings) + _file_warnings(prepared.kind, len(usable), n_cut, max_length, good, bad)
    if n_duplicates:
        warnings.append(f"{n_duplicates} row(s) repeat an earlier row exactly.")
    return PreferenceReport(
        kind=prepared.kind, max_length=max_length, n_rows=prepared.n_rows, n_examples=len(usable),
        n_error_rows=len({i.row for i in issues if i.severity == "error" and i.row}), n_cut=n_cut,
        n_desirable=good, n_undesirable=bad, prompt_tokens=prompt_stats, answer_tokens=answer_stats, issues=issues,
        warnings=warnings, token_lengths=[e.full_prompt + max(_full_answers(e)) for e in encoded])


def _kept_answers(encoded: EncodedPair | EncodedFeedback) -> list[list[int]]:
    if isinstance(encoded, EncodedPair):
        return [encoded.chosen_ids, encoded.rejected_ids]
    return [encoded.completion_ids]


def _full_answers(encoded: EncodedPair | EncodedFeedback) -> list[int]:
    if isinstance(encoded, EncodedPair):
        return [encoded.full_chosen, encoded.full_rejected]
    return [encoded.full_completion]


def _file_warnings(kind: str, n_usable: int, n_cut: int, max_length: int, good: int, bad: int) -> list[str]:
    """What matters about the file as a whole: too few examples, cut rows, KTO labels all on one side."""
    what = "pairs" if kind == "pairs" else "labelled answers"
    out = []
    if 0 < n_usable < _FEW_EXAMPLES:
        out.append(f"Only {n_usable} usable {what}: the model may just memorise them. A few hundred varied "
                   f"{what} work much better.")
    if n_cut:
        out.append(f"{n_cut} of the {what} are longer than the maximum length {max_length} and will be cut (the "
                   "prompt loses its start, the answers their end).")
    if kind == "feedback" and n_usable and not (good and bad):
        side = "good" if good else "bad"
        out.append(f"All {n_usable} answers are marked {side}: KTO learns from the contrast between good and bad "
                   "answers, so add some of the other kind (or train the good answers with SFT).")
    return out


def training_preferences(prepared: PreparedPreferences, report: PreferenceReport) -> list[Any]:
    """The pairs (or labelled answers) to train on: those without an error in the validation report."""
    bad = {i.row for i in report.issues if i.severity == "error"}
    items = prepared.pairs if prepared.kind == "pairs" else prepared.feedback
    return [i for i in items if i.row not in bad]
