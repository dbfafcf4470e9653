"""OCR candidates on the shared scanned files: CPU seconds per page and word recall against verified text.

    python -m bench.ocr [--engines tesseract,rapidocr]

Not run in CI. Pages are rendered as the app renders them (``rag.ocr.render_pdf_page``), images read as they are;
each engine computes with one thread, so CPU seconds compare on a busy machine (wall seconds are printed too).
Recall: share of the reference's words (lower-cased, letters and digits, counted with repeats) that the OCR text
contains. References: the text layer where the file has one (pdf-with-ocr-text.pdf, whose layer is itself an
older OCR, and page 4 of multipage.pdf), else text typed from the page image by a person (below).

Engines: Tesseract 5 (Debian ``tesseract-ocr``, Apache-2.0), RapidOCR 1.4.4 (``rapidocr-onnxruntime``,
Apache-2.0, PP-OCRv4 models in its wheel; needs onnxruntime, opencv-python-headless, pyclipper, shapely, six,
installed with ``--no-deps`` to avoid opencv-python's libGL).
"""

from __future__ import annotations

import argparse
import io
import re
import time
from collections import Counter
from pathlib import Path

from rag import ocr

DOCS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "docs"

# Typed from the page images (the body text a reader sees; the drawing's caption included).
C02_22 = """THEY TIP-TOED ALONG. We went tip-toeing along a path amongst the trees back towards the end of the widow's
garden, stooping down so as the branches wouldn't scrape our heads. When we was passing by the kitchen I fell over
a root and made a noise. We scrouched down and laid still. Miss Watson's big nigger, named Jim, was setting in the
kitchen door; we could see him pretty clear, because there was a light behind him. He got up and stretched his neck
out about a minute, listening. Then he says, Who dah? He listened some more; then he come tip-toeing down and stood
right between us; we could a touched him, nearly. Well, likely it was minutes and minutes that there warn't a sound,
and we all there so close together. There was a place on my ankle that got to itching; but I dasn't scratch it; and
then my ear begun to itch; and next my back, right between my shoulders. Seemed like I'd die if I couldn't scratch.
Well, I've noticed that thing plenty of times since. If you are with the quality, or at a funeral, or trying to go
to sleep when you ain't sleepy if you are anywheres"""
SINGLE_TABLE = """Processing total chunks mean chunks per document (std) tables mean (std) Base 128 64,058 800.73
(484.11) N/A Base 256 32,051 400.64 (242.04) N/A Base 512 16,046 200.58 (121.01) N/A Chipper 20,843 260.57 (145.80)
96.20 (57.53)"""


def words(text: str) -> Counter:
    return Counter(re.findall(r"[a-z0-9]+", text.lower().replace("’", "'").replace("'", "")))


def recall(reference: str, text: str) -> float:
    ref, got = words(reference), words(text)
    return sum(min(n, got[w]) for w, n in ref.items()) / max(1, sum(ref.values()))


def _text_layer(path: Path, index: int) -> str:
    from pypdf import PdfReader

    return PdfReader(path).pages[index].extract_text() or ""


def pages() -> list[tuple[str, object, str | None]]:
    """(name, image, reference text or None) for every page and image of the candidate set."""
    import pypdfium2 as pdfium
    from PIL import Image

    out: list[tuple[str, object, str | None]] = []
    refs = {("c02-22.pdf", 0): C02_22, ("multipage.pdf", 0): C02_22, ("single_table.pdf", 0): SINGLE_TABLE}
    for rel in ("ocrmypdf/c02-22.pdf", "ocrmypdf/multipage.pdf", "unstructured/loremipsum-flat.pdf",
                "unstructured/single_table.pdf", "unstructured/pdf-with-ocr-text.pdf"):
        path = DOCS / rel
        data = path.read_bytes()
        for i in range(len(pdfium.PdfDocument(data))):
            ref = refs.get((path.name, i))
            if path.name == "pdf-with-ocr-text.pdf" or (path.name == "multipage.pdf" and i == 3):
                ref = _text_layer(path, i)
            out.append((f"{path.name} p{i + 1}", ocr.render_pdf_page(data, i, 40e6), ref))
    for path in sorted((DOCS / "unstructured-images").glob("*.[pj][np]g")):
        out.append((path.name, Image.open(io.BytesIO(path.read_bytes())), None))
    return out


def _tesseract(image) -> str:
    return ocr.read_image(image, 40e6).text


def _rapidocr():
    import numpy as np
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)

    def read(image) -> str:
        result, _ = engine(np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]))
        return "\n".join(line[1] for line in result or [])

    return read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr", description=__doc__)
    parser.add_argument("--engines", default="tesseract,rapidocr")
    args = parser.parse_args(argv)
    import os

    os.environ["OMP_THREAD_LIMIT"] = "1"
    items = pages()
    for name in args.engines.split(","):
        read = _tesseract if name == "tesseract" else _rapidocr()
        total_cpu, recalls = 0.0, []
        for label, image, ref in items:
            cpu, wall = time.process_time(), time.perf_counter()
            before = os.times()
            text = read(image)
            after = os.times()
            used = (time.process_time() - cpu) + (after.children_user - before.children_user)
            total_cpu += used
            score = recall(ref, text) if ref else None
            if score is not None:
                recalls.append(score)
            print(f"{name:10s} {label:32s} {image.size[0]}x{image.size[1]:<5d} cpu {used:6.2f} s  wall "
                  f"{time.perf_counter() - wall:6.2f} s  words {sum(words(text).values()):4d}  recall "
                  f"{'-' if score is None else f'{score:.3f}'}")
        print(f"{name}: {total_cpu / len(items):.2f} CPU s per page over {len(items)} pages; mean recall "
              f"{sum(recalls) / len(recalls):.3f} over {len(recalls)} pages with a reference")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
