"""tools/export.py: patches/ regenerated from commits, byte-identical and free of churn."""
from __future__ import annotations

import json

from conftest import commit_all, numbered, sh, write


def test_apply_then_export_gives_byte_identical_patch_files(project, tmp_path):
    paths = [
        project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")}),
        project.make_patch("reshape", {"toy/model.py": None, "toy/layers.py": numbered(40),
                                       "toy/new.py": "x = 1\n", "README": None},
                           message="toy: subject only"),
        project.make_patch("crlf", {"toy/win.txt": b"a\r\nb\r\n"},
                           message="toy: with trailers\n\nBody.\n\nSigned-off-by: A <a@example.com>\n"),
        project.make_patch("tagged", {"toy/tag.py": "t = 1\n"},
                           message="[Model][Spec Decode] Toy: upstream-style subject tags\n\nBody.\n"),
    ]
    before = {p: p.read_bytes() for p in paths}
    tree = project.clone(tmp_path / "tree")
    assert project.tool("apply", "--checkout", tree).returncode == 0

    check = project.tool("export", "--checkout", tree, "--check")
    r = project.tool("export", "--checkout", tree, "--json")

    assert check.returncode == 0, check.stdout + check.stderr
    assert r.returncode == 0
    assert [f["state"] for f in json.loads(r.stdout)["files"]] == ["up to date"] * 4
    assert {p: p.read_bytes() for p in paths} == before


def test_exported_form_has_nothing_that_churns(project):
    text = project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line 6\n")}) \
        .read_text()
    assert text.startswith("From 0000000000000000000000000000000000000000 ")
    index_line = next(line for line in text.splitlines() if line.startswith("index "))
    assert len(index_line.split()[1].split("..")[0]) == 40          # full blob ids
    assert " files changed" not in text and " file changed" not in text  # no diffstat
    assert not text.rstrip().endswith(("2.39.5", "--"))             # no git-version signature


def test_edited_commit_makes_check_fail_naming_the_file_then_export_writes_it(project, tmp_path):
    path = project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    tree = project.clone(tmp_path / "tree")
    assert project.tool("apply", "--checkout", tree).returncode == 0
    write(tree, {"toy/model.py": numbered(40).replace("line 5\n", "line FIVE\n")})
    sh(tree, "commit", "--quiet", "--all", "--amend", "--no-edit")

    check = project.tool("export", "--checkout", tree, "--check")
    assert check.returncode == 1
    assert "toy/edit.patch" in check.stdout and "stale" in check.stdout
    assert "line five" in path.read_text()          # --check wrote nothing

    assert project.tool("export", "--checkout", tree).returncode == 0
    assert "+line FIVE" in path.read_text()
    assert "Patch-Filename" not in path.read_text()


def test_new_commit_becomes_a_new_patch_file_named_from_its_subject(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    tree = project.clone(tmp_path / "tree")
    assert project.tool("apply", "--checkout", tree).returncode == 0
    write(tree, {"toy/extra.py": "y = 2\n"})
    commit_all(tree, "[Model] Toy: add the extra knob")

    r = project.tool("export", "--checkout", tree)

    assert r.returncode == 0
    new = project.root / "patches/toy/toy-add-the-extra-knob.patch"
    assert new.exists() and "add an entry for it to series.yaml" in r.stderr
