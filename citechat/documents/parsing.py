"""Text out of documents, page by page where the format has pages.

PDFs are read with pdfium (``pypdfium2``): fast, permissive licence, and it opens filings that pypdf rejects.
Each page keeps its physical number (1-based) and, where the PDF defines one, its printed label ("iv", "A-3").
"""

import io
import re
import threading
from dataclasses import dataclass

from citechat.db.text import cleaned
from citechat.documents import formats
from citechat.retrievers.base import IngestError

# pdfium is not thread-safe (pypdfium2 says so; two documents parsed at once in two threads crash the process), and
# documents are indexed concurrently: one PDF at a time per process. Parsing is a small part of indexing, and another
# document's embedding goes on meanwhile.
_PDFIUM = threading.Lock()


@dataclass(frozen=True)
class Page:
    number: int | None
    label: str | None
    text: str


@dataclass(frozen=True)
class Parsed:
    pages: list[Page]
    paged: bool  # False for formats without pages: their single Page has no number

    @property
    def page_count(self) -> int | None:
        return len(self.pages) if self.paged else None


def parse(content: bytes, content_type: str) -> Parsed:
    if content_type == formats.PDF:
        with _PDFIUM:
            return _pdf(content)
    if content_type == formats.DOCX:
        text = _docx(content)
    elif content_type == formats.HTML:
        text = _html(formats.decode_text(content))
    else:
        text = formats.decode_text(content)
    text = _tidy(text)
    if not text:
        raise IngestError("the document contains no text")
    return Parsed(pages=[Page(number=None, label=None, text=text)], paged=False)


def _pdf(content: bytes) -> Parsed:
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(content)
    except pypdfium2.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise IngestError("the PDF is encrypted with a password; upload an unprotected copy") from exc
        raise IngestError("the PDF could not be read; the file may be corrupt") from exc
    try:
        pages = []
        for index in range(len(document)):
            page = document[index]
            text_page = page.get_textpage()
            text = _tidy(text_page.get_text_bounded())
            text_page.close()
            page.close()
            label = document.get_page_label(index) or None
            pages.append(Page(number=index + 1, label=label if label != str(index + 1) else None, text=text))
    finally:
        document.close()
    if not pages:
        raise IngestError("the PDF has no pages")
    if not any(p.text for p in pages):
        raise IngestError("the PDF has no extractable text (scanned or image-only?); OCR is not supported")
    return Parsed(pages=pages, paged=True)


def _docx(content: bytes) -> str:
    import docx

    try:
        document = docx.Document(io.BytesIO(content))
    except Exception as exc:  # python-docx raises a range of zip/xml errors for damaged files
        raise IngestError("the Word document could not be read; the file may be corrupt") from exc
    blocks = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            blocks.append(" | ".join(cell.text.strip() for cell in row.cells))
    return "\n".join(blocks)


def _html(markup: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    for hidden in soup(["script", "style", "noscript", "template", "head"]):
        hidden.decompose()
    return soup.get_text("\n")


_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    text = cleaned(text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
