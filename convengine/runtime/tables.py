"""Plain-text tables: the one printer behind every table convengine shows a person.

``convengine backends``, ``explain`` (a :class:`~convengine.core.selection.Decision`), ``run``,
``summary`` and ``bench`` all print rows of short cells under a header; one function lays
them out, so they look alike and a change of style happens in one place. Columns are two
spaces apart and as wide as their widest cell; trailing spaces are dropped, so a last
column of free text (a reason, a note) costs nothing however long it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def format_table(header: Sequence[object], rows: Iterable[Sequence[object]], *, right: Iterable[int] = (),
                 footer: Iterable[Sequence[object]] = (), rules: bool = False) -> str:
    """``header``, ``rows`` and ``footer`` (sequences of cells, ``str()``-ed) as aligned lines.

    ``right``: indices of the columns aligned right (numbers); the others align left.
    ``rules``: a line of dashes under the header and above the footer (when there is one).
    """
    head = [str(cell) for cell in header]
    body = [[str(cell) for cell in row] for row in rows]
    foot = [[str(cell) for cell in row] for row in footer]
    table = [head, *body, *foot]
    columns = max(len(row) for row in table)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(columns)]
    right = set(right)

    def line(row: list[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = ["-" * (sum(widths) + 2 * (columns - 1))] if rules else []
    lines = [line(head), *rule, *map(line, body)]
    if foot:
        lines += [*rule, *map(line, foot)]
    return "\n".join(lines)
