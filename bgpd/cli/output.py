"""CLI output: aligned human tables (colored on a TTY) or JSON for scripts.

Every CLI command builds a list of row dicts and hands it here, so `-o json`
and the table always show the same data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

import click

_STATE_COLORS = {"established": "green", "up": "green", "ok": "green", "yes": "green",
                 "down": "red", "idle": "red", "error": "red", "no": "red",
                 "connect": "yellow", "active": "yellow", "pending": "yellow"}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[Mapping], columns: Sequence[str], headers: Sequence[str] | None = None,
          color: bool | None = None) -> str:
    """Aligned columns; state-like words colored when writing to a terminal."""
    headers = list(headers or [c.upper() for c in columns])
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    color = sys.stdout.isatty() if color is None else color
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        parts = []
        for text, width in zip(row, widths, strict=True):
            padded = text.ljust(width)
            fg = _STATE_COLORS.get(text.lower()) if color else None
            parts.append(click.style(padded, fg=fg) if fg else padded)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def emit(data, fmt: str, columns: Sequence[str] | None = None,
         headers: Sequence[str] | None = None) -> None:
    """Print ``data`` (list of row dicts, or one dict) as a table or JSON."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    if isinstance(data, Mapping):
        width = max((len(k) for k in data), default=0)
        for k, v in data.items():
            click.echo(f"{k.ljust(width)}  {_cell(v)}")
        return
    if not data:
        click.echo("(none)")
        return
    click.echo(table(data, columns or list(data[0].keys()), headers))


output_option = click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="Output format.")
