#!/usr/bin/env python3
"""Where the series stands: each upstream's pin, and for each patch whether it applies there.

For every upstream: the pinned release tag, commit and package-index artifact.  For every patch:
its status (carried / upstreamed / dropped), how it applies at the pin (applied, with offset,
3-way merged, conflict — each patch tried in order on a throwaway tree of the pinned release),
the files it touches and its upstream links.

  tools/status.py
  tools/status.py --upstream sglang --json

exit codes: 0 every carried patch applies at its pin · 1 some do not · 2 bad input · 3 internal error
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchseries import cli, engine, patch_file, report  # noqa: E402
from patchseries.errors import EXIT_OK, EXIT_STOPPED, main_wrapper  # noqa: E402


def main(argv=None) -> int:
    ap = cli.command_parser("status", __doc__)
    ap.add_argument("--upstream", help="only this upstream")
    cli.add_common_options(ap)
    args = ap.parse_args(argv)
    series, cache = cli.load(args)
    ups = [series.upstream(args.upstream)] if args.upstream else list(series.upstreams.values())

    data = []
    for up in ups:
        carried = series.patches_for(up.name)
        outcomes = {}
        if carried:
            with tempfile.TemporaryDirectory(prefix="patchseries-status-") as tmp:
                tree = cache.tree_at(up, Path(tmp) / "tree")
                for o in engine.TreeApplier(tree).apply(engine.load_items(series, carried),
                                                        stop_on_conflict=False):
                    outcomes[o.name] = o
        patches = []
        for p in series.patches_for(up.name, include_inactive=True):
            o = outcomes.get(p.name)
            path = series.patch_file(p)
            files = patch_file.touched_paths(path.read_bytes()) if path.exists() else []
            status = p.status + (f" in {p.upstreamed_in}" if p.upstreamed_in else "") + \
                (f": {p.reason}" if p.reason else "")
            patches.append({"name": p.name, "file": p.file, "status": status,
                            "at_pin": o.outcome if o else "not tried (not carried)",
                            "detail": o.detail if o else "", "files": files, "links": list(p.links),
                            "summary": p.summary})
        data.append({"upstream": up.name, "ref": up.ref, "commit": up.commit,
                     "artifact": f"{up.artifact.name} {up.artifact.version} ({up.artifact.kind})",
                     "patches": patches})

    bad = [p for u in data for p in u["patches"]
           if p["status"] == "carried" and p["at_pin"] not in engine.SUCCESS]
    if args.json:
        report.emit_json({"upstreams": data, "ok": not bad})
    else:
        for u in data:
            print(f"{u['upstream']}: pinned {u['ref']} (commit {u['commit'] or 'not recorded'}), "
                  f"source {u['artifact']}")
        print()
        rows = [[u["upstream"], p["name"], p["status"], p["at_pin"],
                 "\n".join(p["files"]), "\n".join(p["links"])] for u in data for p in u["patches"]]
        print(report.table(["upstream", "patch", "status", "at the pin", "files", "links"], rows))
    return EXIT_STOPPED if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
