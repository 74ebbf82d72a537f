#!/usr/bin/env python3
"""Export the series commits of a patched tree back into patches/, in stable form.

The commits above refs/patches/upstream-head become patch files (git format-patch with a zero
commit id, full blob ids, no signature, no diffstat: nothing that changes between machines or
git versions).  Each commit's Patch-Filename trailer says which file it is; a commit without one
is a new patch, written under patches/<upstream>/ and named from its subject.

  tools/export.py                          # from the cache trees tools/apply.py made
  tools/export.py --checkout ~/src/vllm    # from your clone, after resolving or editing commits
  tools/export.py --check                  # CI lint: do patches/ files equal a fresh
                                           # apply-and-export? names the stale files

exit codes: 0 up to date / written · 1 --check found stale files · 2 bad input · 3 internal error
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchseries import cli, checkout, engine, report  # noqa: E402
from patchseries.exporting import compare, exported_patches  # noqa: E402
from patchseries.errors import EXIT_OK, EXIT_STOPPED, UserError, main_wrapper  # noqa: E402


def main(argv=None) -> int:
    ap = cli.command_parser("export", __doc__)
    ap.add_argument("--checkout", metavar="PATH", help="export from this clone instead of the cache tree")
    ap.add_argument("--upstream", help="only this upstream")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 naming stale patch files")
    cli.add_common_options(ap)
    args = ap.parse_args(argv)
    series, cache = cli.load(args)

    rows = []
    if args.checkout:
        tree = checkout.open_checkout(args.checkout)
        up = checkout.detect_upstream(series, tree, args.upstream)
        rows += compare(series, up, exported_patches(tree, up.name), args.check)
    else:
        ups = [series.upstream(args.upstream)] if args.upstream else list(series.upstreams.values())
        for up in ups:
            if not series.patches_for(up.name):
                continue
            if args.check:
                # Round trip on a fresh tree: apply the files, export them, compare.
                with tempfile.TemporaryDirectory(prefix="patchseries-export-") as tmp:
                    tree = cache.tree_at(up, Path(tmp) / "tree")
                    outcomes = engine.TreeApplier(tree).apply(
                        engine.load_items(series, series.patches_for(up.name)))
                    bad = [o for o in outcomes if o.outcome not in engine.SUCCESS]
                    if bad:
                        raise UserError(f"{bad[0].file} does not apply at the pin ({bad[0].outcome}): "
                                        "run tools/apply.py to see and resolve it")
                    rows += compare(series, up, exported_patches(tree, up.name), True)
            else:
                tree = cache.default_tree(up)
                if not tree.exists():
                    raise UserError(f"no cache tree for {up.name}: run tools/apply.py first")
                rows += compare(series, up, exported_patches(tree, up.name), False)

    stale = [r for r in rows if r["state"] in ("stale", "new")]
    if args.json:
        report.emit_json({"check": args.check, "files": rows, "ok": not (args.check and stale)})
    else:
        print(report.table(["upstream", "patch file", "state"],
                           [[r["upstream"], r["file"], r["state"]] for r in rows]))
        if args.check and stale:
            print(f"\n{len(stale)} patch file(s) differ from what the commits say: run tools/export.py",
                  file=sys.stderr)
        listed = {p.file for p in series.patches}
        for r in rows:
            if r["state"] in ("new", "written (new)") and r["file"] not in listed:
                print(f"new patch {r['file']}: add an entry for it to series.yaml", file=sys.stderr)
    return EXIT_STOPPED if args.check and stale else EXIT_OK


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
