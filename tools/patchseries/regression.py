"""Running a patch's regression tests on a tree, and judging them in both directions.

A patch's own tests must FAIL on the unpatched upstream and PASS with the series applied through
the patch; tests marked `keeps_upstream` (behaviour the patch must not change) must pass on both.
Upstream's own unit tests for the touched files must not go from passing to failing.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "pytest_plugins"
PASSED, FAILED, ERROR, SKIPPED, ABSENT = "passed", "failed", "error", "skipped", "absent"


@dataclass
class TestRun:
    records: dict[str, dict] = field(default_factory=dict)   # nodeid -> {outcome, keeps_upstream, message}
    returncode: int = 0
    output_tail: str = ""

    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records.values():
            out[r["outcome"]] = out.get(r["outcome"], 0) + 1
        return out

    def summary(self) -> str:
        c = self.count()
        if not c:
            return "no tests ran"
        return ", ".join(f"{n} {k}" for k, n in sorted(c.items()))


def run_pytest(python: Path, test_ids: list[str], tree: Path, import_paths: list[Path], cwd: Path,
               config: Path | None, extra_env: dict | None = None, timeout=1800,
               plugin: Path | None = None, pytest_args: list[str] = ()) -> TestRun:
    """Run pytest in an upstream environment with the tree importable; collect per-test records.

    import_paths: what goes first on PYTHONPATH (the tree's import root, and for an installed
    site-packages the folders its .pth files name).
    plugin: a conftest.py loaded instead of the tree's own conftest files (for upstream's unit
    tests, whose conftest needs a GPU machine's packages): our stand-ins for compiled extensions."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        results = Path(f.name)
    env = {**os.environ, **(extra_env or {}),
           "PYTHONPATH": os.pathsep.join([*map(str, import_paths), str(PLUGIN_DIR)]
                                         + ([str(plugin.parent)] if plugin else [])),
           "SERIES_UPSTREAM_TREE": str(tree), "SERIES_RESULTS_JSON": str(results),
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [str(python), "-m", "pytest", "-p", "series_results", "-q", "--no-header", "-rN"]
    if config:
        cmd += ["-c", str(config), "--rootdir", str(config.parent)]
    if plugin:
        cmd += ["--noconftest", "-p", plugin.stem]
    cmd += [*pytest_args, *test_ids]
    try:
        p = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, f"timed out after {timeout}s"
    try:
        records = {r["nodeid"]: r for r in json.loads(results.read_text() or "[]")}
    except (json.JSONDecodeError, FileNotFoundError):
        records = {}
    finally:
        results.unlink(missing_ok=True)
    if not records and rc != 0:
        records = {"<session>": {"nodeid": "<session>", "outcome": ERROR, "keeps_upstream": False,
                                 "message": (tail.strip().splitlines() or ["pytest failed"])[-1]}}
    return TestRun(records, rc, tail)


def run_both(unpatched, patched, parallel: bool) -> tuple[TestRun, TestRun]:
    """Run the unpatched and the patched side (two calls of run_pytest) at once when parallel: the
    CPU tier's pytest processes share nothing but the machine's cores.  The GPU tier runs them one
    after the other (one GPU, and its tests share a scratch folder)."""
    if not parallel:
        return unpatched(), patched()
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=2) as pool:
        before, after = pool.submit(unpatched), pool.submit(patched)
        return before.result(), after.result()


def judge_patch_tests(unpatched: TestRun, patched: TestRun) -> list[str]:
    """Problems with a patch's own tests (empty: verified both ways)."""
    problems = []
    verified = 0
    for nodeid, after in patched.records.items():
        before = unpatched.records.get(nodeid, {"outcome": ABSENT})
        if after["outcome"] == SKIPPED:
            continue
        if after["outcome"] != PASSED:
            problems.append(f"{nodeid}: {after['outcome']} when patched ({after['message']})")
        elif after["keeps_upstream"]:
            if before["outcome"] != PASSED:
                problems.append(f"{nodeid}: marked keeps_upstream but {before['outcome']} unpatched")
        elif before["outcome"] == PASSED:
            problems.append(f"{nodeid}: passes on the unpatched upstream, so it does not test the fix")
        else:
            verified += 1
    for nodeid, before in unpatched.records.items():
        if nodeid not in patched.records and nodeid not in ("<session>", "<collection>"):
            problems.append(f"{nodeid}: ran unpatched but not patched")
    if not verified and not problems:
        problems.append("no test failed unpatched and passed patched: the fix is not verified")
    return problems


def judge_upstream_tests(unpatched: TestRun, patched: TestRun) -> list[str]:
    """Upstream tests the patch breaks: passing before, not passing after."""
    problems = []
    for nodeid, after in patched.records.items():
        before = unpatched.records.get(nodeid, {"outcome": ABSENT})
        if after["outcome"] in (FAILED, ERROR) and before["outcome"] in (PASSED, ABSENT):
            problems.append(f"upstream test {nodeid}: {before['outcome']} unpatched, "
                            f"{after['outcome']} patched ({after['message']})")
    return problems
