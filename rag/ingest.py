"""Turn a user's files into text sections that remember where they came from.

Each loader returns :class:`Section` objects (text plus source file, page or section name) so that
every chunk cut later can be cited precisely. A file that cannot be used never raises out of
:func:`load_file`: it comes back as a :class:`Refusal` whose message says what is wrong, in which
file, and how to fix it, so one bad file never stops the rest of a batch.

Libraries: pypdf (BSD) for PDF — no AGPL PDF library; python-docx, python-pptx, openpyxl for
Office files; BeautifulSoup for HTML/EPUB; striprtf for RTF; core.text (charset-normalizer) for encodings;
the standard library's ``email`` for .eml and python-oxmsg (MIT) for Outlook .msg.
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
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from xml.etree import ElementTree

from core.text import bom_encoding, decode_bytes

logging.getLogger("pypdf").setLevel(logging.ERROR)


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

    def to_dict(self) -> dict:
        return {"text": self.text, "source": self.source, "page": self.page, "section": self.section}

    @classmethod
    def from_dict(cls, data: dict) -> Section:
        return cls(text=data["text"], source=data["source"], page=data.get("page"), section=data.get("section"))


@dataclass(frozen=True)
class LoadedDocument:
    """A file that yielded text: its name, content hash and sections."""

    source: str
    sha256: str
    sections: list[Section]
    encoding: str | None = None
    title: str | None = None
    notes: list[str] = field(default_factory=list)

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


def _load_pdf(data: bytes, source: str, password: str = "") -> tuple[list[Section], str | None]:
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
        pages = list(reader.pages)
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
    sections = []
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception:
            continue
        text = _clean(text)
        if text:
            sections.append(Section(text, source, page=number))
    if not sections:
        raise _Refuse(
            RefusalReason.NO_TEXT_LAYER,
            f"'{source}' has {len(pages)} page(s) but no text layer: it is a scanned or image-only PDF. "
            "Make it searchable with text recognition (OCR: in most PDF and scanner programs, 'Recognize text' "
            "or 'Make searchable') and upload the result.",
        )
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
}

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(sorted(LOADERS))

_OLD_OFFICE = {".doc": ".docx", ".ppt": ".pptx", ".xls": ".xlsx"}


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bytes(data: bytes, source: str, *, pdf_password: str = "", max_mb: float = 0) -> LoadedDocument | Refusal:
    """Load one file's bytes; never raises for bad input — returns a :class:`Refusal` instead."""
    suffix = Path(source).suffix.lower()
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
            sections, enc = _load_pdf(data, source, pdf_password)
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
    return LoadedDocument(source=source, sha256=file_sha256(data), sections=sections, encoding=enc)


def load_file(
    path: str | Path, *, pdf_password: str = "", max_mb: float = 0, name: str | None = None
) -> LoadedDocument | Refusal:
    """Load a file from disk; the source name defaults to the file name (what citations show)."""
    path = Path(path)
    source = name or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Refusal(source, RefusalReason.BROKEN, f"'{source}' could not be opened: {exc.strerror or exc}.")
    return load_bytes(data, source, pdf_password=pdf_password, max_mb=max_mb)


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
