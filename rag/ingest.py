"""Turn a user's files into text sections that remember where they came from.

Each loader returns :class:`Section` objects (text plus source file, page or section name) so that
every chunk cut later can be cited precisely. A file that cannot be used never raises out of
:func:`load_file`: it comes back as a :class:`Refusal` whose message says what is wrong, in which
file, and how to fix it, so one bad file never stops the rest of a batch.

Libraries: pypdf (BSD) for PDF — no AGPL PDF library; python-docx, python-pptx, openpyxl for
Office files; BeautifulSoup for HTML/EPUB; striprtf for RTF; core.text (charset-normalizer) for encodings;
the standard library's ``email`` for .eml and python-oxmsg (MIT) for Outlook .msg; scanned PDF pages and images
(PNG, JPEG, TIFF) through :mod:`rag.ocr` (Tesseract, Apache-2.0; pypdfium2 renders the pages).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from xml.etree import ElementTree

from core.text import bom_encoding, decode_bytes

if TYPE_CHECKING:
    from rag.stages import LoadSettings

logging.getLogger("pypdf").setLevel(logging.ERROR)

_T = TypeVar("_T")
_R = TypeVar("_R")


class RefusalReason(StrEnum):
    """Why a file was not indexed; stable codes the UI and tests can rely on."""

    UNSUPPORTED = "unsupported_type"
    ENCRYPTED = "encrypted"
    NO_TEXT_LAYER = "no_text_layer"
    BROKEN = "broken_file"
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"


@dataclass(frozen=True)
class Section:
    """A piece of a document's text with its location (page is 1-based; section is a heading/sheet/slide)."""

    text: str
    source: str
    page: int | None = None
    section: str | None = None
    ocr_confidence: float | None = None  # mean line confidence (0-1) where OCR read the page; None: its own text

    def to_dict(self) -> dict:
        data = {"text": self.text, "source": self.source, "page": self.page, "section": self.section}
        if self.ocr_confidence is not None:
            data["ocr_confidence"] = self.ocr_confidence
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Section:
        return cls(text=data["text"], source=data["source"], page=data.get("page"), section=data.get("section"),
                   ocr_confidence=data.get("ocr_confidence"))


@dataclass(frozen=True)
class LoadedDocument:
    """A file that yielded text: its name, content hash and sections."""

    source: str
    sha256: str
    sections: list[Section]
    encoding: str | None = None
    title: str | None = None
    notes: list[str] = field(default_factory=list)
    #: The file a PDF was read from (:func:`load_file`), so the index can keep its bytes and a citation can show
    #: the rendered page (``rag.pages``); None for other kinds, bytes loaded without a file, and encrypted PDFs
    #: opened with a password (their kept copy could not be rendered without it, and a password is never stored).
    original: Path | None = field(default=None, repr=False, compare=False)

    @property
    def n_chars(self) -> int:
        return sum(len(s.text) for s in self.sections)


@dataclass(frozen=True)
class Refusal:
    """A file that was not indexed, with a message written for the person who uploaded it."""

    source: str
    reason: RefusalReason
    message: str


class _Refuse(Exception):
    """Raised inside loaders; converted to a :class:`Refusal` by :func:`load_file`."""

    def __init__(self, reason: RefusalReason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------- encodings
# Detection itself is core.text's (shared with the fine-tuning data loader); only the HTML meta charset,
# which a page declares about itself, is ingestion's own.

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.IGNORECASE)


def _html_charset(data: bytes) -> str | None:
    """The charset a page declares in its first 4 KiB: a hint that beats guessing, though not a BOM."""
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii").lower() if match else None


# ---------------------------------------------------------------- loaders


