"""The dataset layer: load any supported file, detect its format, validate it, and encode it for training.

Typical use (the trainer, the UI and ``python -m engine inspect`` all go through these)::

    prepared = prepare(path, mapping)                       # raises DatasetError for refused files
    report = validate(prepared, tokenizer, max_length)      # per-row issues + token statistics
    train, val = split_train_validation(training_examples(prepared, report), 0.05, seed)
    rows = [e.to_trainer_row() for e in encode_examples(tokenizer, train, max_length)]
    preview = render_preview(tokenizer, train[0], max_length)   # same encoding, with learned segments

Preference data (DPO/ORPO pairs, KTO feedback) has its own entry, used by the preference trainer::

    prepared = prepare_preferences(path)                    # kind "pairs" or "feedback"
    report = validate_preferences(prepared, tokenizer, max_length)
    encoded = encode_pairs(tokenizer, training_preferences(prepared, report), max_length)

Module map: ``loading`` (bytes -> rows; ``sniff`` refuses what is not a dataset, ``csv_rows`` reads tables,
``large_files`` keeps the rows of big files in memory-mapped Arrow; text decoding is ``core.text``),
``columns`` (column names and cell rules both detectors share), ``pair_shapes`` (which preference shape),
``detection`` (which SFT format; refuses pairs), ``formats`` (rows -> :class:`Example`), ``pair_rows`` (rows ->
pairs / labelled answers), ``encoding`` (chat template -> tokens + loss mask), ``preference`` (preference
reading, tokens, preview and checks; and ``prepare``, SFT's entry), ``stats`` (token statistics),
``validation`` (report, split, inspect).
"""

from engine.data.detection import detect_format
from engine.data.encoding import (
    TRAIN_ON,
    TemplatePlan,
    encode_example,
    encode_examples,
    render_preview,
    template_plan,
)
from engine.data.errors import DatasetError, Issue
from engine.data.formats import fill_placeholders, find_placeholders
from engine.data.loading import SUPPORTED, fingerprint_file, load_dataset_file
from engine.data.preference import (
    chosen_examples,
    encode_feedback,
    encode_feedbacks,
    encode_pair,
    encode_pairs,
    feedback_from_pairs,
    preference_kind,
    prepare,
    prepare_preferences,
    preview_pair,
    training_preferences,
    validate_preferences,
)
from engine.data.schema import (
    FORMATS,
    ColumnMapping,
    DataOptions,
    Detection,
    EncodedExample,
    EncodedFeedback,
    EncodedPair,
    Example,
    FeedbackExample,
    FileInfo,
    LoadedData,
    Message,
    PairPreview,
    PreferencePair,
    PreferenceReport,
    PreparedData,
    PreparedPreferences,
    PreviewExample,
    TokenStats,
    ValidationReport,
)
from engine.data.validation import inspect_report, split_train_validation, training_examples, validate

__all__ = [
    "FORMATS",
    "SUPPORTED",
    "TRAIN_ON",
    "ColumnMapping",
    "DataOptions",
    "DatasetError",
    "Detection",
    "EncodedExample",
    "EncodedFeedback",
    "EncodedPair",
    "Example",
    "FeedbackExample",
    "FileInfo",
    "Issue",
    "LoadedData",
    "Message",
    "PairPreview",
    "PreferencePair",
    "PreferenceReport",
    "PreparedData",
    "PreparedPreferences",
    "PreviewExample",
    "TemplatePlan",
    "TokenStats",
    "ValidationReport",
    "chosen_examples",
    "detect_format",
    "encode_example",
    "encode_examples",
    "encode_feedback",
    "encode_feedbacks",
    "encode_pair",
    "encode_pairs",
    "feedback_from_pairs",
    "fill_placeholders",
    "find_placeholders",
    "fingerprint_file",
    "inspect_report",
    "load_dataset_file",
    "preference_kind",
    "prepare",
    "prepare_preferences",
    "preview_pair",
    "render_preview",
    "split_train_validation",
    "template_plan",
    "training_examples",
    "training_preferences",
    "validate",
    "validate_preferences",
]
