"""Documents made for tests, with known text on known pages."""

import io

import docx
from reportlab.lib.pagesizes import letter
from reportlab.pdfgen import canvas


def pdf(
    pages: list[str],
    *,
    labels: list[tuple[int, str, int]] | None = None,
    password: str | None = None,
    header: str | None = None,
) -> bytes:
    """A PDF with one page per string (lines wrapped at 90 characters). ``labels``: (page index, style, start)
    as reportlab's ``addPageLabel`` takes them, e.g. (0, "ROMAN_LOWER", 1) for roman numerals from the first page."""
    buffer = io.BytesIO()
    pdf_canvas = canvas.Canvas(buffer, pagesize=letter, encrypt=password)
    for index, style, start in labels or []:
        pdf_canvas.addPageLabel(index, style=style, start=start)
    for text in pages:
        y = 740
        if header:
            pdf_canvas.drawString(72, 760, header)
        for paragraph in text.split("\n"):
            words, line = paragraph.split(), ""
            for word in words:
                if len(line) + len(word) > 90:
                    pdf_canvas.drawString(72, y, line)
                    y, line = y - 14, ""
                line = f"{line} {word}".strip()
            pdf_canvas.drawString(72, y, line)
            y -= 20
        pdf_canvas.showPage()
    pdf_canvas.save()
    return buffer.getvalue()


def image_only_pdf() -> bytes:
    """A 'scanned' PDF: shapes, no text layer."""
    buffer = io.BytesIO()
    pdf_canvas = canvas.Canvas(buffer, pagesize=letter)
    for _ in range(2):
        pdf_canvas.rect(100, 100, 300, 400, fill=1)
        pdf_canvas.showPage()
    pdf_canvas.save()
    return buffer.getvalue()


def docx_file(paragraphs: list[str]) -> bytes:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


TOPICS = [
    "The lighthouse keeper on Skerryvore logged forty storms in the winter of 1911 and repaired the lantern twice.",
    "Quarterly revenue of the Orbital Bakery rose to 7.4 million dollars, driven by sourdough exports to Norway.",
    "The glacier survey measured a retreat of 312 metres at the Vatnajokull outlet between 2015 and 2023.",
    "Patients receiving the zebrafish-derived enzyme showed a 38 percent reduction in fibrin clot formation.",
]