def _clean(text: str) -> str:
    """Normalise whitespace without destroying paragraph breaks (splitters rely on them)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t\f\v\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _load_text(data: bytes, source: str) -> tuple[list[Section], str]:
    text, enc = decode_bytes(data)
    return [Section(_clean(text), source)], enc


def _load_markdown(data: bytes, source: str) -> tuple[list[Section], str]:
    text, enc = decode_bytes(data)
    # Keep line structure: the markdown-header splitter needs the '#' lines intact.
    return [Section(text.replace("\r\n", "\n").strip(), source)], enc


def _html_to_sections(html: str, source: str, section: str | None = None) -> tuple[list[Section], str | None]:
    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        # XHTML (EPUB chapters, some web pages) is parsed as HTML on purpose: that parser forgives errors.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(html, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "svg", "head"]):
        tag.decompose()
    text = _clean(soup.get_text("\n"))
    return [Section(text, source, section=section or title)], title


def _load_html(data: bytes, source: str) -> tuple[list[Section], str]:
    text, enc = decode_bytes(data, hint=None if bom_encoding(data) else _html_charset(data))
    sections, _ = _html_to_sections(text, source)
    return sections, enc


# ---------------------------------------------------------------- scanned pages and images (OCR)
# Per page: the text layer when it has text, OCR (rag.ocr) when not. A page OCR cannot read is named in the
# document's notes and the rest of the file kept; only a file where no page yields text is refused.

PageCallback = Callable[[int, int, str, float | None], None]
"""Called after each page: (page number, pages in the file, "text" or "ocr", OCR confidence or None)."""

_MIN_LAYER_CHARS = 16  # letters and digits a text layer needs to count (scans often carry a few stray glyphs)
_WHERE = "the Load files card (RAG tab, Advanced pipeline)"


def _label(name: str) -> str:
    from core.settings import describe
    from rag.stages import LoadSettings

    return next(info.label for info in describe(LoadSettings) if info.name == name)


def _page_list(numbers: list[int]) -> str:
    """[2, 3, 4, 7] -> 'pages 2-4, 7'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    return ("pages " if len(numbers) > 1 else "page ") + text


@dataclass
class _Reading:
    """One file's OCR budget and report: its settings, the page callback, and what was skipped or failed."""

    source: str
    load: LoadSettings = None  # type: ignore[assignment]  # None: LoadSettings' defaults
    on_page: PageCallback | None = None
    notes: list[str] = field(default_factory=list)
    ocr_done: int = 0
    over_limit: list[int] = field(default_factory=list)
    not_tried: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.load is None:
            from rag.stages import LoadSettings

            self.load = LoadSettings()

    @property
    def max_pixels(self) -> float:
        return self.load.ocr_max_megapixels * 1e6

    def report(self, number: int, pages: int, method: str, confidence: float | None = None) -> None:
        if self.on_page is not None:
            self.on_page(number, pages, method, confidence)

    def ocr(self, number: int, pages: int, image: Callable[[], object], *, label: str = "page") -> Section | None:
        """OCR one page (``image`` renders it) within the limits; None, with the reason noted, when it gives no text."""
        from rag import ocr

        if not self.load.ocr:
            self.not_tried.append(number)
            return None
        if self.ocr_done >= self.load.ocr_max_pages:
            self.over_limit.append(number)
            return None
        self.ocr_done += 1
        try:
            result = ocr.read_image(image(), self.max_pixels)
        except Exception as exc:  # a broken image, a failed or missing engine: this page only
            self.failures.append(str(exc) if isinstance(exc, ocr.OcrError) else type(exc).__name__)
            self.notes.append(f"{label} {number} could not be read: {self.failures[-1]}.")
            return None
        self.report(number, pages, "ocr", result.confidence)
        if not result.text.strip():
            self.failures.append("OCR found no text on it")
            self.notes.append(f"{label} {number} could not be read: OCR found no text on it (a blank or "
                              "picture-only page?).")
            return None
        return Section(_clean(result.text), self.source, page=number, ocr_confidence=result.confidence)

    def finish(self, what: str = "scanned") -> None:
        """Notes for the pages skipped by the settings, saying which setting reads them."""
        if self.over_limit:
            self.notes.append(
                f"{_page_list(self.over_limit)} ({len(self.over_limit)} {what} page(s)) not read: OCR reads at most "
                f"{self.load.ocr_max_pages} page(s) per file. To read them, raise '{_label('ocr_max_pages')}' in "
                f"{_WHERE} and build again.")
        if self.not_tried:
            self.notes.append(f"{_page_list(self.not_tried)} ({what}) skipped: '{_label('ocr')}' is off in {_WHERE}.")

    def refuse(self, pages: int, *, image: bool = False) -> _Refuse:
        """The refusal of a file where no page gave text."""
        turn_on = f"Turn on '{_label('ocr')}' (text recognition, OCR) in {_WHERE}"
        if not self.load.ocr and image:
            return _Refuse(RefusalReason.NO_TEXT_LAYER, f"'{self.source}' is an image: its text can only be read "
                           f"by text recognition (OCR), which is off. {turn_on} and build again.")
        if not self.load.ocr:
            return _Refuse(RefusalReason.NO_TEXT_LAYER, f"'{self.source}' has {pages} page(s) but no text layer: "
                           f"it is a scanned or image-only PDF. {turn_on}, or make it searchable in a PDF or "
                           "scanner program ('Recognize text') and upload the result.")
        why = f" ({self.failures[0]})" if self.failures and "no text" not in self.failures[0] else ""
        where = "in this image" if image else f"on its {pages} page(s), which have no text layer"
        return _Refuse(RefusalReason.NO_TEXT_LAYER, f"'{self.source}': OCR (text recognition) found no text {where}"
                       f"{why}. If it does show text, upload a sharper scan (300 dots per inch, upright pages).")


