"""Which format an upload is, judged from its bytes (the file name only tells Markdown from plain text)."""

import io
import zipfile

from citechat.errors import CitechatError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
MARKDOWN = "text/markdown"
TEXT = "text/plain"
HTML = "text/html"
SUPPORTED = (PDF, DOCX, MARKDOWN, TEXT, HTML)
EXTENSIONS = {PDF: ".pdf", DOCX: ".docx", MARKDOWN: ".md", TEXT: ".txt", HTML: ".html"}
# What a browser may show in place, as itself: HTML (a page of its own, scripts and all) and DOCX are downloaded.
SHOWN_INLINE = (PDF, MARKDOWN, TEXT)
_MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdown", ".mkd")
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body")


class UnsupportedFormat(CitechatError):
    status_code = 415


def detect(content: bytes, filename: str) -> str:
    """The content type of an upload, from its leading bytes; raises ``UnsupportedFormat`` for anything else."""
    head = content[:1024]
    if b"%PDF-" in head:  # PDF readers accept the header anywhere in the first kilobyte
        return PDF
    if head.startswith(b"PK\x03\x04"):
        if _is_docx(content):
            return DOCX
        raise UnsupportedFormat("unsupported file: a ZIP archive that is not a Word (.docx) document")
    text = _as_text(content)
    if text is None:
        raise UnsupportedFormat("unsupported file type: citechat reads PDF, DOCX, Markdown, plain text and HTML")
    start = text[:1024].lstrip("\ufeff \t\r\n").lower().encode()
    if start.startswith(_HTML_MARKERS) or (start.startswith(b"<") and b"<html" in text[:4096].lower().encode()):
        return HTML
    return MARKDOWN if filename.lower().endswith(_MARKDOWN_SUFFIXES) else TEXT


def _is_docx(content: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _as_text(content: bytes) -> str | None:
    """Text if the bytes decode as UTF-8 (or UTF-16 with a BOM) and hold no control bytes that text never has."""
    for encoding in ("utf-8-sig", "utf-16"):
        if encoding == "utf-16" and not content.startswith((b"\xff\xfe", b"\xfe\xff")):
            continue
        try:
            text = content.decode(encoding)
        except UnicodeDecodeError:
            continue
        sample = text[:4096]
        if sum(ch < " " and ch not in "\t\n\r\f" for ch in sample) <= len(sample) // 100:
            return text
    return None


def decode_text(content: bytes) -> str:
    return _as_text(content) or ""
