"""Decoding text whose encoding nobody told us: the one definition the data loader and RAG ingestion share.

Users hand in CSVs exported from Excel in cp1252 or UTF-16, web pages in Latin-2 and notes in UTF-8 with or
without a byte-order mark. Both the fine-tuning data loader (engine) and document ingestion (rag) must read
them, and they must agree on what a file *is*; so the BOM table, the guess and the order of the attempts
live here once. What each caller does when a guess was needed (refuse, warn, replace characters) stays its
own policy.
"""

from __future__ import annotations

# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one.
BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

# Single-byte Latin code pages that charset-normalizer often picks for Latin-script text. They differ in a
# handful of letters; cp1252 is what Windows editors actually write (and what HTML5 means by "latin-1").
LATIN_COUSINS = frozenset(
    {"cp1250", "cp1252", "cp1254", "cp1257", "latin_1", "mac_roman", "mac_latin2"}
    | {f"iso8859_{n}" for n in (1, 2, 3, 4, 9, 10, 13, 14, 15, 16)}
)

# charset-normalizer reads this much: enough to be sure, and bounded however large the file is.
GUESS_SAMPLE = 1 << 20


def bom_encoding(data: bytes) -> tuple[str, int] | None:
    """The codec a byte-order mark announces and the mark's length, or None without a mark."""
    for bom, name in BOMS:
        if data.startswith(bom):
            return name, len(bom)
    return None


def reported_name(codec: str) -> str:
    """The name to show for a codec: the BOM is already stripped, so ``utf-8-sig`` is just UTF-8."""
    return codec.replace("-sig", "")


def guess_encoding(data: bytes) -> str | None:
    """charset-normalizer's guess from the first :data:`GUESS_SAMPLE` bytes, cp1252 for any Latin cousin.

    cp1252 wins only when the whole of ``data`` decodes with it, so a guess never loses characters that the
    cousin would have kept. None when charset-normalizer has no idea (binary data, mostly).
    """
    from charset_normalizer import from_bytes

    best = from_bytes(data[:GUESS_SAMPLE]).best()
    if best is None or not best.encoding:
        return None
    if best.encoding.lower() in LATIN_COUSINS:
        try:
            data.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            pass
    return best.encoding


def decode_bytes(data: bytes, hint: str | None = None) -> tuple[str, str]:
    """Decode text whose encoding is unknown, never failing; returns ``(text, encoding)``.

    Order matters: a byte-order mark is certain; then a declared ``hint`` (e.g. an HTML meta charset);
    strict UTF-8 is next because it almost never decodes non-UTF-8 text by accident; then the guess;
    cp1252 with replacement characters last because it decodes nearly anything.
    """
    bom = bom_encoding(data)
    if bom:
        codec, size = bom
        return data[size:].decode(codec, errors="replace"), reported_name(codec)
    for codec in ([hint] if hint else []) + ["utf-8"]:
        try:
            return data.decode(codec), codec
        except (UnicodeDecodeError, LookupError):
            continue
    guess = guess_encoding(data)
    if guess:
        try:
            return data.decode(guess), guess
        except (UnicodeDecodeError, LookupError):
            pass
    return data.decode("cp1252", errors="replace"), "cp1252"