def _open_pdf(data: bytes, source: str, password: str) -> list:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(password or ""):
            raise _Refuse(
                RefusalReason.ENCRYPTED,
                f"'{source}' is password-protected. Type its password in the 'PDF password' box, or save an "
                "unlocked copy (open it, then print it to PDF) and upload that.",
            )
        return list(reader.pages)
    except _Refuse:
        raise
    except FileNotDecryptedError:
        raise _Refuse(RefusalReason.ENCRYPTED, f"'{source}' is encrypted and could not be opened.") from None
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise _Refuse(
            RefusalReason.BROKEN,
            f"'{source}' is not a readable PDF ({type(exc).__name__}: {exc}). Re-export it from the program "
            "that made it, then upload it again.",
        ) from None


def _layer_text(page: object) -> str:
    try:
        return _clean(page.extract_text() or "")
    except Exception:
        return ""


def _load_pdf(data: bytes, source: str, password: str = "",
              reading: _Reading | None = None) -> tuple[list[Section], str | None]:
    from rag.ocr import render_pdf_page

    pages = _open_pdf(data, source, password)
    reading = reading or _Reading(source)
    sections = []
    for number, page in enumerate(pages, start=1):
        text = _layer_text(page)
        if sum(c.isalnum() for c in text) >= _MIN_LAYER_CHARS:
            sections.append(Section(text, source, page=number))
            reading.report(number, len(pages), "text")
            continue
        scanned = reading.ocr(number, len(pages), lambda i=number - 1: render_pdf_page(
            data, i, reading.max_pixels, password))
        if scanned is None and text:
            sections.append(Section(text, source, page=number))  # the few characters of its layer beat nothing
        elif scanned is not None:
            sections.append(scanned)
    reading.finish()
    if not sections:
        raise reading.refuse(len(pages))
    return sections, None


