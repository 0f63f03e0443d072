"""The support-status table written out: GitHub-flavoured Markdown and one page of HTML.

lab/report/table.py decides what each cell says; this module only writes it down, escaping
every text that came from a result or from known-issues.yaml, and linking each console log
and each plot (lab/report/plots.py) relative to the directory the files go to (so the
directory can be published as it is).
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from lab.evidence import CONSOLE_ATTACHMENT, EVIDENCE_TITLES, Result
from lab.report.table import (
    CONTEXT_TITLE,
    FAIL,
    KNOWN_ISSUE,
    PARTIAL,
    PASS,
    REBASE_TITLE,
    UNKNOWN,
    Cell,
    ContextCell,
    ContextEntry,
    Footnote,
    RebaseCell,
    RebaseEntry,
    Row,
    SupportTable,
)

if TYPE_CHECKING:  # the plots module imports matplotlib; the page only links its files
    from lab.report.plots import Plot

SYMBOL_CLASSES = {
    PASS: "pass",
    FAIL: "fail",
    KNOWN_ISSUE: "known",
    UNKNOWN: "unknown",
    PARTIAL: "partial",
}
COLUMNS_NOTE = (
    "profile run here: booted here in QEMU on that platform's virtual hardware "
    "(accelerator in parentheses: kvm, or tcg = software emulation); it proves the image "
    "works with that hardware, not the platform. real platform: booted on the platform "
    "itself. Dates are UTC, of the newest run in the cell."
)
CONTEXT_NOTE = (
    "contextualization: booted here with user-data on each channel the platform hands it to "
    "the guest by (nocloud, config-drive, ec2-imds, ...), the newest result per target, version "
    "and channel; results on the real platform are footnotes."
)
REBASE_NOTE = (
    "rebase: each rebase cell of matrix.yaml (target, FROM → TO) booted FROM here, made local "
    "changes, applied the update and checked every rule inside the guest; ✓ only when every "
    "cell of the platform passed, a footnote per rule that failed; results on the real "
    "platform are footnotes."
)


def _entry_text(result: Result) -> str:
    if result.passed:
        return f"{result.target} ({result.accel})" if result.accel else result.target
    if not result.ran:
        return f"{result.target}: skipped"
    phase = f" in phase {result.failed_phase}" if result.failed_phase else ""
    return f"{result.target}: {result.status}{phase}"


def _href(path: Path, link_base: Path) -> str:
    """A relative URL from the directory the page is written to."""
    return quote(Path(os.path.relpath(path.resolve(), link_base.resolve())).as_posix())


def _web_link(link: str | None) -> str | None:
    """Only http(s) links become hyperlinks; anything else stays text."""
    return link if link and urlsplit(link).scheme in ("http", "https") else None


def _column_titles(table: SupportTable) -> list[tuple[str, str]]:
    """(top, bottom) lines of each column's title after "Platform"."""
    titles = [(version, EVIDENCE_TITLES[evidence]) for version, evidence in table.columns]
    if table.has_context:
        titles.append((CONTEXT_TITLE, EVIDENCE_TITLES["profile"]))
    if table.has_rebase:
        titles.append((REBASE_TITLE, EVIDENCE_TITLES["profile"]))
    return titles


def _notes_on_columns(table: SupportTable) -> str:
    notes = [COLUMNS_NOTE]
    notes += [CONTEXT_NOTE] if table.has_context else []
    notes += [REBASE_NOTE] if table.has_rebase else []
    return " ".join(notes)


def _built_line(table: SupportTable) -> str:
    sources = ", ".join(str(source) for source in table.sources) or "(directories not given)"
    built = f"{table.built_at:%Y-%m-%d %H:%M} UTC"
    return f"Built {built} from the {table.check!r} results in {sources}."


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell (HTML-escaped, Markdown punctuation escaped)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def render_markdown(table: SupportTable, *, link_base: Path, plots: Sequence[Plot] = ()) -> str:
    """GitHub-flavoured Markdown; links are relative to ``link_base`` (where the file goes).
    ``plots`` follow the table: an image each, or why it was not drawn."""
    header = ["Platform", *(f"{top} · {bottom}" for top, bottom in _column_titles(table))]
    lines = [
        f"# Support status: {_md(table.check)}",
        "",
        "| " + " | ".join(_md(title) for title in header) + " |",
        "|" + " --- |" * len(header),
    ]
    for row in table.rows:
        cells = [_md_cell(cell, link_base) for cell in row.cells]
        if row.context is not None:
            cells.append(_md_context_cell(row.context, link_base))
        if row.rebase is not None:
            cells.append(_md_context_cell(row.rebase, link_base))
        lines.append("| " + " | ".join([_md(row.platform), *cells]) + " |")
    lines += ["", *(f"- {symbol} {_md(text)}" for symbol, text in table.legend), ""]
    lines += [_md(_notes_on_columns(table)), "", *_md_footnotes(table.footnotes)]
    lines += [f"Not in the table: {_md(text)}\n" for text in table.ignored]
    lines += _md_plots(plots, link_base)
    return "\n".join([*lines, _md(_built_line(table)), ""])


