"""Every RAG pipeline stage's parameters, declared once with :func:`core.settings.setting`.

The pipeline spec stores these as plain dicts, the CLI and the eval read them, and the UI builds
each stage card's form from :func:`core.settings.describe` — so a default lives only here.
"""

from __future__ import annotations

from core.generation import GenerationSettings
from core.settings import Settings, SettingsError, setting

DEFAULT_PROMPT = (
    "Answer the question using only the numbered context passages below. Cite the passages you use "
    "with their numbers in square brackets, like [1] or [2][3]. If the context does not contain the "
    "answer, say you do not know.\n\n"
    "Context:\n{context}\n\n"
    "Question: {question}\n"
    "Answer:"
)


class LoadSettings(Settings):
    # No PDF password here: a password goes with one build request only and is never part of a saved or
    # exported pipeline (see ``rag.pipeline.RETIRED_PARAMS``).
    max_file_mb: float = setting(100.0, "Files larger than this are refused rather than read.", minimum=1,
                                 maximum=2000, advanced=True)


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
    model: str = setting("all-MiniLM-L6-v2", "Sentence-transformers model that turns chunks into vectors. The "
                         "bundled MiniLM works offline; the others download from the Hugging Face Hub.",
                         choices=("all-MiniLM-L6-v2", "BAAI/bge-small-en-v1.5", "intfloat/e5-small-v2"))
    batch_size: int = setting(64, "Chunks embedded per batch (higher is faster on a GPU, uses more memory).",
                              minimum=1, maximum=1024, advanced=True)


class IndexSettings(Settings):
    kind: str = setting("flat", "Vector index: flat is exact (best below ~100k chunks); HNSW and IVF are "
                        "approximate and faster for large collections.", choices=("flat", "hnsw", "ivf"))
    hnsw_m: int = setting(32, "HNSW graph degree (higher: more accurate, more memory).", minimum=4, maximum=128,
                          advanced=True)
    ivf_nlist: int = setting(0, "IVF cluster count; 0 picks about 4·√chunks.", minimum=0, maximum=65536,
                             advanced=True)


class RetrieveSettings(Settings):
    mode: str = setting("hybrid", "hybrid fuses meaning (dense vectors) and keywords (BM25) by reciprocal rank; "
                        "dense or bm25 use one alone.", choices=("hybrid", "dense", "bm25"))
    top_k: int = setting(5, "Chunks handed to the prompt.", minimum=1, maximum=50)
    candidates: int = setting(50, "Chunks each retriever proposes before fusion and post-processing.",
                              minimum=1, maximum=1000, advanced=True)
    rrf_k: int = setting(60, "Reciprocal-rank-fusion constant: larger flattens the difference between ranks.",
                         minimum=1, maximum=1000, advanced=True)
    dense_weight: float = setting(0.7, "Weight of the dense ranking in the fusion (BM25 has weight 1); 0.7 measured "
                                  "best on SQuAD-small (bench/RESULTS.md).",
                                  minimum=0.0, maximum=5.0, step=0.1, advanced=True)


class ThresholdSettings(Settings):
    min_dense_score: float = setting(0.2, "Drop chunks whose cosine similarity to the question is below this.",
                                     minimum=-1.0, maximum=1.0, step=0.01)


class MMRSettings(Settings):
    lambda_mult: float = setting(0.7, "1 = pure relevance, 0 = pure diversity among the chosen chunks.",
                                 minimum=0.0, maximum=1.0, step=0.05)


class DedupeSettings(Settings):
    max_per_source: int = setting(1, "Keep at most this many chunks from one document (0 = no limit); frees "
                                  "room for other documents.", minimum=0, maximum=50)
    near_duplicate: float = setting(0.95, "Drop a chunk whose vector is this similar to a better-ranked one.",
                                    minimum=0.5, maximum=1.0, step=0.01)


class RerankSettings(Settings):
    model: str = setting("cross-encoder/ms-marco-MiniLM-L-6-v2", "Cross-encoder that re-scores question/chunk "
                         "pairs (downloads from the Hub; slower, often more precise).",
                         choices=("cross-encoder/ms-marco-MiniLM-L-6-v2", "BAAI/bge-reranker-base"))
    top_n: int = setting(20, "How many fused candidates the reranker re-scores.", minimum=1, maximum=200)


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
}
"""Optional, reorderable steps applied to the ranked candidates."""

STAGE_TITLES: dict[str, str] = {
    "load": "Load files",
    "split": "Split into chunks",
    "embed": "Embed",
    "index": "Index",
    "retrieve": "Retrieve",
    "threshold": "Score threshold",
    "mmr": "MMR diversity",
    "dedupe": "Dedupe",
    "rerank": "Rerank (cross-encoder)",
    "prompt": "Prompt",
    "generate": "Generate",
}