def _load_image(data: bytes, source: str, reading: _Reading | None = None) -> tuple[list[Section], str | None]:
    """An image read by OCR; each frame of a multi-page TIFF is a page."""
    from rag.ocr import frame_count, image_frames

    reading = reading or _Reading(source)
    pages = frame_count(data)
    if not reading.load.ocr:
        raise reading.refuse(pages, image=True)
    sections = []
    for number, frame in enumerate(image_frames(data), start=1):
        width, height = frame.size
        if width * height > reading.max_pixels:
            reading.notes.append(
                f"page {number} skipped: it is {width}x{height} pixels ({width * height / 1e6:.0f} million), above "
                f"'{_label('ocr_max_megapixels')}' ({reading.load.ocr_max_megapixels:g}) in {_WHERE}. Raise it, or "
                "upload a smaller image.")
            continue
        frame.load()
        section = reading.ocr(number, pages, lambda f=frame: f.copy())
        if section is not None:
            sections.append(section)
    reading.finish("image")
    if not sections:
        if reading.notes and not reading.failures:
            raise _Refuse(RefusalReason.TOO_LARGE, f"'{source}' was not read: {reading.notes[0]}")
        raise reading.refuse(pages, image=True)
    return sections, None


def _load_docx(data: bytes, source: str) -> tuple[list[Section], str | None]:
    import docx

    document = docx.Document(io.BytesIO(data))
    sections: list[Section] = []
    heading: str | None = None
    buffer: list[str] = []

    def flush() -> None:
        text = _clean("\n".join(buffer))
        if text:
            sections.append(Section(text, source, section=heading))
        buffer.clear()

    for block in document.iter_inner_content():
        if isinstance(block, docx.table.Table):
            buffer.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
            continue
        style = (block.style.name or "") if block.style is not None else ""
        if style.lower().startswith(("heading", "title")) and block.text.strip():
            flush()
            heading = block.text.strip()
        buffer.append(block.text)
    flush()
    for part in (document.sections[0].header, document.sections[0].footer) if document.sections else ():
        extra = _clean("\n".join(p.text for p in part.paragraphs))
        if extra:
            sections.append(Section(extra, source, section="header/footer"))
    return sections, None


def _load_pptx(data: bytes, source: str) -> tuple[list[Section], str | None]:
    from pptx import Presentation

    sections = []
    for number, slide in enumerate(Presentation(io.BytesIO(data)).slides, start=1):
        lines: list[str] = []
        for shape in slide.shapes:
            if shape.has_text_frame:
                lines.append(shape.text_frame.text)
            if getattr(shape, "has_table", False) and shape.has_table:
                lines.extend(" | ".join(c.text for c in row.cells) for row in shape.table.rows)
        if slide.has_notes_slide:
            lines.append(slide.notes_slide.notes_text_frame.text)
        text = _clean("\n".join(lines))
        if text:
            sections.append(Section(text, source, page=number, section=f"slide {number}"))
    return sections, None


def _rows_to_text(rows: Iterable[list[str]]) -> str:
    """Rows as 'header: value' lines so each chunk of a table stays self-describing."""
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    if not body:
        return " | ".join(header)
    lines = []
    for row in body:
        cells = enumerate(zip(header, row, strict=False))
        pairs = [f"{h.strip() or f'column {i + 1}'}: {v.strip()}" for i, (h, v) in cells if v]
        lines.append("; ".join(pairs))
    return "\n".join(lines)


