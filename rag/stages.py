"""Every RAG pipeline stage's parameters, declared once with :func:`core.settings.setting`.

The pipeline spec stores these as plain dicts, the CLI and the eval read them, and the UI builds
each stage card's form from :func:`core.settings.describe` — so a default lives only here.
"""

from __future__ import annotations

from core.generation import GenerationSettings
from core.settings import Settings, SettingsError, setting
from rag.reranker_names import DEFAULT_RERANKER, RERANKER_CHOICES

# Measured for the bundled 135M model on two disjoint sets of 40 SQuAD-small questions (bench/RESULTS.md, "Small-model
# RAG prompt"): the instruction after the question, one sentence, and the citation asked for as an example ending
# raised the rate of cited answers from 0.03 to 0.15 / 0.23, answer-contained unchanged (0.05 / 0.10-0.12).
DEFAULT_PROMPT = (
    "Context:\n{context}\n\n"
    "Question: {question}\n"
    "Answer in one sentence using only the context, and end with the number of the passage you used, "
    "like [1].\n"
    "Answer:"
)


class LoadSettings(Settings):
    # No PDF password here: a password goes with one build request only and is never part of a saved or
    # exported pipeline (see ``rag.pipeline.RETIRED_PARAMS``).
    max_file_mb: float = setting(100.0, "Files larger than this are refused rather than read.", minimum=1,
                                 maximum=2000, advanced=True)
    # OCR: about 2 CPU seconds per page with one thread (bench/RESULTS.md, "OCR (issue #13)").
    ocr: bool = setting(True, "Read scanned pages (PDF pages without a text layer) and images (PNG, JPEG, TIFF) "
                        "with text recognition (OCR). Off: such pages are skipped and image files are left out.",
                        label="Read scans with OCR")
    ocr_max_pages: int = setting(50, "At most this many pages of one file are read with OCR (a few seconds "
                                 "each); later scanned pages are skipped and listed in the build's log.",
                                 label="OCR: most pages per file", minimum=1, maximum=5000, advanced=True)
    ocr_max_megapixels: float = setting(40.0, "Images (and TIFF frames) larger than this many million pixels are "
                                        "skipped rather than read; scanned PDF pages are rendered smaller than "
                                        "this.", label="OCR: largest image (megapixels)", minimum=1,
                                        maximum=500, advanced=True)


SPLIT_METHODS = ("recursive", "token", "markdown", "sentence")


class SplitSettings(Settings):
    method: str = setting("recursive", "How text is cut: recursive characters (paragraph, line, sentence, word), "
                          "embedder tokens, markdown headers then recursive, or whole sentences.",
                          choices=SPLIT_METHODS)
    chunk_size: int = setting(1000, "Maximum chunk length (characters; tokens for the token method). Larger keeps "
                              "paragraphs whole; smaller gives more precise citations.", minimum=50, maximum=8000,
                              step=50)
    chunk_overlap: int = setting(100, "Characters (or tokens) repeated between neighbouring chunks so a sentence cut "
                                 "at a boundary is still found.", minimum=0, maximum=2000, step=10)
    prepend_title: bool = setting(True, "Embed and keyword-index each chunk together with its document title and "
                                  "section, so a chunk that never names its topic is still found.")

    def validate(self) -> None:
        if self.chunk_overlap >= self.chunk_size:
            raise SettingsError("chunk_overlap", f"{self.chunk_overlap} must be smaller than chunk_size "
                                f"({self.chunk_size}); try {self.chunk_size // 10}.")


class EmbedSettings(Settings):
    model: str = setting("all-MiniLM-L6-v2", "The model that turns each chunk into a vector (a list of numbers "
                         "that captures its meaning) for the meaning search. The "
                         "bundled MiniLM works offline; the others download from the Hugging Face Hub.",
                         choices=("all-MiniLM-L6-v2", "BAAI/bge-small-en-v1.5", "intfloat/e5-small-v2"))
    batch_size: int = setting(64, "Chunks embedded per batch (higher is faster on a GPU, uses more memory).",
                              minimum=1, maximum=1024, advanced=True)


class IndexSettings(Settings):
    kind: str = setting("flat", "How the meaning search looks up vectors. flat compares the question with every "
                        "chunk (exact; best below ~100k chunks); HNSW (a graph of neighbouring chunks) and IVF "
                        "(chunks grouped into clusters) skip most of them: approximate, faster for large "
                        "collections.", choices=("flat", "hnsw", "ivf"))
    hnsw_m: int = setting(32, "HNSW: links per chunk in the neighbour graph (higher: more accurate, more memory).",
                          minimum=4, maximum=128, advanced=True)
    ivf_nlist: int = setting(0, "IVF: number of clusters the chunks are grouped into; 0 picks about 4·√chunks.",
                             minimum=0, maximum=65536, advanced=True)


class RetrieveSettings(Settings):
    mode: str = setting("hybrid", "How passages are found. hybrid combines meaning search (dense: chunks that say "
                        "the same thing in other words) with keyword search (BM25: chunks sharing the question's "
                        "words); dense or bm25 use one alone.", choices=("hybrid", "dense", "bm25"))
    top_k: int = setting(5, "Chunks handed to the prompt.", minimum=1, maximum=50)
    candidates: int = setting(50, "Chunks each search (keyword, meaning) proposes before they are combined and "
                              "filtered.",
                              minimum=1, maximum=1000, advanced=True)
    rrf_k: int = setting(60, "Reciprocal rank fusion (how the keyword and meaning rankings are combined into one): "
                         "larger flattens the difference between ranks.",
                         minimum=1, maximum=1000, advanced=True)
    dense_weight: float = setting(0.7, "Weight of the meaning ranking when combining (keyword search has weight 1); "
                                  "0.7 measured "
                                  "best on SQuAD-small (bench/RESULTS.md).",
                                  minimum=0.0, maximum=5.0, step=0.1, advanced=True)


