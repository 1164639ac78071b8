"""Writes documents/<name>.pdf from sources/<name>.txt: one PDF page per block between lines of "=====".

The PDFs are committed, so running an evaluation needs no PDF writer; rerun this (``uv run python
evals/datasets/citechat-smoke/build.py``, reportlab is a dev dependency) after editing a source. reportlab's
``invariant`` mode leaves out dates and random ids, so the same text always gives the same bytes. A test checks that
every committed PDF still holds its source's text, page by page.
"""

import io
from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

HERE = Path(__file__).resolve().parent
PAGE_BREAK = "====="
WRAP = 90  # characters per line


def pages(source: Path) -> list[str]:
    blocks, current = [], []
    for line in source.read_text().splitlines():
        if line.strip() == PAGE_BREAK:
            blocks.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    blocks.append("\n".join(current).strip())
    return [block for block in blocks if block]


def pdf(texts: list[str], title: str) -> bytes:
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer, pagesize=A4, invariant=1)
    page.setTitle(title)
    for text in texts:
        y = 780
        for paragraph in text.split("\n"):
            line = ""
            for word in paragraph.split():
                if line and len(line) + len(word) + 1 > WRAP:
                    page.drawString(60, y, line)
                    y, line = y - 14, ""
                line = f"{line} {word}".strip()
            page.drawString(60, y, line)
            y -= 22
        page.showPage()
    page.save()
    return buffer.getvalue()


def main() -> None:
    for source in sorted((HERE / "sources").glob("*.txt")):
        target = HERE / "documents" / f"{source.stem}.pdf"
        target.write_bytes(pdf(pages(source), source.stem))
        print(f"{target.relative_to(HERE)}: {len(pages(source))} pages")


if __name__ == "__main__":
    main()
