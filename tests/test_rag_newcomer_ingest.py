"""Outlook .msg and .eml read by rag.ingest from the shared samples (unmodified); per-file refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.ingest import SUPPORTED_EXTENSIONS, LoadedDocument, Refusal, RefusalReason, load_file

EMAIL = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "docs" / "unstructured-email"

pytestmark = pytest.mark.skipif(not EMAIL.is_dir(), reason=f"shared test data missing at {EMAIL}")


def _text(doc: LoadedDocument | Refusal) -> str:
    assert isinstance(doc, LoadedDocument), getattr(doc, "message", doc)
    return "\n".join(s.text for s in doc.sections)


@pytest.mark.parametrize("name", ["fake-email.eml", "fake-email.msg"])
def test_an_email_yields_its_headers_and_body(name):
    doc = load_file(EMAIL / name)
    text = _text(doc)
    assert "Subject: Test Email" in text
    assert "From: " in text and "mrobinson@unstructured.io" in text
    assert "To: " in text and "Date: " in text
    assert "This is a test email to use for unit tests." in text and "Violets are blue" in text
    assert doc.sections[0].section == "Test Email"  # citations name the message by its subject
    assert "Attachments:" not in text


@pytest.mark.parametrize("name", ["fake-email-attachment.eml", "fake-email-attachment.msg"])
def test_attachments_are_listed_by_name_not_read(name):
    text = _text(load_file(EMAIL / name))
    assert "Here's the attachments!" in text
    assert "Attachments: fake-attachment.txt" in text
    assert "Hey this is a fake attachment" not in text  # the attachment's own content is not indexed


def test_a_malformed_content_type_header_still_gives_the_body():
    text = _text(load_file(EMAIL / "fake-email-malformed-encoding.eml"))
    assert "Subject: Test Email" in text and "Roses are red" in text


def test_empty_and_encrypted_messages_are_refused_with_a_reason():
    empty = load_file(EMAIL / "empty.eml")
    assert isinstance(empty, Refusal) and empty.reason is RefusalReason.EMPTY and "empty.eml" in empty.message
    encrypted = load_file(EMAIL / "fake-encrypted.msg")
    assert isinstance(encrypted, Refusal) and encrypted.reason is RefusalReason.ENCRYPTED
    assert encrypted.message.startswith("'fake-encrypted.msg' is an encrypted e-mail")
    assert "/" not in encrypted.message.split("(")[0]  # no server path


def test_an_unsupported_file_is_refused_by_itself_with_the_supported_list(tmp_path):
    exe = tmp_path / "setup.exe"
    exe.write_bytes(b"MZ\x90\x00 not a document")
    refusal = load_file(exe)
    assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.UNSUPPORTED
    assert refusal.message.startswith("setup.exe: this kind of file (.exe) cannot be read")
    assert ".eml" in refusal.message and ".msg" in refusal.message and str(tmp_path) not in refusal.message
    assert {".eml", ".msg"} <= set(SUPPORTED_EXTENSIONS)
    broken = tmp_path / "mail.msg"
    broken.write_bytes(b"plain text, not an Outlook file")
    assert load_file(broken).reason is RefusalReason.BROKEN
