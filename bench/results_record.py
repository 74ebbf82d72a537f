"""Writing one benchmark's record: bench/results/NAME.json (the data) and NAME.md (the table)."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write(name: str, res: dict, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    md = RESULTS / f"{name}.md"
    md.write_text(markdown)
    print(f"recorded {md}")
    return md