def _md_plots(plots: Sequence[Plot], link_base: Path) -> list[str]:
    lines = ["## Plots", ""] if plots else []
    for plot in plots:
        if plot.svg is None:
            lines += [f"{_md(plot.title)}: {_md(plot.missing)}.", ""]
        else:
            lines += [f"![{_md(plot.alt)}]({_href(plot.svg, link_base)})", "", _md(plot.title), ""]
    return lines


def _md_cell(cell: Cell, link_base: Path) -> str:
    head = f"{cell.symbol} {cell.date:%Y-%m-%d}" if cell.date else cell.symbol
    entries = [_md_entry(result, link_base) for result in cell.results]
    refs = _md_refs(cell.notes)
    return "<br>".join([head, *entries]) + (f" {refs}" if refs else "")


def _md_entry(result: Result, link_base: Path, text: str | None = None) -> str:
    text = _md(_entry_text(result) if text is None else text)
    if result.console is None:
        return text
    return f"{text} [{_md(CONSOLE_ATTACHMENT)}]({_href(result.console, link_base)})"


def _md_labelled(result: Result | None, link_base: Path, text: str) -> str:
    """An entry's text, and the console link when it has a result (a rebase entry may not)."""
    return _md(text) if result is None else _md_entry(result, link_base, text)


def _md_refs(numbers: Iterable[int]) -> str:
    return "".join(f"\\[{number}\\]" for number in numbers)


def _md_context_cell(cell: ContextCell | RebaseCell, link_base: Path) -> str:
    """A contextualization or rebase cell: its symbol and date, then a line per entry."""
    head = f"{cell.symbol} {cell.date:%Y-%m-%d}" if cell.date else cell.symbol
    entries = [
        _md_labelled(entry.result, link_base, f"{entry.symbol} {entry.label}")
        + (f" {_md_refs(entry.notes)}" if entry.notes else "")
        for entry in cell.entries
    ]
    refs = _md_refs(cell.notes)
    return "<br>".join([head + (f" {refs}" if refs else ""), *entries])


def _md_footnotes(footnotes: Sequence[Footnote]) -> list[str]:
    lines = []
    for note in footnotes:
        link = _web_link(note.link)
        suffix = f" ([link]({link}))" if link else (f" ({_md(note.link)})" if note.link else "")
        lines.append(f"{note.number}. {_md(note.text)}{suffix}")
    return [*lines, ""] if lines else []


_PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #202124;
       margin: 2rem auto; max-width: 80rem; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #dadce0; padding: .45rem .6rem; vertical-align: top; text-align: left; }
