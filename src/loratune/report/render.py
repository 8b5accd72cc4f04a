"""Render a document, given as a list of blocks, to Markdown and to one self-contained HTML file.

A document is a flat list of blocks (headings, paragraphs, tables, code and rows of figures that point to PNG files
in a folder). `render_markdown` and `render_html` turn the same list into the two formats, which keeps them in step;
the HTML inlines its CSS and images, so it can be opened or moved on its own. This module knows nothing about runs,
models or plots: `report.run_report` decides what goes into a document, this module only decides how it looks.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Code", "Figure", "Figures", "Heading", "Table", "Text", "render_html", "render_markdown"]


# ---------------------------------------------------------------------------------------------------------------------
# Document blocks: one structure, rendered to Markdown and to HTML
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A PNG file in the document's folder, with its caption."""

    filename: str
    caption: str
    wide: bool = False  # too detailed to shrink to a phone's width: scrolls sideways there instead


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Text:
    text: str
    muted: bool = False


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one 'l' or 'r' per column; default: first column left, the rest right
    signed: tuple[int, ...] = ()  # columns whose '+'/'-' values are coloured in HTML
    key_value: bool = False
    lower_is_better: tuple[int, ...] = ()  # rows (an error rate) whose signed values are coloured the other way
    wrap: tuple[int, ...] = ()  # columns of free text, wrapped in HTML rather than widening the table

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Figures:
    items: list[Figure] = field(default_factory=list)


Block = Heading | Text | Table | Code | Figures


# ---------------------------------------------------------------------------------------------------------------------
# Markdown rendering
# ---------------------------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<|])")


def _md(text: str) -> str:
    """Escape Markdown syntax (and raw HTML) in user text such as label names."""
    return _MD_SPECIAL.sub(r"\\\1", str(text).replace("\r", " ").replace("\n", " "))


def render_markdown(title: str, blocks: Sequence[Block]) -> str:
    """A Markdown page; figures are linked by file name, relative to the page."""
    out = [f"# {_md(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            out += [f"## {_md(block.text)}", ""]
        elif isinstance(block, Text):
            out += [f"_{_md(block.text)}_" if block.muted else _md(block.text), ""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_md(h) for h in block.header) + " |")
            out.append("| " + " | ".join(":---" if a == "l" else "---:" for a in block.alignment()) + " |")
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Code):
            fence = "```" + "`" * max((len(run) - 2 for run in re.findall(r"`{3,}", block.text)), default=0)
            out += [fence + "yaml", block.text, fence, ""]
        elif isinstance(block, Figures):
            out += [f"![{_md(f.caption)}]({f.filename})\n" for f in block.items]
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# HTML rendering: one file, inline CSS, images as data URIs, no scripts or external requests
# ---------------------------------------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --bg: #f4f5f7; --card: #fff; --line: #e2e5e9; --head: #f6f7f9;
        --accent: #3b5bdb; --up: #1a7f37; --down: #cf222e; color-scheme: light; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 28px 18px 56px; }
.kicker { margin: 0; color: var(--accent); font-size: .78rem; font-weight: 600; letter-spacing: .06em;
          text-transform: uppercase; }
h1 { font-size: 1.65rem; line-height: 1.25; margin: .25em 0 .6em; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 2.2em 0 .7em; padding-bottom: .35em; border-bottom: 1px solid var(--line); }
p { margin: 0 0 1em; overflow-wrap: anywhere; }
p.muted { color: var(--muted); font-size: .9rem; }
.table-wrap { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0 0 1em; background: var(--card);
              border: 1px solid var(--line); border-radius: 10px; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; font-variant-numeric: tabular-nums; }
th, td { padding: .5em .8em; text-align: left; white-space: nowrap; border-bottom: 1px solid var(--line); }
th { background: var(--head); font-weight: 600; color: var(--muted); font-size: .8rem; text-transform: uppercase;
     letter-spacing: .03em; }
