"""tools/apply.py onto an installed package: Python files patched with a backup, undone byte for byte."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import numbered


@pytest.fixture
def site(project, tmp_path):
    """A site-packages holding the toy package as installed from its 1.0 release."""
    site = tmp_path / "site-packages"
    shutil.copytree(project.upstream / "toy", site / "toy")
    dist = site / "toy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy\nVersion: 1.0\n")
    return site


def snapshot(site):
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def test_patches_package_files_only_and_undo_restores_bytes(project, site):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n"),
                                "tests/test_model.py": "def test(): pass\n",
                                "toy/kernels/fused.py": "def fused(): ...\n"})
    before = snapshot(site)

    r = project.tool("apply", "--site-packages", site, "--json")

    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)["results"][0]["outcomes"][0]
    assert o["outcome"] == "applied"
    assert "tests/test_model.py" in o["detail"]          # said what was left out
    assert "line five" in (site / "toy/model.py").read_text()
    assert (site / "toy/kernels/fused.py").exists()
    assert not (site / "tests").exists()

    again = project.tool("apply", "--site-packages", site, "--json")
    assert json.loads(again.stdout)["results"][0]["outcomes"][0]["outcome"] == "already applied"

    undo = project.tool("apply", "--unapply", "--site-packages", site)
    assert undo.returncode == 0, undo.stderr
    assert snapshot(site) == before


def test_undo_refuses_to_overwrite_files_changed_since(project, site):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    assert project.tool("apply", "--site-packages", site).returncode == 0
    (site / "toy/model.py").write_text("edited by someone else\n")

    r = project.tool("apply", "--unapply", "--site-packages", site)

    assert r.returncode == 2 and "changed since the series was applied: toy/model.py" in r.stderr
    assert (site / "toy/model.py").read_text() == "edited by someone else\n"


def test_unsupported_installed_version_is_refused_naming_the_supported_one(project, site):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    meta = site / "toy-1.0.dist-info/METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.0", "Version: 9.9"))
    before = snapshot(site)

    r = project.tool("apply", "--site-packages", site)

    assert r.returncode == 2
    assert "installed toy 9.9 is not supported: this series supports 1.0" in r.stderr
    assert snapshot(site) == before


def test_a_patch_that_does_not_fit_changes_nothing(project, site):
    project.make_patch("ok", {"toy/config.py": numbered(30, "cfg").replace("cfg 2\n", "cfg two\n")})
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    (site / "toy/model.py").write_text("a locally modified install\n")
    before = snapshot(site)

    r = project.tool("apply", "--site-packages", site, "--json")

    assert r.returncode == 1
    assert [o["outcome"] for o in json.loads(r.stdout)["results"][0]["outcomes"]] == ["rolled back", "conflict"]
    assert snapshot(site) == before
