"""tools/rebase.py on small synthetic upstream histories: every outcome, continue/skip/abort, kill -9."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import commit_all, numbered, sh, tree_snapshot, write
from patchseries import git

FIX_TEST = '''
def test_ratio_is_lowered():
    from toy.settings import RATIO
    assert RATIO == 0.15
'''


def rebase(project, tree, *args, env=None):
    return project.tool("rebase", "toy", "--checkout", tree, "--env-python", sys.executable,
                        "--report-dir", project.root / "reports", *args, env=env)


def as_json(result):
    return {r["name"]: r for r in json.loads(result.stdout)["patches"]}


def project_state(project, tree):
    files = {str(p.relative_to(project.root)): p.read_bytes()
             for p in sorted(project.root.rglob("*")) if p.is_file() and "reports" not in p.parts}
    return {"tree": tree_snapshot(tree), "project": files}


@pytest.fixture
def history(project, tmp_path):
    """Upstream 1.0 with the series applied in a clone; upstream 1.1 made by the test."""
    project.make_patch("stays-clean", {"toy/config.py": numbered(30, "cfg").replace("cfg 25\n", "cfg 25 fixed\n")})
    project.make_patch("moves", {"toy/model.py": numbered(40).replace("line 30\n", "line thirty\n")})
    project.make_patch("settings", {"toy/settings.py": "RATIO = 0.15\n"})
    text = project.series.read_text()
    marker = "    file: toy/settings.patch\n"
    i = text.index("    status: carried\n", text.index(marker))
    text = text[:i] + "    status: carried\n    tests:\n      cpu: [tests/regression/toy/test_settings.py]\n" + \
        text[i + len("    status: carried\n"):]
    project.series.write_text(text)
    (project.root / "tests/regression/toy").mkdir(parents=True)
    (project.root / "tests/regression/toy/test_settings.py").write_text(FIX_TEST)
    (project.root / "tests/regression/pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    tree = project.clone(tmp_path / "tree")
    assert project.tool("apply", "--checkout", tree).returncode == 0
    return project, tree


def upstream_release(tree, changes: dict, message="upstream 1.1") -> str:
    """Make the next upstream release as a commit on top of 1.0 in the same clone (like a fetch)."""
    base = git.rev_parse(tree, "v1.0")
    branch_head = git.head(tree)
    sh(tree, "checkout", "--quiet", "--detach", base)
    write(tree, changes)
    new = commit_all(tree, message)
    sh(tree, "tag", "v1.1", new)
    sh(tree, "checkout", "--quiet", "work")
    assert git.head(tree) == branch_head
    return new


def test_each_patch_is_classified_and_the_series_refreshed(history):
    project, tree = history
    upstream_release(tree, {"toy/model.py": "header\n" * 2 + numbered(40)})

    r = rebase(project, tree, "--onto", "v1.1", "--json")

    assert r.returncode == 0, r.stdout + r.stderr
    out = as_json(r)
    assert {n: o["outcome"] for n, o in out.items()} == {
        "stays-clean": "applied", "moves": "applied with offset", "settings": "applied"}
    assert out["settings"]["regression"] == ["ok"]
    assert "@@ -29,7 +29,7 @@" in (project.root / "patches/toy/moves.patch").read_text()  # refreshed
    assert git.rev_parse(tree, "refs/patches/upstream-head") == git.rev_parse(tree, "v1.1")
    assert git.symbolic_head(tree) == "refs/heads/work"
    report = (project.root / "reports/rebase-toy-v1.1.md").read_text()
    assert "| moves | applied with offset |" in report and "range-diff" in report


def test_three_way_and_already_upstream(history):
    project, tree = history
    upstream_release(tree, {
        "toy/model.py": numbered(40).replace("line 33\n", "line 33 upstream\n"),       # context changed
        "toy/config.py": numbered(30, "cfg").replace("cfg 25\n", "cfg 25 fixed\n"),     # same fix upstream
    })

    out = as_json(rebase(project, tree, "--onto", "v1.1", "--json"))

    assert out["moves"]["outcome"] == "3-way merged"
    assert out["stays-clean"]["outcome"] == "already upstream"
    series = (project.root / "series.yaml").read_text()
    assert "status: upstreamed" in series and "upstreamed_in: '1.1'" in series and "versions: <1.1" in series
    assert (project.root / "patches/toy/stays-clean.patch").exists()


def test_same_patch_id_in_upstream_history_is_already_upstream(history):
    project, tree = history
    base = git.rev_parse(tree, "v1.0")
    sh(tree, "checkout", "--quiet", "--detach", base)
    write(tree, {"toy/config.py": numbered(30, "cfg").replace("cfg 25\n", "cfg 25 fixed\n")})
    commit_all(tree, "upstream cherry-picked the fix")
    write(tree, {"toy/config.py": numbered(30, "cfg").replace("cfg 25\n", "cfg 25 fixed\n")
                 .replace("cfg 24\n", "cfg 24 later\n")})
    commit_all(tree, "upstream then changed the context")
    sh(tree, "tag", "v1.1")
    sh(tree, "checkout", "--quiet", "work")

    out = as_json(rebase(project, tree, "--onto", "v1.1", "--json"))

    assert out["stays-clean"]["outcome"] == "already upstream"
    assert "same patch id as upstream commit" in out["stays-clean"]["detail"]


def test_fixed_upstream_differently_is_found_by_the_patch_regression_test(history):
    project, tree = history
    upstream_release(tree, {"toy/settings.py": "# upstream's own way\nRATIO = 3 / 20\n"})

    r = rebase(project, tree, "--onto", "v1.1", "--json")

    out = as_json(r)
    assert out["settings"]["outcome"] == "fixed upstream differently", r.stdout + r.stderr
    assert "pass on the new base without it" in out["settings"]["detail"]


def conflict_release(tree):
    upstream_release(tree, {"toy/model.py": numbered(40).replace("line 30\n", "line 30 upstream\n")})


def test_conflict_stops_then_continue_after_resolving(history):
    project, tree = history
    conflict_release(tree)

    stopped = rebase(project, tree, "--onto", "v1.1")
    assert stopped.returncode == 1
    assert "--continue" in stopped.stdout and "--skip" in stopped.stdout and "--abort" in stopped.stdout
    assert git.unmerged_paths(tree) == ["toy/model.py"]

    write(tree, {"toy/model.py": numbered(40).replace("line 30\n", "line thirty (and upstream)\n")})
    sh(tree, "add", "toy/model.py")
    r = rebase(project, tree, "--continue", "--json")

    assert r.returncode == 0, r.stderr
    out = as_json(r)
    assert out["moves"]["outcome"] == "resolved by hand" and out["settings"]["outcome"] == "applied"
    assert "+line thirty (and upstream)" in (project.root / "patches/toy/moves.patch").read_text()


def test_conflict_skip_needs_a_reason_and_records_it(history):
    project, tree = history
    conflict_release(tree)
    assert rebase(project, tree, "--onto", "v1.1").returncode == 1

    no_reason = rebase(project, tree, "--skip")
    assert no_reason.returncode == 2 and "needs a reason" in no_reason.stderr

    r = rebase(project, tree, "--skip", "--reason", "upstream reworked this code", "--json")

    assert r.returncode == 0, r.stderr
    assert as_json(r)["moves"]["outcome"] == "dropped"
    series = (project.root / "series.yaml").read_text()
    assert "status: dropped" in series and "reason: upstream reworked this code" in series


def test_abort_restores_tree_refs_and_project_files_exactly(history):
    project, tree = history
    conflict_release(tree)
    before = project_state(project, tree)
    assert rebase(project, tree, "--onto", "v1.1").returncode == 1

    r = rebase(project, tree, "--abort")

    assert r.returncode == 0, r.stderr
    assert project_state(project, tree) == before


STEPS = ["rebase:after-state", "rebase:old-series", "rebase:new-base", "rebase:preflight",
         "before-am:moves", "after-am:moves", "after-patch:moves", "rebase:after-apply",
         "rebase:before-write", "rebase:after-export", "rebase:after-series"]


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_step_then_rerun_continues_or_aborts_losing_nothing(project, tmp_path, step):
    for finish in ("--abort", "--continue"):
        # a fresh history per direction: the fixture's project is reused, so rebuild the clone
        tree = project.clone(tmp_path / f"tree{finish}") if project.entries else None
        if not project.entries:
            project.make_patch("stays-clean", {"toy/config.py": numbered(30, "cfg").replace("cfg 25\n", "x\n")})
            project.make_patch("moves", {"toy/model.py": numbered(40).replace("line 30\n", "line thirty\n")})
            tree = project.clone(tmp_path / f"tree{finish}")
        assert project.tool("apply", "--checkout", tree).returncode == 0
        upstream_release(tree, {"toy/model.py": "header\n" + numbered(40)})
        series_before = project.series.read_bytes()
        patch_before = (project.root / "patches/toy/moves.patch").read_bytes()
        before = project_state(project, tree)

        killed = rebase(project, tree, "--onto", "v1.1", env={"PATCHSERIES_TEST_KILL_AT": step})
        assert killed.returncode == -9, (step, killed.stdout, killed.stderr)
        again = rebase(project, tree, "--onto", "v1.1")
        assert again.returncode == 2 and "already in progress" in again.stderr, again.stderr

        r = rebase(project, tree, finish, "--json")
        assert r.returncode == 0, (step, finish, r.stdout, r.stderr)
        if finish == "--abort":
            assert project_state(project, tree) == before, step
        else:
            assert as_json(r)["moves"]["outcome"] in ("applied with offset", "already applied"), step
            assert git.rev_parse(tree, "refs/patches/upstream-head") == git.rev_parse(tree, "v1.1")
            assert b"line thirty" in (tree / "toy/model.py").read_bytes()
        project.series.write_bytes(series_before)
        (project.root / "patches/toy/moves.patch").write_bytes(patch_before)


def test_bad_onto_is_refused_and_nothing_changes(history):
    project, tree = history
    before = project_state(project, tree)
    r = rebase(project, tree, "--onto", "no-such-ref")
    assert r.returncode == 2 and "not a commit of" in r.stderr
    assert project_state(project, tree) == before