class ThresholdSettings(Settings):
    min_dense_score: float = setting(0.2, "Drop chunks whose meaning is too far from the question (cosine "
                                     "similarity below this; 1 = same meaning).",
                                     minimum=-1.0, maximum=1.0, step=0.01)


class MMRSettings(Settings):
    lambda_mult: float = setting(0.7, "MMR (maximal marginal relevance) picks chunks that are relevant but not "
                                 "repetitive: 1 = relevance only, 0 = variety only.",
                                 minimum=0.0, maximum=1.0, step=0.05)


class DedupeSettings(Settings):
    # 3, measured on SQuAD-small (293 questions; max 1 / 2 / 3 / no limit): with 1000-character chunks (about one
    # per document) all equal; with 300-character chunks passage hit@5 0.850 / 0.915 / 0.922 / 0.922 and passage
    # MRR@10 0.760 / 0.787 / 0.790 / 0.790, document hit@5 0.962 / 0.959 / 0.959 / 0.959 (one question).
    max_per_source: int = setting(3, "Keep at most this many chunks from one document (0 = no limit): several "
                                  "chunks of the document a question is about, with room left for other "
                                  "documents.", minimum=0, maximum=50)
    near_duplicate: float = setting(0.95, "Drop a chunk that says almost the same as a better-ranked one (cosine "
                                    "similarity of their vectors at least this).",
                                    minimum=0.5, maximum=1.0, step=0.01)


class ParentChildSettings(Settings):
    # 250, chosen between 200 / 250 / 400 on the long-document sanity set and SQuAD-small (bench/RESULTS.md,
    # "Parent-child retrieval (issue #13)").
    child_size: int = setting(250, "Length of the small pieces that are searched (characters). Each chunk of the "
                              "split stage is cut into pieces this long; a question is matched against the pieces, "
                              "and the model reads the whole chunk around the best ones (its parent). Keep it well "
                              "below the split stage's chunk size, which becomes the parent's size (1500-2000 "
                              "holds a whole section). Changing it re-indexes the collection.",
                              minimum=50, maximum=2000, step=25)
    child_overlap: int = setting(25, "Characters repeated between neighbouring pieces of one parent.",
                                 minimum=0, maximum=500, step=5, advanced=True)

    def validate(self) -> None:
        if self.child_overlap >= self.child_size:
            raise SettingsError("child_overlap", f"{self.child_overlap} must be smaller than child_size "
                                f"({self.child_size}); try {self.child_size // 10}.")


class RerankSettings(Settings):
    model: str = setting(DEFAULT_RERANKER, "The second model that re-reads the question against each of the best "
                         "chunks. auto: the bundled sentence matcher (works offline, nothing to download) here, and "
                         "cross-encoder/ms-marco-MiniLM-L-6-v2 from the Hugging Face Hub on a Space. "
                         "bundled-minilm-sentences: the bundled MiniLM matches the question with each sentence of a "
                         "chunk and weighs in its keyword score (on our long-document set: the right passage first "
                         "for 86% of questions instead of 81%). The Hub cross-encoders read question and chunk "
                         "together (download once, with progress).", choices=RERANKER_CHOICES)
    top_n: int = setting(10, "How many of the best candidates the reranker reads and re-orders (more: better "
                         "chance to find the right chunk, but slower; on our sets nearly all of the gain came from "
                         "the first 10).", minimum=1, maximum=200)


class PromptSettings(Settings):
    template: str = setting(DEFAULT_PROMPT, "Prompt sent to the model; must contain {context} and {question}.")
    max_context_chars: int = setting(6000, "Context passages are cut to fit this budget.", minimum=200,
                                     maximum=200000, advanced=True)

    def validate(self) -> None:
        missing = [p for p in ("{context}", "{question}") if p not in self.template]
        if missing:
            raise SettingsError("template", f"must contain {' and '.join(missing)} (where the passages and the "
                                "question are inserted).")


FIXED_STAGES: dict[str, type[Settings]] = {
    "load": LoadSettings,
    "split": SplitSettings,
    "embed": EmbedSettings,
    "index": IndexSettings,
    "retrieve": RetrieveSettings,
    "prompt": PromptSettings,
    "generate": GenerationSettings,  # the app's one definition (core.generation), as Chat and Compare use
}
"""Stages that always exist, in this order (post-retrieval steps go between retrieve and prompt)."""

POST_STEPS: dict[str, type[Settings]] = {
    "threshold": ThresholdSettings,
    "mmr": MMRSettings,
    "dedupe": DedupeSettings,
    "rerank": RerankSettings,
    "parent_child": ParentChildSettings,
}
"""Optional, reorderable steps applied to the ranked candidates."""

STAGE_TITLES: dict[str, str] = {
    "load": "Load files",
    "split": "Split into chunks",
    "embed": "Embed (meaning vectors)",
    "index": "Vector index",
    "retrieve": "Search (keyword + meaning)",
    "threshold": "Minimum similarity",
    "mmr": "Variety among results (MMR)",
    "dedupe": "Limit per document, drop duplicates",
    "rerank": "Re-order with a second model (rerank)",
    "parent_child": "Search small pieces, read their section (parent-child)",
    "prompt": "Prompt",
    "generate": "Generate",
}
