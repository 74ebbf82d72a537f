#!/usr/bin/env python3
"""Carry one upstream's patches onto a new upstream release (or a commit of your checkout).

Each patch is applied in order onto the new base with a 3-way merge and classified:
  applied · applied with offset · 3-way merged · conflict (files and hunks) ·
  already upstream (reverse-applies, or the same patch id is in upstream's history) ·
  fixed upstream differently (its regression tests already pass on the new, unpatched base) ·
  dropped (by you, with --skip and a reason).
On a conflict it stops with ordinary git conflict markers in the tree it names.  Then:
  resolve, `git add`, and   tools/rebase.py UPSTREAM --continue
  or drop the patch:        tools/rebase.py UPSTREAM --skip --reason "why"
  or go back:               tools/rebase.py UPSTREAM --abort   (same HEAD, refs, files as before)
An interrupted run (Ctrl-C, kill -9) is continued or aborted the same way.

When every patch is through, it re-exports the refreshed patch files, updates series.yaml (the
pin for a release; each patch's status — upstreamed ones keep their file and get `versions: <X`),
runs every carried patch's regression tests on the new base (must fail unpatched, pass patched),
and writes a report (markdown and JSON) with the outcome and the `git range-diff` of each patch.

  tools/rebase.py vllm --onto 0.21.0                      # a release, from the package index
  tools/rebase.py vllm --onto v0.21.0 --checkout ~/src/vllm   # a commit of your clone
                                                          # (which must have the series applied)

exit codes: 0 rebased and verified · 1 stopped at a conflict, or a regression check failed
            2 bad input (nothing changed) · 3 internal error
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchseries import cli, checkout, engine, git, report  # noqa: E402
from patchseries.errors import EXIT_OK, EXIT_STOPPED, UserError, main_wrapper  # noqa: E402
from patchseries.pyenv import PythonEnv  # noqa: E402
from patchseries.rebasing import NewBase, SeriesRebase  # noqa: E402
from patchseries.regression import PASSED, judge_patch_tests, run_pytest  # noqa: E402
from patchseries.upstream_cache import release_tag  # noqa: E402


def parse_args(argv):
    ap = cli.command_parser("rebase", __doc__)
    ap.add_argument("upstream", help="vllm or sglang")
    ap.add_argument("--onto", metavar="REF", help="a release version (0.21.0) or, with --checkout, a commit-ish")
    ap.add_argument("--checkout", metavar="PATH", help="rebase in your clone instead of the cache")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--continue", dest="cont", action="store_true", help="go on after resolving a conflict")
    mode.add_argument("--skip", action="store_true", help="drop the conflicting patch (needs --reason)")
    mode.add_argument("--abort", action="store_true", help="back to exactly where things were before")
    ap.add_argument("--reason", default="", help="why a skipped patch is dropped (recorded in series.yaml)")
    ap.add_argument("--no-tests", action="store_true", help="skip the regression runs (classification "
                    "then cannot detect 'fixed upstream differently')")
    ap.add_argument("--env-python", metavar="EXE", help="interpreter for the regression tests")
    ap.add_argument("--report-dir", metavar="DIR", help="where the report goes (default: reports/ in the project)")
    cli.add_common_options(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    series, cache = cli.load(args)
    up = series.upstream(args.upstream)
    resuming = args.cont or args.skip or args.abort
    if not resuming and not args.onto:
        raise UserError("say where to rebase to: --onto VERSION (or a commit-ish with --checkout)")

    if args.checkout:
        tree = checkout.open_checkout(args.checkout)
        checkout.detect_upstream(series, tree, up.name)
    else:
        tree = cache.root / "rebase" / up.name
    runner = TestRunner(series, up, cache, args)

    if resuming:
        if not (tree / ".git").exists():
            raise UserError(f"no rebase of {up.name} in progress (no tree at {tree})")
        rb = SeriesRebase(tree, series, up, series.root)
        if args.abort:
            rb.abort()
            if not args.checkout:
                shutil.rmtree(tree)
            restored = str(tree) if args.checkout else "series.yaml and patches/"
            if args.json:
                report.emit_json({"aborted": True, "restored": restored, "patches": []})
            else:
                print(f"aborted: {restored} back as before")
            return EXIT_OK
        state = rb.skip(args.reason, runner.fixed_upstream) if args.skip else rb.continue_(runner.fixed_upstream)
    else:
        onto = resolve_onto(args, cache, up, tree)
        rb = SeriesRebase(tree, series, up, series.root)
        state = rb.run(rb.start(onto), runner.fixed_upstream)
    return conclude(rb, state, args, cache, runner, tree)


def resolve_onto(args, cache, up, tree: Path) -> NewBase:
    if args.checkout:
        commit = git.rev_parse(tree, args.onto)
        if commit is None:
            raise UserError(f"--onto {args.onto}: not a commit of {tree}")
        if engine.TreeApplier(tree).upstream_head() is None:
            raise UserError(f"{tree} has no series applied (no {engine.UPSTREAM_HEAD_REF}): "
                            "run tools/apply.py --checkout first")
        return NewBase(args.onto, commit, None)
    version = args.onto.removeprefix("v")
    if (tree / ".git").exists():
        if SeriesRebase(tree, None, up, Path(".")).state() is not None:
            raise UserError(f"a rebase of {up.name} is already in progress in {tree}: "
                            "use --continue, --skip --reason '...', or --abort")
        shutil.rmtree(tree)   # a finished earlier rebase: the cache tree is ours to renew
    cache.release_commit(up)              # old pin first, so the new release is its child
    new = cache.release_commit(up, version)
    tree.parent.mkdir(parents=True, exist_ok=True)
    cache.tree_at(up, tree)
    return NewBase(args.onto, new, version)


class TestRunner:
    """Runs a patch's CPU regression tests on given commits of the rebase tree."""

    def __init__(self, series, up, cache, args):
        self.series, self.up, self.cache, self.args = series, up, cache, args
        self._python = None

    @property
    def python(self) -> Path:
        if self._python is None:
            if self.args.env_python:
                self._python = Path(self.args.env_python)
            else:
                reqs = self.series.root / "tests" / "regression" / self.up.name / "requirements.txt"
                self._python = PythonEnv.for_requirements(self.cache.root, f"{self.up.name}-"
                                                          f"{self.up.artifact.version}", reqs).python
        return self._python

    def run(self, patch, commit, tree: Path):
        with tempfile.TemporaryDirectory(prefix="patchseries-rebase-test-") as tmp:
            clone = Path(tmp) / "tree"
            git.clone_shared(tree, clone, commit)
            root = clone / self.up.layout.prefix.rstrip("/")
            return run_pytest(self.python, list(patch.tests.cpu), clone, [root], self.series.root,
                              self.series.root / "tests" / "regression" / "pytest.ini")

    def fixed_upstream(self, patch, new_base) -> tuple[bool, str | None]:
        """(do the patch's own tests already pass on the new base without it, their summary)."""
        if self.args.no_tests or not patch.tests.cpu:
            return False, None
        say(self.args, f"{patch.name}: do its regression tests already pass on the new base?")
        run = self.run(patch, new_base, self.tree_of())
        fix_tests = [r for r in run.records.values() if not r["keeps_upstream"]]
        return bool(fix_tests) and all(r["outcome"] == PASSED for r in fix_tests), run.summary()

    def tree_of(self) -> Path:
        return Path(self.args.checkout).resolve() if self.args.checkout else \
            self.cache.root / "rebase" / self.up.name


