"""How many examples the maximum length cuts, in one sentence the Data and Train tabs both show.

Plain text is trained in windows of ``max_length`` tokens (nothing is lost), so only chat examples count.
"""

from __future__ import annotations


def count_cut(lengths: list[int], max_length: int) -> int:
    """Examples longer than ``max_length`` tokens (their end is cut off in training)."""
    return sum(1 for n in lengths if n > max_length)


def cut_line(lengths: list[int], max_length: int) -> str:
    """``"12 of 41 examples are longer than 128 tokens and will be cut: ..."``, or that all fit."""
    n_cut, total = count_cut(lengths, max_length), len(lengths)
    if not total:
        return ""
    if not n_cut:
        return f"All {total} examples fit in max length {max_length} tokens: nothing is cut."
    longest = max(lengths)
    return (f"⚠️ {n_cut} of {total} examples are longer than {max_length} tokens and will be cut (the end of the "
            f"answer is lost): raise *Max length* in the Train tab (the longest has {longest} tokens), or shorten "
            "those examples.")
