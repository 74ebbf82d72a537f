"""Rendering results: aligned text tables for people, JSON for machines."""
from __future__ import annotations

import json
import sys


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table; cells may hold several lines."""
    split = [[str(c).splitlines() or [""] for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in split:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in cell))
    def fmt(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [fmt(headers), fmt(["-" * w for w in widths])]
    for row in split:
        height = max(len(c) for c in row)
        for k in range(height):
            out.append(fmt([c[k] if k < len(c) else "" for c in row]))
    return "\n".join(out)


def emit_json(data):
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def outcome_rows(upstream: str, outcomes) -> list[list[str]]:
    rows = []
    for o in outcomes:
        detail = o.detail
        for c in o.conflicts:
            detail += f"\n  {c['file']}" + "".join(f"\n    {h}" for h in c["hunks"])
        rows.append([upstream, o.name, o.outcome, detail.strip("\n")])
    return rows
