#!/usr/bin/env python3
"""Apply the Gemma 4 patch series to vLLM / SGLang.

Where the patches go:
  (default)               the pinned upstream releases, fetched from the package index pip uses,
                          materialized as git trees in the cache (~/.cache/gemma4-series/trees/)
  --checkout PATH         your git clone of vLLM or SGLang (must have no uncommitted changes)
  --site-packages DIR     an installed package (Python files only, with a backup for --unapply)
  --python EXE            the same, for the site-packages of that interpreter

Each patch becomes one commit (`git am --3way`) carrying the patch's message; the upstream base is
recorded as refs/patches/upstream-head.  Re-running is safe: applied patches are recognised.

examples:
  tools/apply.py                                   # both upstreams, whole series, at the pins
  tools/apply.py --check --checkout ~/src/vllm     # what would happen, changing nothing
  tools/apply.py --checkout ~/src/vllm --upto gemma4-fa4-attention-backend
  tools/apply.py --continue --checkout ~/src/vllm  # after resolving a conflict and `git add`
  tools/apply.py --python ~/venvs/serve/bin/python --upstream sglang
  tools/apply.py --unapply --checkout ~/src/vllm

exit codes:
  0  every selected patch is applied (or already was); with --check: would apply
  1  stopped at a conflict (resolve, `git add`, --continue; or --abort), or --check found one
  2  bad input or a tree we refuse to touch: one line says why, nothing was changed
  3  internal error (a bug): the traceback is written to a log file
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchseries import cli, checkout, engine, report  # noqa: E402
from patchseries.errors import EXIT_OK, EXIT_STOPPED, UserError, main_wrapper  # noqa: E402
from patchseries.installed import InstalledPatcher, installed_version, site_packages_of  # noqa: E402


def parse_args(argv):
    ap = cli.command_parser("apply", __doc__)
    target = ap.add_mutually_exclusive_group()
    target.add_argument("--checkout", metavar="PATH", help="a git clone of vLLM or SGLang")
    target.add_argument("--site-packages", metavar="DIR", help="a site-packages holding vllm or sglang")
    target.add_argument("--python", metavar="EXE", help="patch the packages installed for this interpreter")
    ap.add_argument("--upstream", help="which upstream (default: all for the cache; detected for a checkout)")
    pick = ap.add_mutually_exclusive_group()
    pick.add_argument("--only", metavar="NAME", help="apply just this patch")
    pick.add_argument("--upto", metavar="NAME", help="apply the series up to and including this patch")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="dry run: report what would happen, change nothing")
    mode.add_argument("--continue", dest="cont", action="store_true", help="go on after resolving a conflict")
    mode.add_argument("--abort", action="store_true", help="undo an interrupted apply, back to the exact prior state")
    mode.add_argument("--unapply", action="store_true", help="return the tree to the upstream head / restore the files")
    ap.add_argument("--force", action="store_true", help="with --unapply on site-packages: restore even changed files")
    cli.add_common_options(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    series, cache = cli.load(args)
    results = []   # one dict per upstream
    if args.site_packages or args.python:
        site = Path(args.site_packages) if args.site_packages else site_packages_of(args.python)
        if not site.is_dir():
            raise UserError(f"{site}: no such site-packages directory")
        ups = [series.upstream(args.upstream)] if args.upstream else \
            [u for u in series.upstreams.values() if (site / u.package).is_dir()]
        if not ups:
            raise UserError(f"neither of {', '.join(series.upstreams)} is installed in {site}")
        for up in ups:
            results.append(apply_installed(series, up, site, args))
    elif args.checkout:
        tree = checkout.open_checkout(args.checkout)
        up = checkout.detect_upstream(series, tree, args.upstream)
        results.append(apply_tree(series, up, tree, args, is_user_checkout=True))
    else:
        ups = [series.upstream(args.upstream)] if args.upstream else list(series.upstreams.values())
        for up in ups:
            tree = cache.ensure_default_tree(up)
            results.append(apply_tree(series, up, tree, args, is_user_checkout=False))
    return finish(results, args)


def apply_tree(series, up, tree: Path, args, is_user_checkout: bool) -> dict:
    applier = engine.TreeApplier(tree)
    result = {"upstream": up.name, "target": str(tree), "mode": "git", "outcomes": [], "note": ""}
    if args.abort:
        applier.abort()
        result["note"] = "aborted: the tree is back where it was before the apply"
        return result
    if args.unapply:
        if applier.upstream_head() is None and not is_user_checkout:
            result["note"] = "nothing applied"
            return result
        n = applier.unapply()
        result["note"] = f"removed {n} series commit(s): the tree is at the upstream head"
        return result
    version = checkout.tree_version(tree, up)
    chosen, skipped = split_plan(series.plan(up.name, version, args.only, args.upto))
    items = engine.load_items(series, chosen)
    base = applier.upstream_head() or engine.git.head(tree)
    if is_user_checkout:
        result["note"] = checkout.pin_distance(tree, up, base)
    result["version"] = version
    if args.cont:
        outcomes = applier.continue_(items)
    elif args.check:
        applier.refuse_unsafe_start()
        outcomes = engine.dry_run(tree, items)
    else:
        outcomes = applier.apply(items)
    result["outcomes"] = merge_in_order(series, up, outcomes, skipped)
    return result


def split_plan(plan):
    chosen = [p for p, why in plan if why is None]
    skipped = [engine.PatchOutcome(p.name, p.file, engine.SKIPPED, why) for p, why in plan if why]
    return chosen, skipped


def merge_in_order(series, up, outcomes, skipped):
    """Applied and skipped patches together, in series order."""
    order = {p.name: i for i, p in enumerate(series.patches)}
    return sorted([*outcomes, *skipped], key=lambda o: order.get(o.name, len(order)))


def apply_installed(series, up, site: Path, args) -> dict:
    version = installed_version(site, up.artifact.name)
    patcher = InstalledPatcher(site, up)
    result = {"upstream": up.name, "target": str(site / up.package), "mode": "site-packages",
              "outcomes": [], "note": f"installed version {version}"}
    if args.unapply:
        n = patcher.unapply(force=args.force)
        result["note"] = f"restored {n} file(s) byte for byte"
        return result
    if args.cont or args.abort:
        raise UserError("--continue/--abort are for git trees: an installed package is patched all or nothing")
    chosen, skipped = split_plan(series.plan(up.name, version, args.only, args.upto))
    ranged = [p for p in chosen if p.versions]
    if version != up.artifact.version and not ranged:
        ranges = sorted({p.versions for p in series.patches if p.upstream == up.name and p.versions})
        raise UserError(f"installed {up.artifact.name} {version} is not supported: this series supports "
                        + ", ".join([up.artifact.version, *ranges]))
    if version != up.artifact.version:
        chosen = ranged   # an unranged patch is known to fit the pinned version only
    outcomes = patcher.apply(engine.load_items(series, chosen), check_only=args.check)
    result["outcomes"] = merge_in_order(series, up, outcomes, skipped)
    return result


def finish(results, args) -> int:
    stopped = any(o.outcome in (engine.CONFLICT,) for r in results for o in r["outcomes"])
    if args.json:
        report.emit_json({"results": [{**r, "outcomes": [o.to_dict() for o in r["outcomes"]]}
                                      for r in results],
                          "check": args.check, "ok": not stopped})
    else:
        rows = [row for r in results for row in report.outcome_rows(r["upstream"], r["outcomes"])]
        for r in results:
            print(f"{r['upstream']}: {r['target']}" + (f" — {r['note']}" if r["note"] else ""))
        if rows:
            print()
            print(report.table(["upstream", "patch", "outcome", "detail"], rows))
        if stopped and not args.check:
            r = next(r for r in results if any(o.outcome == engine.CONFLICT for o in r["outcomes"]))
            print(f"\nstopped at a conflict in {r['target']}: resolve the files, `git add` them, then\n"
                  f"  tools/apply.py --continue {target_flag(r)}\n"
                  f"or go back to where you were with\n  tools/apply.py --abort {target_flag(r)}")
    return EXIT_STOPPED if stopped else EXIT_OK


def target_flag(result) -> str:
    return f"--checkout {result['target']}" if result["mode"] == "git" else ""


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
