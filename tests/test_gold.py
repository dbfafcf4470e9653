"""One definition of a retrieval hit (rag.gold): hand-made chunks, no model."""

from __future__ import annotations

import pytest

from rag.chunking import Chunk
from rag.gold import Gold, chunk_id, find_phrase, gold_chunk_ids, hit_rank, matches, normalise, retrieval_metrics

TEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
        "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.")


def chunks_of(text: str, size: int, overlap: int = 0, source: str = "normans.txt", page: int | None = None):
    """Fixed-width windows on word boundaries: a stand-in for any splitter."""
    tokens, out, start = text.split(), [], 0
    while start < len(tokens):
        out.append(Chunk(" ".join(tokens[start:start + size]), source, len(out), page))
        start += size - overlap
    return out


def test_chunk_id_and_normalising():
    assert chunk_id(Chunk("x", "a.pdf", 3)) == "a.pdf#3"
    assert normalise("  Rollo's   CONTINGENTS, (Danes)! ") == "rollo s contingents danes"
    assert TEXT[slice(*find_phrase(TEXT, "normandy a region"))] == "Normandy, a region"
    assert find_phrase(TEXT, "Norman") is None  # word boundaries: "Normans" is another word


def test_a_verbatim_quote_matches_only_its_chunk():
    chunks = chunks_of(TEXT, 12)
    gold = Gold("normans.txt", "Denmark, Iceland and Norway")
    assert [c.ordinal for c in chunks if matches(c, gold)] == [2]
    assert not matches(Chunk(chunks[2].text, "other.txt", 2), gold)  # another document never matches
    assert gold_chunk_ids(chunks, gold) == ["normans.txt#2"]


def test_a_quote_split_across_two_chunks_matches_where_most_of_it_is():
    chunks = chunks_of(TEXT, 10)  # "... in the 10th and | 11th centuries gave their name to Normandy ..."
    gold = Gold("normans.txt", "in the 10th and 11th centuries gave their name to Normandy")
    assert not any(gold.quote.lower() in c.text.lower() for c in chunks)  # no chunk holds it whole
    assert [c.ordinal for c in chunks if matches(c, gold)] == [1]  # 5 of its 6 content words are here
    assert [c.ordinal for c in chunks if matches(c, gold, min_overlap=0.15)] == [0, 1]  # "10th" is in 0


def test_stopwords_alone_never_make_a_passage_match():
    gold = Gold("normans.txt", "the people of the north in the 10th and 11th centuries")
    other = Chunk("The people of the south and the north lived in the hills.", "normans.txt", 0)
    assert not matches(other, gold)


def test_page_mismatch_and_empty_quote():
    gold = Gold("report.pdf", "Denmark, Iceland and Norway", page=2)
    assert matches(Chunk(TEXT, "report.pdf", 0, page=2), gold)
    assert not matches(Chunk(TEXT, "report.pdf", 0, page=3), gold)
    assert matches(Chunk(TEXT, "report.pdf", 0, page=None), gold)  # a chunk without pages cannot disagree
    empty = Gold("report.pdf", "  ")
    chunk = Chunk(TEXT, "report.pdf", 0)
    assert not matches(chunk, empty)
    assert hit_rank([chunk], empty, "document") == 1 and hit_rank([chunk], empty, "passage") is None


def test_re_chunking_keeps_the_question_set_valid():
    golds = [Gold("normans.txt", "Denmark, Iceland and Norway", chunk_id="normans.txt#2"),
             Gold("normans.txt", "a region in France")]
    for size, overlap in ((8, 0), (12, 4), (20, 5), (60, 0)):  # new sizes, overlap windows, one parent chunk
        chunks = chunks_of(TEXT, size, overlap)
        for gold in golds:
            assert gold_chunk_ids(chunks, gold), (size, overlap, gold.quote)


def test_hit_rank_by_level():
    chunks = [Chunk("Something about Iceland.", "other.txt", 0), *chunks_of(TEXT, 12)]
    gold = Gold("normans.txt", "Denmark, Iceland and Norway")
    assert hit_rank(chunks, gold, "document") == 2
    assert hit_rank(chunks, gold, "passage") == 4
    assert hit_rank(chunks[:3], gold, "passage") is None
    with pytest.raises(ValueError, match="passage"):
        hit_rank(chunks, gold, "sentence")


def test_metrics_on_hand_made_ranks():
    metrics = retrieval_metrics([1, 2, None, 11, 5])
    assert metrics == pytest.approx({"hit_at_1": 0.2, "hit_at_5": 0.6, "hit_at_10": 0.6,
                                     "mrr_at_10": (1 + 0.5 + 0.2) / 5})
    assert retrieval_metrics([None])["mrr_at_10"] == 0.0
    with pytest.raises(ValueError):
        retrieval_metrics([])
