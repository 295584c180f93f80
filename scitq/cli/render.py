"""How the CLI shows things: rich tables by default, JSON with --json."""
import json
import sys
from datetime import datetime, timezone

import click
from rich.console import Console
from rich.table import Table

# Piped output keeps whole rows rather than folding them at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def print_json(data):
    click.echo(json.dumps(data, indent=2))


def table(rows, columns, title=None):
    """rows: dicts; columns: (header, key or function) pairs."""
    t = Table(title=title, show_edge=False, header_style="bold")
    for header, _ in columns:
        t.add_column(header, overflow="fold")
    for row in rows:
        t.add_row(*[_cell(key(row) if callable(key) else row.get(key)) for _, key in columns])
    console.print(t)


def _cell(value):
    if value is None:
        return "-"
    return str(value)


def ago(iso):
    if not iso:
        return "-"
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(0, int(seconds))}s ago"


def short(text, width=60):
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def write_bytes(data, err=False):
    out = sys.stderr if err else sys.stdout
    out.buffer.write(data)
    out.buffer.flush()
