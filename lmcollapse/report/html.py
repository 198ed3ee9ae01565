"""The report as one self-contained web page: ``index.html`` beside ``index.md``.

The page is ``index.md`` rendered by Python-Markdown (its ``tables`` extension), with every figure
embedded as a data URI (the page can be mailed or opened from anywhere, no server, no other
file) and a few lines of script that sort any table by a click on a column header (numbers as
numbers, "-" last). ``#sort=<column>`` in the address sorts every table with that column when the
page opens (``#sort=-<column>``: descending), so a sorted view can be linked. The links to
``metrics.md`` and the other tables stay relative: they work beside the page.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; cursor: pointer; user-select: none; white-space: nowrap; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
td[align="right"] { font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""

# Sorting: a click on a header sorts its table's body rows by that column, ascending, then
# descending; numbers compare as numbers (what follows a leading number, a "±" spread, an "[a, b]"
# interval, a "(label)", is ignored; "<0.001" sorts just below 0.001), text as text, "-" and
# empty cells last in either order. data-sortable="ready" on <body> says the script ran.
SCRIPT = r"""
(function () {
  function key(cell) {
    var text = cell.textContent.trim();
    if (text === "" || text === "-") return null;
    // a number, alone or leading: a mean with its spread ("160.51 \u00b1 2.3 (3)"), with its interval
    // ("0.12 [0.10, 0.14]"), a generation with its family ("10 (tiny-llama)"), a bound ("<0.001");
    // anything else is text
    var match = /^(<?)([-+]?(?:\d[\d,]*)?\.?\d+(?:[eE][-+]?\d+)?)(?:\s*[\u00b1\[(].*)?$/.exec(text);
    if (!match) return text.toLowerCase();
    var value = Number(match[2].replace(/,/g, ""));
    return match[1] ? value - Math.abs(value) * 1e-9 : value;
  }
  function compare(a, b) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  function sortTable(table, column, descending) {
    var body = table.tBodies[0];
    if (!body) return;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      var a = key(r.cells[column]), b = key(s.cells[column]);
      if (a === null || b === null) return compare(a, b);  // empty cells last, whichever the order
      return descending ? -compare(a, b) : compare(a, b);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === column) th.setAttribute("data-order", descending ? "desc" : "asc");
      else th.removeAttribute("data-order");
    });
  }
  function name(th) { return th.textContent.replace(/[\u2191\u2193]/g, "").replace(/\s+/g, " ").trim(); }
  Array.prototype.forEach.call(document.querySelectorAll("table"), function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () {
        sortTable(table, i, th.getAttribute("data-order") === "asc");
      });
    });
  });
  var wanted = /[#&]sort=(-?)([^&]+)/.exec(window.location.hash);
  if (wanted) {
    var column = decodeURIComponent(wanted[2]);
    Array.prototype.forEach.call(document.querySelectorAll("table"), function (table) {
      if (!table.tHead) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
        if (name(th) === column) sortTable(table, i, wanted[1] === "-");
      });
    });
  }
  document.body.setAttribute("data-sortable", "ready");
})();
"""


def html_page(markdown_text: str, folder: Path, title: str) -> str:
    """``markdown_text`` (the report's index.md) as one HTML page, figures from ``folder`` inlined."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"], output_format="html")

    def inline(match: re.Match) -> str:
        source = html.unescape(match.group(2))
        path = folder / source
        if "/" in source or not path.is_file() or path.suffix.lower() != ".png":
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}data:image/png;base64,{data}{match.group(3)}'

    body = re.sub(r'(<img[^>]*\bsrc=")([^"]+)(")', inline, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
