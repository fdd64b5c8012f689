"""The report: an ordered list of sections rendered as one self-contained HTML file and as Markdown.

A :class:`Section` is an id, a title and a list of blocks (:class:`Paragraph`, :class:`Table`,
:class:`Image`, :class:`Preformatted`). Each experiment builds its own sections from its results;
this module knows nothing about experiments, so any module can append sections to a report::

    sections.append(Section("noise-collapse", "Collapse by noise", [
        Paragraph("The variable collapsed at noise std `1.5`."),
        Image("figures/noise_collapse.png", "Gain, KL and Var(mu) against epochs."),
    ]))
    write_report(out_dir, "Title", sections)

Images are PNG files given relative to the report's folder: Markdown links to them, HTML embeds
them as base64 data, so ``report.html`` reads without a server or the figure files. Paragraph text
is plain; `backticks` mark code and ``**bold**`` marks emphasis in both renderings.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_text


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    """``rows`` of already formatted cells; rows whose index is in ``highlight`` are marked
    (red background in HTML, bold in Markdown)."""

    columns: list[str]
    rows: list[list[str]]
    highlight: frozenset[int] = frozenset()
    caption: str = ""


@dataclass(frozen=True)
class Image:
    """A PNG (or a GIF animation) at ``path`` relative to the report's folder."""

    path: str
    caption: str = ""


@dataclass(frozen=True)
class Preformatted:
    text: str


Block = Paragraph | Table | Image | Preformatted


@dataclass
class Section:
    id: str       # anchor, unique within a report
    title: str
    blocks: list[Block] = field(default_factory=list)


# ---------------------------------------------------------------------------- inline text

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def _alt(image: Image) -> str:
    """Short alternative text: the file's name in words (captions are shown beside the image)."""
    return Path(image.path).stem.replace("_", " ").replace("-", " ")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------- Markdown

def _block_markdown(block: Block) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Preformatted):
        return "```\n" + block.text.rstrip("\n") + "\n```"
    if isinstance(block, Image):
        text = f"![{_alt(block)}]({block.path})"
        return text + (f"\n\n*{block.caption}*" if block.caption else "")
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(c) for c in block.columns) + " |",
                 "|" + "|".join(" --- " for _ in block.columns) + "|"]
        for i, row in enumerate(block.rows):
            cells = [_md_cell(c) for c in row]
            if i in block.highlight:
                cells = [f"**{c}**" if c else c for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        table = "\n".join(lines)
        return (f"*{block.caption}*\n\n" + table) if block.caption else table
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(title: str, sections: Sequence[Section], intro: Sequence[Block] = ()) -> str:
    """The report as Markdown; images are links relative to the report's folder."""
    _check_ids(sections)
    parts = [f"# {title}", *(_block_markdown(b) for b in intro)]
    if len(sections) > 1:
        parts.append("\n".join(f"{k}. [{s.title}](#{s.id})" for k, s in enumerate(sections, 1)))
    for k, section in enumerate(sections, 1):
        parts.append(f'<a id="{section.id}"></a>\n## {k}. {section.title}')
        parts.extend(_block_markdown(b) for b in section.blocks)
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; }
tr.hl td { background: #fbd5d5; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #444; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
code { background: #f3f3f3; padding: 0 .2em; }
nav ol { columns: 2; }
"""


def _image_data(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise VaescopeError(f"report figure {path} cannot be read ({err}); re-run the command that makes it") from err
    return base64.b64encode(raw).decode("ascii")


def _block_html(block: Block, base_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Preformatted):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Image):
        data = _image_data(base_dir / block.path)
        caption = f"<figcaption>{_inline_html(block.caption)}</figcaption>" if block.caption else ""
        alt = html.escape(_alt(block))
        mime = "image/gif" if block.path.lower().endswith(".gif") else "image/png"  # animations are GIFs
        return f'<figure><img alt="{alt}" src="data:{mime};base64,{data}">{caption}</figure>'
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline_html(c)}</th>" for c in block.columns)
        rows = []
        for i, row in enumerate(block.rows):
            cls = ' class="hl"' if i in block.highlight else ""
            rows.append(f"<tr{cls}>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>")
        caption = f"<caption>{_inline_html(block.caption)}</caption>" if block.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(title: str, sections: Sequence[Section], base_dir: str | Path,
                intro: Sequence[Block] = ()) -> str:
    """The report as one HTML page with inline CSS and figures embedded as base64 PNG."""
    _check_ids(sections)
    base = Path(base_dir)
    body = [f"<h1>{_inline_html(title)}</h1>", *(_block_html(b, base) for b in intro)]
    if len(sections) > 1:
        items = "".join(f'<li><a href="#{s.id}">{_inline_html(s.title)}</a></li>' for s in sections)
        body.append(f"<nav><ol>{items}</ol></nav>")
    for k, section in enumerate(sections, 1):
        body.append(f'<section id="{html.escape(section.id)}"><h2>{k}. {_inline_html(section.title)}</h2>')
        body.extend(_block_html(b, base) for b in section.blocks)
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _check_ids(sections: Sequence[Section]) -> None:
    seen: set[str] = set()
    for section in sections:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", section.id):
            raise ValueError(f"section id {section.id!r} must be a letter followed by letters, digits, - or _")
        if section.id in seen:
            raise ValueError(f"two report sections share the id {section.id!r}")
        seen.add(section.id)


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section],
                 intro: Sequence[Block] = ()) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write_text(html_path, render_html(title, sections, out, intro))
    atomic_write_text(md_path, render_markdown(title, sections, intro))
    return html_path, md_path
