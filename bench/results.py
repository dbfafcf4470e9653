"""bench/RESULTS.md, one section per benchmark: a rerun replaces its own section and leaves the others alone."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, block: str, path: Path = RESULTS) -> None:
    """Put ``block`` (starting with ``heading``) where that section is, or at the end when it is new."""
    text = path.read_text(encoding="utf-8")
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + block + (text[end + 1:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")
