"""The rerank step's choices, apart from the models (``rag.rerankers``), so the settings (``rag.stages``) can name
them without importing what the rerankers import (embedders, sentence splitting, chunking, the stages again)."""

BUNDLED_RERANKER = "bundled-minilm-sentences"
HUB_RERANKERS = ("cross-encoder/ms-marco-MiniLM-L-6-v2", "BAAI/bge-reranker-base")
AUTO_RERANKER = "auto"
RERANKER_CHOICES = (AUTO_RERANKER, BUNDLED_RERANKER, *HUB_RERANKERS)
DEFAULT_RERANKER = AUTO_RERANKER
SPACE_RERANKER = HUB_RERANKERS[0]