tbody tr:last-child td { border-bottom: 0; }
/* The first column stays in view while a wide table scrolls sideways on a phone. */
th:first-child, td:first-child { position: sticky; left: 0; z-index: 1; }
td:first-child { background: var(--card); }
td.r, th.r { text-align: right; }
td.up { color: var(--up); font-weight: 600; }
td.down { color: var(--down); font-weight: 600; }
table.kv td:first-child { position: static; color: var(--muted); width: 40%; }
table.kv td { white-space: normal; overflow-wrap: anywhere; }
table.kv thead { display: none; }
td.wrap { white-space: normal; overflow-wrap: break-word; min-width: 7em; }
td.wrap:first-child { min-width: 14em; }
/* A wrapped text column is too wide to stay in view while the table scrolls. */
table.wrapped th:first-child, table.wrapped td:first-child { position: static; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 360px), 1fr)); gap: 14px;
        margin: 0 0 14px; }
figure { margin: 0; padding: 12px; background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
figure img { display: block; width: 100%; height: auto; margin: 0 auto; }
figcaption { margin-top: .5em; color: var(--muted); font-size: .82rem; text-align: center; }
pre { margin: 0 0 1em; padding: 14px 16px; overflow-x: auto; background: var(--card); border: 1px solid var(--line);
      border-radius: 10px; font: .82rem/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
footer { margin-top: 3em; color: var(--muted); font-size: .8rem; text-align: center; }
@media (max-width: 560px) {
  main { padding: 18px 12px 40px; }
  h1 { font-size: 1.35rem; }
  table { font-size: .84rem; }
  th { font-size: .72rem; }
  th, td { padding: .45em .55em; }
  /* A confusion matrix squeezed to phone width is unreadable; keep it legible and let it scroll instead. */
  figure.wide { overflow-x: auto; }
  figure.wide img { min-width: 640px; }
  figure.wide figcaption { position: sticky; left: 0; max-width: calc(100vw - 50px); }
}
"""


def _html_image(path: Path, alt: str, dpi: float) -> str:
    """An <img> with the PNG inlined as a data URI, shown no larger than its size on paper (so never blown up)."""
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk always comes first in a PNG
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<img src="{uri}" alt="{html.escape(alt)}" width="{width}" height="{height}" '
        f'style="max-width: {round(width * 96 / dpi)}px">'
    )


def _html_figure(figure: Figure, base_dir: Path, dpi: float) -> str:
    wide = ' class="wide"' if figure.wide else ""
    image = _html_image(base_dir / figure.filename, figure.caption, dpi)
    return f"<figure{wide}>{image}<figcaption>{html.escape(figure.caption)}</figcaption></figure>"


def _html_table(table: Table) -> str:
    def cell(tag: str, text: str, column: int, row: int = -1) -> str:
        classes = []
        if table.alignment()[column] == "r":
            classes.append("r")
        if tag == "td" and column in table.wrap:
            classes.append("wrap")
        if tag == "td" and column in table.signed and text[:1] in "+-" and not re.match(r"^[+-]0\.0 ", text):
            good = text.startswith("+") != (row in table.lower_is_better)
            classes.append("up" if good else "down")
        attr = f' class="{" ".join(classes)}"' if classes else ""
        shown = html.escape(text)
        if "wrap" in classes:  # a label set ("admiration|approval") breaks after its separators, never mid-word
            shown = re.sub(r"([|,/])", r"\1<wbr>", shown)
        return f"<{tag}{attr}>{shown}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(table.header))
    body = "\n".join(
        "<tr>" + "".join(cell("td", c, i, r) for i, c in enumerate(row)) + "</tr>" for r, row in enumerate(table.rows)
    )
    kind = ' class="kv"' if table.key_value else ' class="wrapped"' if table.wrap else ""
    table = f"<table{kind}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"
    return f'<div class="table-wrap">{table}</div>'


def render_html(title: str, blocks: Sequence[Block], base_dir: Path, kicker: str, dpi: float) -> str:
    """A self-contained HTML page; figure files are read from `base_dir` and were saved at `dpi`."""
    parts = [f'<p class="kicker">{html.escape(kicker)}</p>', f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h2>{html.escape(block.text)}</h2>")
        elif isinstance(block, Text):
            muted = ' class="muted"' if block.muted else ""
            parts.append(f"<p{muted}>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(_html_table(block))
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Figures) and block.items:
            figures = "".join(_html_figure(f, base_dir, dpi) for f in block.items)
            parts.append(f'<div class="figs">{figures}</div>')
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
        "<footer>Generated by loratune from the files in this folder.</footer>\n</main>\n</body>\n</html>\n"
    )