thead th { background: #f8f9fa; }
thead small { color: #5f6368; font-weight: normal; }
tbody th { white-space: nowrap; }
td ul { margin: .2rem 0 0; padding-left: 1.1rem; }
td time { color: #3c4043; font-size: .9em; }
.symbol { font-weight: bold; font-size: 1.15em; }
.pass { background: #e6f4ea; } .pass .symbol { color: #137333; }
.fail { background: #fce8e6; } .fail .symbol { color: #c5221f; }
.known { background: #fef7e0; } .known .symbol { color: #b06000; }
.unknown { background: #f1f3f4; } .unknown .symbol { color: #5f6368; }
.partial { background: #fff0e0; } .partial .symbol { color: #b45309; }
.symbol.pass { color: #137333; } .symbol.fail { color: #c5221f; }
.symbol.known { color: #b06000; } .symbol.unknown { color: #5f6368; }
.symbol.partial { color: #b45309; }
td li .symbol { font-size: 1em; padding: 0 .2rem; border-radius: 3px; }
.legend { list-style: none; padding: 0; } .legend li { margin: .15rem 0; }
.legend .symbol { display: inline-block; width: 1.6rem; text-align: center; border-radius: 3px; }
.meta, .columns { color: #5f6368; }
sup a { text-decoration: none; }
.plots figure { margin: 1.2rem 0; } .plots img { max-width: 100%; height: auto; }
.plots figcaption { color: #5f6368; }
</style>
</head>
<body>
<h1>$title</h1>
<table>
<thead><tr><th scope="col">Platform</th>$header</tr></thead>
<tbody>
$rows
</tbody>
</table>
<ul class="legend">
$legend
</ul>
<p class="columns">$columns</p>
$footnotes
$ignored
$plots
<p class="meta">$built</p>
</body>
</html>
"""
)


def render_html(table: SupportTable, *, link_base: Path, plots: Sequence[Plot] = ()) -> str:
    """One page (inline CSS, no scripts); links are relative to ``link_base``. ``plots``
    follow the table: each SVG as an image with its alt text, or why it was not drawn."""
    esc = html.escape
    return _PAGE.substitute(
        title=esc(f"Support status: {table.check}"),
        header="".join(
            f'<th scope="col">{esc(top)}<br><small>{esc(bottom)}</small></th>'
            for top, bottom in _column_titles(table)
        ),
        rows="\n".join(_html_row(row, link_base) for row in table.rows),
        legend="\n".join(
            f'<li><span class="symbol {SYMBOL_CLASSES[s]}">{esc(s)}</span> {esc(text)}</li>'
            for s, text in table.legend
        ),
        columns=esc(_notes_on_columns(table)),
        footnotes=_html_footnotes(table.footnotes),
        ignored="\n".join(f'<p class="meta">Not in the table: {esc(t)}</p>' for t in table.ignored),
        plots=_html_plots(plots, link_base),
        built=esc(_built_line(table)),
    )


def _html_plots(plots: Sequence[Plot], link_base: Path) -> str:
    if not plots:
        return ""
    esc = html.escape
    items = []
    for plot in plots:
        if plot.svg is None:
            items.append(f'<p class="meta">{esc(plot.title)}: {esc(plot.missing)}.</p>')
            continue
        src = esc(_href(plot.svg, link_base))
        items.append(
            f'<figure id="plot-{esc(plot.name)}"><a href="{src}"><img src="{src}" '
            f'alt="{esc(plot.alt)}"></a><figcaption>{esc(plot.title)}</figcaption></figure>'
        )
    return '<section class="plots">\n<h2>Plots</h2>\n' + "\n".join(items) + "\n</section>"


def _html_row(row: Row, link_base: Path) -> str:
    cells = "".join(_html_cell(cell, link_base) for cell in row.cells)
    if row.context is not None:
        cells += _html_context_cell(row.context, link_base)
    if row.rebase is not None:
        cells += _html_context_cell(row.rebase, link_base)
    return f'<tr><th scope="row">{html.escape(row.platform)}</th>{cells}</tr>'


def _html_cell(cell: Cell, link_base: Path) -> str:
    date = f" <time>{cell.date:%Y-%m-%d}</time>" if cell.date else ""
    refs = _html_refs(cell.notes)
    entries = "".join(_html_entry(result, link_base) for result in cell.results)
    items = f"<ul>{entries}</ul>" if entries else ""
    return (
        f'<td class="{SYMBOL_CLASSES[cell.symbol]}"><span class="symbol">{cell.symbol}</span>'
        f"{date} {refs}{items}</td>"
    )


def _html_refs(numbers: Iterable[int]) -> str:
    return "".join(f'<sup><a href="#fn-{n}">[{n}]</a></sup>' for n in numbers)


def _html_entry(result: Result, link_base: Path, label: str = "", refs: str = "") -> str:
    """A result as a list item; ``label`` (HTML) replaces the usual text, ``refs`` follow."""
    title = f' title="{html.escape(result.message)}"' if result.message else ""
    link = ""
    if result.console is not None:
        href = html.escape(_href(result.console, link_base))
        link = f' <a href="{href}">{CONSOLE_ATTACHMENT}</a>'
    return f"<li{title}>{label or html.escape(_entry_text(result))}{link}{refs}</li>"


def _html_context_cell(cell: ContextCell | RebaseCell, link_base: Path) -> str:
    """A contextualization or rebase cell: its symbol and date, then a list item per entry."""
    date = f" <time>{cell.date:%Y-%m-%d}</time>" if cell.date else ""
    entries = "".join(
        _html_entry(entry.result, link_base, _html_context_label(entry), _html_refs(entry.notes))
        if entry.result is not None
        else f"<li>{_html_context_label(entry)}{_html_refs(entry.notes)}</li>"
        for entry in cell.entries
    )
    items = f"<ul>{entries}</ul>" if entries else ""
    return (
        f'<td class="{SYMBOL_CLASSES[cell.symbol]}"><span class="symbol">{cell.symbol}</span>'
        f"{date} {_html_refs(cell.notes)}{items}</td>"
    )


def _html_context_label(entry: ContextEntry | RebaseEntry) -> str:
    symbol = f'<span class="symbol {SYMBOL_CLASSES[entry.symbol]}">{entry.symbol}</span>'
    return f"{symbol} {html.escape(entry.label)}"


def _html_footnotes(footnotes: Sequence[Footnote]) -> str:
    if not footnotes:
        return ""
    items = []
    for note in footnotes:
        link = _web_link(note.link)
        if link:
            suffix = f' (<a href="{html.escape(link)}">link</a>)'
        else:
            suffix = f" ({html.escape(note.link)})" if note.link else ""
        items.append(
            f'<li id="fn-{note.number}" value="{note.number}">{html.escape(note.text)}{suffix}</li>'
        )
    return '<ol class="footnotes">\n' + "\n".join(items) + "\n</ol>"


def write_table(
    table: SupportTable, out_dir: Path, plots: Sequence[Plot] = ()
) -> tuple[Path, Path]:
    """Write support-table.md and support-table.html into ``out_dir`` (links relative to it),
    with ``plots`` after the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "support-table.md"
    page = out_dir / "support-table.html"
    markdown.write_text(render_markdown(table, link_base=out_dir, plots=plots), encoding="utf-8")
    page.write_text(render_html(table, link_base=out_dir, plots=plots), encoding="utf-8")
    return markdown, page
