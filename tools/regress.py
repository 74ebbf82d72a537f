#!/usr/bin/env python3
"""Regression-test every patch in both directions: FAIL on the unpatched pin, PASS when patched.

For each upstream: build (once, cached) the Python environment its tests need from
tests/regression/<upstream>/requirements.txt, materialize the pinned release twice, and walk the
series: after applying patch N, run patch N's tests on the tree patched through N and on the
unpatched tree.  Tests marked `keeps_upstream` (behaviour the patch must keep) must pass on both.
Upstream's own unit tests listed for the patch run on both trees too; any that the patch breaks
is reported.  The upstream package is imported from the tree itself (PYTHONPATH), never from
the environment's own site-packages.

  tools/regress.py                       # all patches, CPU tests
  tools/regress.py --patch gemma4-moe-swa-full-tokens-ratio --json
  tools/regress.py --gpu                 # the GPU tier (on a machine with a CUDA device)
  # the GPU tier against an installed build (compiled kernels; tools/build.py, or its offline bundle):
  tools/regress.py --gpu --upstream vllm --site-packages /opt/vllm/site-packages --env-python python3

With --site-packages the unpatched side is that directory, imported as it is and never modified;
the patched side is a copy of it patched by the same code as `tools/apply.py --site-packages`
(package files only), through each patch in turn.  Directories that the site's .pth files name
go on PYTHONPATH too, as site.addsitedir would add them.  Both sides' paths reach the tests as
$SERIES_UPSTREAM_TREE (the side under test) and $SERIES_UNPATCHED_TREE; $SERIES_RUN_SCRATCH is a
folder shared by all test runs of one invocation (e.g. to run a reference engine once).

exit codes: 0 every patch verified both ways · 1 some patch is not (the table says why)
            2 bad input · 3 internal error
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchseries import cli, engine, report  # noqa: E402
from patchseries.errors import EXIT_OK, EXIT_STOPPED, UserError, main_wrapper  # noqa: E402
from patchseries.installed import InstalledPatcher, pth_dirs  # noqa: E402
from patchseries.pyenv import PythonEnv  # noqa: E402
from patchseries.regression import judge_patch_tests, judge_upstream_tests, run_both, run_pytest  # noqa: E402


def main(argv=None) -> int:
    ap = cli.command_parser("regress", __doc__)
    ap.add_argument("--upstream", help="only this upstream")
    ap.add_argument("--patch", metavar="NAME", help="only this patch (the ones before it are applied too)")
    ap.add_argument("--gpu", action="store_true", help="run the GPU tests (tests.gpu) instead of the CPU ones")
    ap.add_argument("--no-upstream-tests", action="store_true", help="skip upstream's own unit tests")
    ap.add_argument("--env-python", metavar="EXE", help="use this interpreter instead of building an environment")
    ap.add_argument("--site-packages", metavar="DIR", help="test this installed upstream (a site-packages "
                    "directory holding the pinned release) instead of a tree materialized from the pin; "
                    "needs --upstream or --patch")
    cli.add_common_options(ap)
    args = ap.parse_args(argv)
    series, cache = cli.load(args)
    only = series.patch(args.patch) if args.patch else None
    ups = [series.upstream(args.upstream)] if args.upstream else list(series.upstreams.values())
    if only:
        ups = [series.upstream(only.upstream)]
    if args.site_packages:
        if len(ups) != 1:
            raise UserError("--site-packages holds one upstream: name it with --upstream or --patch")
        if not (Path(args.site_packages) / ups[0].package).is_dir():
            raise UserError(f"no '{ups[0].package}' package in {args.site_packages}")

    results = []
    for up in ups:
        carried = series.patches_for(up.name)
        if not carried:
            continue
        results += regress_upstream(series, up, carried, only, args, cache)

    bad = [r for r in results if r["problems"]]
    if args.json:
        report.emit_json({"tier": "gpu" if args.gpu else "cpu", "patches": results, "ok": not bad})
    else:
        rows = [[r["upstream"], r["name"], r["unpatched"], r["patched"], r["upstream_tests"],
                 r.get("verdict", "ok") if not r["problems"]
                 else "NOT OK\n" + "\n".join(f"- {p}" for p in r["problems"])]
                for r in results]
        print(report.table(["upstream", "patch", "unpatched (must fail)", "patched (must pass)",
                            "upstream tests", "verdict"], rows))
    return EXIT_STOPPED if bad else EXIT_OK


def say(args, msg):
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def regress_upstream(series, up, carried, only, args, cache) -> list[dict]:
    if args.env_python:
        python = Path(args.env_python)
    else:
        reqs = series.root / "tests" / "regression" / up.name / "requirements.txt"
        python = PythonEnv.for_requirements(cache.root, f"{up.name}-{up.artifact.version}", reqs,
                                            progress=not args.json).python
    config = series.root / "tests" / "regression" / "pytest.ini"
    items = engine.load_items(series, carried)
    results = []
    with tempfile.TemporaryDirectory(prefix="patchseries-regress-") as tmp:
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        if args.site_packages:
            unpatched = Path(args.site_packages).resolve()
            patched = Path(tmp) / "patched" / "site-packages"
            say(args, f"copying {unpatched} for the patched side")
            shutil.copytree(unpatched, patched, symlinks=True)
            import_paths = lambda site: [site, *pth_dirs(site)]  # noqa: E731
            applier = SiteApplier(patched, up)
        else:
            unpatched = cache.tree_at(up, Path(tmp) / "unpatched")
            patched = cache.tree_at(up, Path(tmp) / "patched")
            import_paths = lambda tree: [tree / up.layout.prefix.rstrip("/")]  # noqa: E731
            applier = engine.TreeApplier(patched)
        env = {"SERIES_UNPATCHED_TREE": str(unpatched), "SERIES_RUN_SCRATCH": str(scratch)}
        blocked = None
        for i, patch in enumerate(carried):
            if blocked is None:
                outcome = applier.apply(items[: i + 1])[-1]
                if outcome.outcome not in engine.SUCCESS:
                    blocked = f"{patch.name} does not apply ({outcome.outcome}: {outcome.detail})"
                    applier.abort()
            if only and patch.name != only.name:
                continue
            ids = list(patch.tests.gpu if args.gpu else patch.tests.cpu)
            row = {"upstream": up.name, "name": patch.name, "unpatched": "", "patched": "",
                   "upstream_tests": "", "problems": [], "tests": {}}
            results.append(row)
            if blocked:
                row["problems"].append(blocked)
                continue
            if not ids and args.gpu:
                # the GPU tier is for claims about a GPU; the CPU tier verifies every patch
                row["unpatched"] = row["patched"] = "no GPU tests listed"
                row["verdict"] = "not in this tier"
                continue
            if not ids:
                row["problems"].append("no CPU regression tests listed in series.yaml")
                continue
            t0 = time.monotonic()
            say(args, f"{patch.name}: running {len(ids)} test module(s) unpatched and patched")
            # a module may hold CPU and GPU tests of one patch: each tier runs its own
            tier = ["-m", "gpu"] if args.gpu else ["-m", "not gpu"]
            before, after = run_both(
                lambda: run_pytest(python, ids, unpatched, import_paths(unpatched), series.root, config,
                                   extra_env=env, pytest_args=tier),
                lambda: run_pytest(python, ids, patched, import_paths(patched), series.root, config,
                                   extra_env=env, pytest_args=tier),
                parallel=not args.gpu)
            row["unpatched"], row["patched"] = before.summary(), after.summary()
            row["tests"] = {n: {"unpatched": before.records.get(n, {}).get("outcome", "absent"),
                                "patched": r["outcome"], "keeps_upstream": r["keeps_upstream"]}
                            for n, r in after.records.items()}
            row["problems"] += judge_patch_tests(before, after)
            if patch.tests.upstream and not args.no_upstream_tests and not args.gpu \
                    and not args.site_packages:
                standins = series.root / "tests" / "regression" / up.name / "conftest.py"
                standins = standins if standins.is_file() else None
                ub, ua = run_both(
                    lambda: run_pytest(python, list(patch.tests.upstream), unpatched, import_paths(unpatched),
                                       unpatched, None, plugin=standins),
                    lambda: run_pytest(python, list(patch.tests.upstream), patched, import_paths(patched),
                                       patched, None, plugin=standins),
                    parallel=True)
                row["upstream_tests"] = f"unpatched: {ub.summary()}\npatched: {ua.summary()}"
                row["upstream_results"] = {n: {"unpatched": ub.records.get(n, {}).get("outcome", "absent"),
                                               "patched": r["outcome"]} for n, r in ua.records.items()}
                row["problems"] += judge_upstream_tests(ub, ua)
            row["seconds"] = round(time.monotonic() - t0, 1)
    return results


class SiteApplier:
    """The series through patch N on an installed copy: undo what is there, apply items (as
    tools/apply.py --site-packages does; an install carries one selection at a time)."""

    def __init__(self, site: Path, upstream):
        self.patcher = InstalledPatcher(site, upstream)

    def apply(self, items):
        if self.patcher.manifest():
            self.patcher.unapply()
        return self.patcher.apply(items)

    def abort(self):
        pass   # a failed install leaves the files as they were (all or nothing)


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
