"""The dataset layer: load any supported file, detect its format, validate it, and encode it for training.

Typical use (the trainer, the UI and ``python -m engine inspect`` all go through these)::

    prepared = prepare(path, mapping)                       # raises DatasetError for refused files
    report = validate(prepared, tokenizer, max_length)      # per-row issues + token statistics
    train, val = split_train_validation(training_examples(prepared, report), 0.05, seed)
    rows = [e.to_trainer_row() for e in encode_examples(tokenizer, train, max_length)]
    preview = render_preview(tokenizer, train[0], max_length)   # same encoding, with learned segments

Module map: ``loading`` (bytes -> rows; ``sniff`` refuses what is not a dataset, ``csv_rows`` reads tables,
``large_files`` keeps the rows of big files in memory-mapped Arrow; text decoding is ``core.text``),
``detection`` (which format), ``formats`` (rows -> :class:`Example`), ``encoding`` (chat template -> tokens +
loss mask), ``validation`` (report, split, inspect).
"""

from engine.data.encoding import (
    TRAIN_ON,
    TemplatePlan,
    encode_example,
    encode_examples,
    render_preview,
    template_plan,
)
from engine.data.errors import DatasetError, Issue
from engine.data.formats import detect_format, fill_placeholders, find_placeholders, prepare
from engine.data.loading import SUPPORTED, fingerprint_file, load_dataset_file
from engine.data.schema import (
    FORMATS,
    ColumnMapping,
    DataOptions,
    Detection,
    EncodedExample,
    Example,
    FileInfo,
    LoadedData,
    Message,
    PreparedData,
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
    "Example",
    "FileInfo",
    "Issue",
    "LoadedData",
    "Message",
    "PreparedData",
    "PreviewExample",
    "TemplatePlan",
    "TokenStats",
    "ValidationReport",
    "detect_format",
    "encode_example",
    "encode_examples",
    "fill_placeholders",
    "find_placeholders",
    "fingerprint_file",
    "inspect_report",
    "load_dataset_file",
    "prepare",
    "render_preview",
    "split_train_validation",
    "template_plan",
    "training_examples",
    "validate",
]
