"""core.text: the one encoding detection the data loader and RAG ingestion share."""

from __future__ import annotations

import charset_normalizer
import pytest

from core.text import GUESS_SAMPLE, bom_encoding, decode_bytes, guess_encoding

TEXT = "Café crème, naïve façade — Größe"


@pytest.mark.parametrize(("bom", "codec", "name"), [
    (b"\xef\xbb\xbf", "utf-8", "utf-8"),
    (b"\xff\xfe", "utf-16-le", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be", "utf-16-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be", "utf-32-be"),
])
def test_a_byte_order_mark_decides_and_is_stripped(bom: bytes, codec: str, name: str) -> None:
    assert decode_bytes(bom + TEXT.encode(codec)) == (TEXT, name)
    assert bom_encoding(bom + b"x") is not None and bom_encoding(b"x") is None


def test_hint_then_utf8_then_guess_then_cp1252() -> None:
    latin2 = "Zażółć gęślą jaźń, příliš žluťoučký kůň.".encode("iso8859_2")
    assert decode_bytes(latin2, hint="iso8859_2") == (latin2.decode("iso8859_2"), "iso8859_2")
    assert decode_bytes(TEXT.encode(), hint="no-such-codec") == (TEXT, "utf-8")
    assert decode_bytes((TEXT + "\n").encode("cp1252") * 5) == ((TEXT + "\n") * 5, "cp1252")
    text, codec = decode_bytes(b"\x81\x8d\x8f\x90\x9d" * 3)  # undefined in cp1252: replaced, never raised
    assert isinstance(text, str) and codec


def test_the_guess_reads_a_bounded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = charset_normalizer.from_bytes

    def spy(data: bytes, *args: object, **kwargs: object) -> object:
        seen.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(charset_normalizer, "from_bytes", spy)
    big = (TEXT + "\n").encode("cp1252") * (3 * GUESS_SAMPLE // len(TEXT))
    assert guess_encoding(big) == "cp1252"  # a Latin cousin becomes cp1252 when the whole text allows it
    assert seen == [GUESS_SAMPLE]