def say(args, msg):
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def conclude(rb: SeriesRebase, state, args, cache, runner, tree) -> int:
    rows = rb.outcomes(state)
    if not state["finished"]:
        emit(args, rows, None, tree, stopped=True)
        return EXIT_STOPPED
    pin = None
    version = state["onto"]["version"]
    if version:
        pin = {"ref": release_tag(version), "commit": recorded_commit_id(tree, rb.up, state["onto"]["commit"]),
               "sha256": cache.release_sha256(rb.up, version)}
    written = rb.write_results(state, rows, pin)
    for r in rows:
        r["range_diff"] = rb.range_diff(r["old_commit"], r["new_commit"])
        r["regression"] = []
        if r["new_commit"] and not args.no_tests:
            patch = rb.series.patch(r["name"])
            if patch.tests.cpu:
                say(args, f"{patch.name}: regression tests on the new base, unpatched and patched")
                r["regression"] = judge_patch_tests(runner.run(patch, state["onto"]["commit"], tree),
                                                    runner.run(patch, r["new_commit"], tree)) or ["ok"]
    report_paths = write_report(rb, state, rows, written, args)
    rb.complete(state)
    failed = [r for r in rows if r["regression"] not in ([], ["ok"])]
    emit(args, rows, report_paths, tree, stopped=False)
    return EXIT_STOPPED if failed else EXIT_OK