def _load_csv(data: bytes, source: str) -> tuple[list[Section], str]:
    text, enc = decode_bytes(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    return [Section(_rows_to_text(rows), source)], enc


def _load_xlsx(data: bytes, source: str) -> tuple[list[Section], str | None]:
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    sections = []
    for sheet in book.worksheets:
        rows = [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
        text = _rows_to_text(rows)
        if text.strip():
            sections.append(Section(text, source, section=f"sheet {sheet.title}"))
    book.close()
    return sections, None


def _load_rtf(data: bytes, source: str) -> tuple[list[Section], str]:
    from striprtf.striprtf import rtf_to_text

    raw, enc = decode_bytes(data)
    return [Section(_clean(rtf_to_text(raw, errors="ignore")), source)], enc


def _load_odt(data: bytes, source: str) -> tuple[list[Section], str | None]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        root = ElementTree.fromstring(archive.read("content.xml"))
    text_ns = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
    lines = ["".join(el.itertext()) for el in root.iter() if el.tag in (f"{{{text_ns}}}p", f"{{{text_ns}}}h")]
    return [Section(_clean("\n".join(lines)), source)], None


def _load_epub(data: bytes, source: str) -> tuple[list[Section], str | None]:
    """EPUB is a zip of XHTML chapters listed in the OPF spine; read them in reading order."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        container = ElementTree.fromstring(archive.read("META-INF/container.xml"))
        opf_path = next(el.attrib["full-path"] for el in container.iter() if el.tag.endswith("rootfile"))
        opf = ElementTree.fromstring(archive.read(opf_path))
        base = opf_path.rsplit("/", 1)[0] + "/" if "/" in opf_path else ""
        manifest = {el.attrib["id"]: el.attrib["href"] for el in opf.iter() if el.tag.endswith("}item")}
        spine = [el.attrib["idref"] for el in opf.iter() if el.tag.endswith("}itemref")]
        sections: list[Section] = []
        for number, idref in enumerate(spine, start=1):
            href = manifest.get(idref)
            if not href:
                continue
            html, _ = decode_bytes(archive.read(base + href))
            for sec in _html_to_sections(html, source, section=f"chapter {number}")[0]:
                if sec.text:
                    sections.append(sec)
    return sections, None


# ---------------------------------------------------------------- e-mail
# One section per message: the header lines people search by (subject, from, to, date), then the body (the
# plain-text part, else the HTML part as text), then the attachments by name. Attachments are listed, not read:
# drop them as files of their own to index them.

_ENCRYPTED_MAIL = ("multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime")


def _mail_text(source: str, headers: dict[str, str], body: str, attachments: list[str]) -> list[Section]:
    lines = [f"{name}: {value}" for name, value in headers.items() if value and str(value).strip()]
    text = "\n".join(lines)
    if body.strip():
        text += "\n\n" + body
    if attachments:
        text += "\n\nAttachments: " + ", ".join(attachments)
    if not (body.strip() or attachments or headers.get("Subject")):
        return []
    return [Section(_clean(text), source, section=headers.get("Subject") or None)]


def _refuse_encrypted_mail(source: str) -> None:
    raise _Refuse(RefusalReason.ENCRYPTED, f"'{source}' is an encrypted e-mail (S/MIME or PGP): its text cannot be "
                  "read without the recipient's key. Open it in your mail program, save or print the decrypted "
                  "message (e.g. as PDF), and upload that.")


def _eml_part_text(part: object) -> str:
    """A MIME part's text; an unknown or broken charset falls back to core.text's detection."""
    from email.message import EmailMessage

    assert isinstance(part, EmailMessage)
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, ValueError, AssertionError):
        raw = part.get_payload(decode=True) or b""
        content, _ = decode_bytes(raw if isinstance(raw, bytes) else str(raw).encode())
    return content if isinstance(content, str) else ""


def _load_eml(data: bytes, source: str) -> tuple[list[Section], str | None]:
    import email
    from email import policy

    message = email.message_from_bytes(data, policy=policy.default)
    if message.get_content_type() in _ENCRYPTED_MAIL:
        _refuse_encrypted_mail(source)
    headers = {name: str(message.get(name, "") or "") for name in ("Subject", "From", "To", "Date")}
    part = message.get_body(preferencelist=("plain", "html"))
    body = ""
    if part is not None:
        body = _eml_part_text(part)
        if part.get_content_type() == "text/html":
            body = _html_to_sections(body, source)[0][0].text
    attachments = [p.get_filename() or p.get_content_type() for p in message.iter_attachments()]
    return _mail_text(source, headers, body, attachments), None


def _load_msg(data: bytes, source: str) -> tuple[list[Section], str | None]:
    from oxmsg import Message

    try:
        message = Message.load(io.BytesIO(data))
    except Exception as exc:  # not an OLE file, or a damaged one: python-oxmsg raises several kinds
        raise _Refuse(RefusalReason.BROKEN, f"'{source}' is not a readable Outlook message ({type(exc).__name__}). "
                      "Open it in Outlook and save it again (File > Save As > Outlook Message Format), or save it "
                      "as .eml, and upload that.") from None
    headers_in = message.message_headers or {}
    content_type = str(headers_in.get("Content-Type", "")).split(";", 1)[0].strip().lower()
    if content_type in _ENCRYPTED_MAIL or message.message_class.upper().startswith("IPM.NOTE.SMIME"):
        _refuse_encrypted_mail(source)
    to = ", ".join(f"{r.name} <{r.email_address}>" if r.name else r.email_address for r in message.recipients)
    headers = {"Subject": message.subject or "", "From": message.sender or "", "To": to or headers_in.get("To", ""),
               "Date": message.sent_date.isoformat(" ") if message.sent_date else ""}
    body = message.body or ""
    if not body.strip() and message.html_body:
        html = message.html_body
        body = _html_to_sections(html if isinstance(html, str) else decode_bytes(html)[0], source)[0][0].text
    attachments = [a.file_name or a.mime_type or "attachment" for a in message.attachments]
    return _mail_text(source, headers, body, attachments), None


Loader = Callable[[bytes, str], tuple[list[Section], str | None]]

LOADERS: dict[str, Loader] = {
    ".pdf": _load_pdf,
    ".docx": _load_docx,
    ".pptx": _load_pptx,
    ".xlsx": _load_xlsx,
    ".xlsm": _load_xlsx,
    ".csv": _load_csv,
    ".tsv": _load_csv,
    ".html": _load_html,
    ".htm": _load_html,
    ".xhtml": _load_html,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".txt": _load_text,
    ".text": _load_text,
    ".rst": _load_text,
    ".rtf": _load_rtf,
    ".odt": _load_odt,
    ".epub": _load_epub,
    ".eml": _load_eml,
    ".msg": _load_msg,
    ".png": _load_image,
    ".jpg": _load_image,
    ".jpeg": _load_image,
    ".tif": _load_image,
    ".tiff": _load_image,
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(sorted(LOADERS))

_OLD_OFFICE = {".doc": ".docx", ".ppt": ".pptx", ".xls": ".xlsx"}


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bytes(data: bytes, source: str, *, pdf_password: str = "", max_mb: float = 0, load: LoadSettings | None = None,
               on_page: PageCallback | None = None) -> LoadedDocument | Refusal:
    """Load one file's bytes; never raises for bad input — returns a :class:`Refusal` instead.

    ``load`` (``rag.stages.LoadSettings``, its defaults when None) bounds OCR; ``on_page`` hears each page of a
    PDF or image as it is read. Pages OCR could not read, or that the limits skipped, are in the notes.
    """
    suffix = Path(source).suffix.lower()
    reading = _Reading(source, load, on_page)
    try:
        if suffix not in LOADERS:
            hint = (
                f" Save it as {_OLD_OFFICE[suffix]} and upload that."
                if suffix in _OLD_OFFICE
                else f" Supported: {' '.join(SUPPORTED_EXTENSIONS)}."
            )
            raise _Refuse(RefusalReason.UNSUPPORTED, f"{source}: this kind of file ({suffix or 'no extension'}) "
                          f"cannot be read, so it is left out.{hint}")
        if max_mb and len(data) > max_mb * 1024 * 1024:
            raise _Refuse(
                RefusalReason.TOO_LARGE,
                f"'{source}' is {len(data) / 1e6:.1f} MB, above the {max_mb:g} MB limit in the Load settings. "
                "Split it or raise the limit.",
            )
        if not data.strip():
            raise _Refuse(RefusalReason.EMPTY, f"'{source}' is empty or contains only whitespace. Nothing to "
                          "index; check you picked the right file.")
        if suffix == ".pdf":
            sections, enc = _load_pdf(data, source, pdf_password, reading)
        elif suffix in IMAGE_EXTENSIONS:
            sections, enc = _load_image(data, source, reading)
        else:
            sections, enc = LOADERS[suffix](data, source)
    except _Refuse as refusal:
        return Refusal(source, refusal.reason, refusal.message)
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, ValueError, OSError, UnicodeError) as exc:
        return Refusal(
            source,
            RefusalReason.BROKEN,
            f"'{source}' could not be read as {suffix} ({type(exc).__name__}: {exc}). It may be damaged or "
            "mis-named; open it in its program, save a fresh copy and upload that.",
        )
    except Exception as exc:
        return Refusal(
            source,
            RefusalReason.BROKEN,
            f"'{source}' could not be parsed ({type(exc).__name__}: {exc}). Save a fresh copy or convert it to PDF.",
        )
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        return Refusal(
            source,
            RefusalReason.EMPTY,
            f"'{source}' contains no readable text (only whitespace, images or empty pages). Nothing to index.",
        )
    return LoadedDocument(source=source, sha256=file_sha256(data), sections=sections, encoding=enc,
                          notes=list(reading.notes))


def load_file(
    path: str | Path, *, pdf_password: str = "", max_mb: float = 0, name: str | None = None,
    load: LoadSettings | None = None, on_page: PageCallback | None = None,
) -> LoadedDocument | Refusal:
    """Load a file from disk; the source name defaults to the file name (what citations show).

    A PDF's document names its file (``original``): the index copies it when it saves, not here, so a batch
    never holds every file's bytes in memory at once."""
    path = Path(path)
    source = name or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Refusal(source, RefusalReason.BROKEN, f"'{source}' could not be opened: {exc.strerror or exc}.")
    doc = load_bytes(data, source, pdf_password=pdf_password, max_mb=max_mb, load=load, on_page=on_page)
    if isinstance(doc, LoadedDocument) and Path(source).suffix.lower() == ".pdf" and not pdf_password:
        return replace(doc, original=path)
    return doc


def read_with_pages(read: Callable[..., _R], page_event: Callable[[int, int, str, float | None], _T], *args: Any,
                    **kwargs: Any) -> Iterator[_T | _R]:
    """``read(*args, on_page=..., **kwargs)`` (say :func:`load_file`) in a helper thread, yielding
    ``page_event(page, pages, method, confidence)`` for each page as it is read, then what ``read`` returned.

    Why a thread: the loaders are plain functions, and a build's log should show "page 3/40 (OCR)" while
    the file is read (an OCR page takes seconds), not after. Stopping early waits for the file being read.
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor

    pages: queue.SimpleQueue = queue.SimpleQueue()
    with ThreadPoolExecutor(1, thread_name_prefix="load") as pool:
        future = pool.submit(read, *args, on_page=lambda *page: pages.put(page_event(*page)), **kwargs)
        while not (future.done() and pages.empty()):
            try:
                yield pages.get(timeout=0.2)
            except queue.Empty:
                continue
        yield future.result()


def unlock_pdf(data: bytes, password: str) -> bytes | None:
    """An unencrypted copy of an encrypted PDF opened with ``password``; None when it is not encrypted, the
    password does not open it, or it cannot be read (then the file goes on as it is and is refused later).

    Why: a password is used once, where it is typed, and never stored or handed to a background job. The
    unlocked copy is the document itself, kept like any other upload of its owner.
    """
    if not password:
        return None
    from pypdf import PdfReader, PdfWriter

    try:
        reader = PdfReader(io.BytesIO(data))
        if not reader.is_encrypted or not reader.decrypt(password):
            return None
        out = io.BytesIO()
        PdfWriter(clone_from=reader).write(out)
    except Exception:
        return None
    return out.getvalue()


def iter_files(folder: str | Path) -> Iterator[Path]:
    """Files under a folder in a stable order, skipping hidden files."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path
