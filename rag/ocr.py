"""Read text from page images offline (OCR): scanned PDF pages and image files.

Engine: Tesseract 5 (Apache-2.0; Debian's ``tesseract-ocr`` with its English model, ``packages.txt`` on a
Space), run as a program on each page image: no Python binding to compile, no download. Chosen over RapidOCR
on the shared scanned files: about 4x less CPU per page and words kept apart where RapidOCR glued them
(bench/ocr.py, bench/RESULTS.md "OCR (issue #13)"). PDF pages are rendered with pypdfium2 (Apache-2.0 or
BSD-3-Clause; PDFium itself BSD-3-Clause).

The program is looked up once per process, on the first page that needs it. Calls are serialised by locks
(PDFium is not thread-safe: :data:`PDFIUM_LOCK`; two OCR runs at once on a 2-core machine only slow each other
down). Tesseract computes with one thread unless the operator sets ``OMP_THREAD_LIMIT``: its OpenMP threads
spin-wait, and with the other core busy one page of loremipsum-flat.pdf took 198 s with 2 threads against 8-11 s
with 1 (measured 2026-12-02 on the 2-core development machine, load average 14-20); the same trap
``engine/cpu.py`` avoids.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: A PDF page is rendered so that its longer side has about this many pixels (about 180 dots per inch on a
#: Letter page), at most MAX_RENDER_DPI; a smaller image is enlarged to it (up to 3x): Tesseract misreads text
#: whose letters are under ~20 pixels high.
RENDER_LONG_SIDE = 2000
MAX_RENDER_DPI = 300
MAX_UPSCALE = 3
#: Seconds one page may take before it is reported as unreadable.
PAGE_TIMEOUT_S = 300
LANGUAGE = "eng"

_LOCK = threading.Lock()  # one Tesseract run at a time
PDFIUM_LOCK = threading.Lock()
"""Held around every use of pypdfium2 in this process (PDFium is not thread-safe): OCR's page rendering here and
a citation's page image (``rag.pages``). Apart from the Tesseract lock, so a page view never waits for an OCR run."""
_PROGRAM: list[str] = []  # the tesseract path, once found


@dataclass(frozen=True)
class OcrText:
    """The text OCR read from one image, in reading order, and its mean line confidence (0-1; None if none)."""

    text: str
    confidence: float | None
    lines: int


class OcrError(RuntimeError):
    """OCR could not read an image; the message says why, for the person who uploaded it."""


def _threads() -> str:
    """Threads for Tesseract: the operator's OMP_THREAD_LIMIT, else one (see the module's note)."""
    env = os.environ.get("OMP_THREAD_LIMIT", "")
    return env if env.isdigit() and int(env) > 0 else "1"


def _program() -> str:
    if not _PROGRAM:
        found = shutil.which("tesseract")
        if not found:
            raise OcrError("the text-recognition program (Tesseract) is not installed on this server")
        _PROGRAM.append(found)
    return _PROGRAM[0]


def parse_tsv(tsv: str) -> OcrText:
    """Tesseract's TSV: words grouped into lines and paragraphs; confidence = mean over lines of word confidence."""
    lines: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    for row in tsv.splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or cells[0] != "5" or not cells[11].strip():
            continue
        lines.setdefault((cells[2], cells[3], cells[4]), []).append((cells[11].strip(), float(cells[10])))
    text_lines, confidences, last_par = [], [], None
    for (block, par, _), words in lines.items():
        if last_par is not None and (block, par) != last_par:
            text_lines.append("")
        last_par = (block, par)
        text_lines.append(" ".join(w for w, _ in words))
        confidences.append(sum(max(0.0, c) for _, c in words) / len(words) / 100)
    confidence = round(sum(confidences) / len(confidences), 4) if confidences else None
    return OcrText("\n".join(text_lines).strip(), confidence, len(confidences))


def _sized(image: Any, max_pixels: float) -> Any:
    """An RGB or greyscale copy, enlarged when small (see RENDER_LONG_SIDE), never above ``max_pixels``."""
    from PIL import Image

    image = image.convert("L" if image.mode in ("1", "L", "LA", "I;16", "I") else "RGB")
    factor = min(MAX_UPSCALE, RENDER_LONG_SIDE / max(image.size))
    if max_pixels:
        factor = min(factor, (max_pixels / (image.width * image.height)) ** 0.5)
    if factor > 1.2:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
    return image


def read_image(image: Any, max_pixels: float = 0) -> OcrText:
    """OCR one PIL image (any mode). Raises OcrError when the program is missing, fails or runs too long."""
    buffer = io.BytesIO()
    _sized(image, max_pixels).save(buffer, "PNG")
    command = [_program(), "stdin", "stdout", "-l", LANGUAGE, "--psm", "3", "tsv"]
    env = {"PATH": os.environ.get("PATH", ""), "OMP_THREAD_LIMIT": _threads()}
    with _LOCK:
        try:
            done = subprocess.run(command, input=buffer.getvalue(), capture_output=True, timeout=PAGE_TIMEOUT_S,
                                  env=env, check=False)
        except subprocess.TimeoutExpired:
            raise OcrError(f"text recognition took longer than {PAGE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OcrError(f"text recognition failed ({detail[-1] if detail else f'exit code {done.returncode}'})")
    return parse_tsv(done.stdout.decode("utf-8", "replace"))


def render_scale(width_pt: float, height_pt: float, max_pixels: float) -> float:
    """PDF points to pixels: the long side near RENDER_LONG_SIDE, at most MAX_RENDER_DPI, within max_pixels."""
    scale = min(RENDER_LONG_SIDE / max(width_pt, height_pt, 1.0), MAX_RENDER_DPI / 72)
    area = max(width_pt * height_pt, 1.0) * scale * scale
    if max_pixels and area > max_pixels:
        scale *= (max_pixels / area) ** 0.5
    return scale


def render_pdf_page(data: bytes, index: int, max_pixels: float, password: str = "") -> Any:
    """Page ``index`` (0-based) of a PDF as a greyscale PIL image, sized for OCR."""
    import pypdfium2 as pdfium

    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(data, password=password or None)
        try:
            page = pdf[index]
            width, height = page.get_size()
            image = page.render(scale=render_scale(width, height, max_pixels), grayscale=True).to_pil()
            page.close()
        finally:
            pdf.close()
    return image


def image_frames(data: bytes) -> Iterator[Any]:
    """The frames of an image file (a multi-page TIFF has several), each not yet decoded."""
    from PIL import Image, ImageSequence

    with Image.open(io.BytesIO(data)) as image:
        yield from ImageSequence.Iterator(image)


def frame_count(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return int(getattr(image, "n_frames", 1) or 1)
