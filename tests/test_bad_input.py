"""Bad input: one clear line on stderr, exit code 2, and nothing changed on disk."""
from __future__ import annotations

import pytest

from conftest import numbered, run_tool, tree_snapshot


def assert_refused(result, *needles):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def applied_project(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    return project, project.clone(tmp_path / "tree")


SERIES_BREAKAGE = {
    "bad YAML": (lambda s: s.replace("patches:\n", "patches:\n  - [unclosed\n"), ["not valid YAML"]),
    "missing key": (lambda s: s.replace("    why: needed for the test\n", ""),
                    ["series.yaml:", "patches[0] (edit)", "missing required key 'why'"]),
    "unknown upstream": (lambda s: s.replace("upstream: toy", "upstream: tensorrt"),
                         ["series.yaml:", "unknown upstream 'tensorrt'"]),
    "duplicate names": (lambda s: s + s[s.index("  - name: edit"):],
                        ["duplicate patch name", "patches[0]"]),
    "bad status": (lambda s: s.replace("status: carried", "status: maybe"), ["'maybe' is not one of"]),
    "unknown key": (lambda s: s.replace("    why:", "    whyy: x\n    why:"), ["unknown key 'whyy'"]),
    "schema version": (lambda s: s.replace("schema: 1", "schema: 7"), ["version 7 is not supported"]),
    "file outside patches/": (lambda s: s.replace("file: toy/edit.patch", "file: ../../etc/x.patch"),
                              ["must be a relative path under patches/"]),
}


@pytest.mark.parametrize("case", SERIES_BREAKAGE)
def test_malformed_series_yaml(applied_project, case):
    project, tree = applied_project
    breakage, needles = SERIES_BREAKAGE[case]
    project.series.write_text(breakage(project.series.read_text()))
    before = tree_snapshot(tree)

    assert_refused(project.tool("apply", "--checkout", tree), *needles)
    assert tree_snapshot(tree) == before


def test_series_error_names_the_line(applied_project):
    project, tree = applied_project
    text = project.series.read_text().replace("upstream: toy", "upstream: tensorrt")
    project.series.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "tensorrt" in l)
    assert_refused(project.tool("status"), f"series.yaml:{line}:")


def test_missing_patch_file(applied_project):
    project, tree = applied_project
    (project.root / "patches/toy/edit.patch").unlink()
    before = tree_snapshot(tree)
    assert_refused(project.tool("apply", "--checkout", tree), "patch file missing: patches/toy/edit.patch")
    assert tree_snapshot(tree) == before


@pytest.mark.parametrize("evil", ["../outside.py", "/etc/passwd", "toy/../../outside.py"])
def test_patch_reaching_outside_the_tree(applied_project, evil):
    project, tree = applied_project
    path = project.root / "patches/toy/edit.patch"
    path.write_text(path.read_text().replace("toy/model.py", evil))
    before = tree_snapshot(tree)
    assert_refused(project.tool("apply", "--checkout", tree), "outside the tree")
    assert tree_snapshot(tree) == before


def test_checkout_that_is_not_a_git_repository(applied_project, tmp_path):
    project, _ = applied_project
    plain = tmp_path / "plain"
    (plain / "toy").mkdir(parents=True)
    (plain / "toy/__init__.py").write_text("")
    assert_refused(project.tool("apply", "--checkout", plain), "is not a git checkout")
    assert sorted(p.name for p in plain.rglob("*")) == ["__init__.py", "toy"]


def test_checkout_that_does_not_exist(applied_project, tmp_path):
    project, _ = applied_project
    assert_refused(project.tool("apply", "--checkout", tmp_path / "nope"), "no such directory")


def test_unknown_patch_name_in_only(applied_project):
    project, tree = applied_project
    assert_refused(project.tool("apply", "--checkout", tree, "--only", "nope"), "no patch named 'nope'")


def test_series_file_that_does_not_exist(tmp_path):
    assert_refused(run_tool("status", "--series", tmp_path / "series.yaml"), "series file not found")