def recorded_commit_id(tree: Path, up, commit: str) -> str | None:
    """The upstream commit id a release records (vLLM: _version.py's __commit_id__ 'g<hex>')."""
    path = f"{up.layout.prefix}{up.package}/_version.py"
    r = git.run(tree, "show", f"{commit}:{path}", check=False)
    m = re.search(r"__commit_id__\s*=\s*commit_id\s*=\s*'g?([0-9a-f]{7,40})'", r.stdout) if r.returncode == 0 else None
    return m.group(1) if m else None


def write_report(rb, state, rows, written, args) -> list[str]:
    out_dir = Path(args.report_dir) if args.report_dir else rb.series.root / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    onto = state["onto"]["version"] or state["onto"]["label"]
    stem = out_dir / f"rebase-{rb.up.name}-{str(onto).replace('/', '_')}"
    data = {"upstream": rb.up.name, "onto": state["onto"], "old_base": state["old"].get("base"),
            "rewritten_patch_files": written, "patches": rows}
    Path(f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [f"# Rebase of {rb.up.name} onto {onto}", "",
          "| patch | outcome | detail | regression (unpatched fails, patched passes) |",
          "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['name']} | {r['outcome']} | {r['detail'] or ''} | "
                  f"{'; '.join(r.get('regression') or []) or 'not run'} |")
    for r in rows:
        if r.get("range_diff"):
            md += ["", f"## {r['name']}: range-diff old → new", "", "```", r["range_diff"].rstrip(), "```"]
    Path(f"{stem}.md").write_text("\n".join(md) + "\n")
    return [f"{stem}.md", f"{stem}.json"]


def emit(args, rows, report_paths, tree, stopped):
    if args.json:
        report.emit_json({"stopped": stopped, "tree": str(tree), "patches": rows, "report": report_paths})
        return
    table = [[r["name"], r["outcome"], (r["detail"] or "") + "".join(
        f"\n  {c['file']}" + "".join(f"\n    {h}" for h in c["hunks"]) for c in r.get("conflicts", [])),
        "\n".join(r.get("regression") or [])] for r in rows]
    print(report.table(["patch", "outcome", "detail", "regression"], table))
    if stopped:
        print(f"\nstopped at a conflict in {tree}: resolve the files and `git add` them, then\n"
              f"  tools/rebase.py {args.upstream} --continue{checkout_flag(args)}\n"
              f"or drop the patch:  tools/rebase.py {args.upstream} --skip --reason '...'{checkout_flag(args)}\n"
              f"or go back:         tools/rebase.py {args.upstream} --abort{checkout_flag(args)}")
    elif report_paths:
        print(f"\nreport: {report_paths[0]} (and .json)")


def checkout_flag(args) -> str:
    return f" --checkout {args.checkout}" if args.checkout else ""


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
