"""Markdown tables for the benchmark scripts; torch-free, so light processes (the GPU check's stages) can
use it too."""
from __future__ import annotations


def markdown_table(columns: list[str], rows: list[list[object]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"

    rule = "| " + " | ".join(("-" * w) if i == 0 else ("-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])
