"""tools/regress.py judges each patch's tests in both directions, on real trees and real pytest runs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT


@pytest.fixture
def regress_project(project, tmp_path):
    """The toy project with a fix, its regression test, and a cache holding toy 1.0."""
    project.make_patch("fix", {"toy/settings.py": "RATIO = 0.15\n"})
    text = project.series.read_text().replace(
        "    status: carried\n",
        "    status: carried\n    tests:\n      cpu: [tests/regression/toy/test_fix.py]\n")
    project.series.write_text(text)
    (project.root / "tests/regression/toy").mkdir(parents=True)
    shutil.copy(ROOT / "tests/regression/pytest.ini", project.root / "tests/regression/pytest.ini")
    cache = tmp_path / "cache"
    (cache / "store").mkdir(parents=True)
    subprocess.run(["git", "clone", "--quiet", "--bare", str(project.upstream),
                    str(cache / "store/toy.git")], check=True)
    return project, cache


def write_test(project, body: str):
    (project.root / "tests/regression/toy/test_fix.py").write_text(textwrap.dedent(body))


def regress(project, cache):
    r = project.tool("regress", "--cache", cache, "--env-python", sys.executable, "--json")
    return r, (json.loads(r.stdout) if r.stdout.strip() else None)


def test_fix_that_fails_before_and_passes_after_is_verified(regress_project):
    project, cache = regress_project
    write_test(project, """
        import os, pytest
        import toy

        def test_ratio_is_lowered_for_moe():
            assert toy.__file__.startswith(os.environ["SERIES_UPSTREAM_TREE"])
            from toy.settings import RATIO
            assert RATIO == 0.15

        @pytest.mark.keeps_upstream
        def test_other_settings_are_kept():
            assert "cfg 1" in open(os.path.join(os.path.dirname(toy.__file__), "config.py")).read()
    """)

    r, data = regress(project, cache)

    assert r.returncode == 0, r.stdout + r.stderr
    row = data["patches"][0]
    assert row["problems"] == []
    assert row["tests"]["toy/test_fix.py::test_ratio_is_lowered_for_moe"] == \
        {"unpatched": "failed", "patched": "passed", "keeps_upstream": False}
    assert row["tests"]["toy/test_fix.py::test_other_settings_are_kept"]["unpatched"] == "passed"


def test_a_test_that_passes_unpatched_fails_the_run(regress_project):
    project, cache = regress_project
    write_test(project, """
        def test_ratio_is_lowered_for_moe():
            from toy.settings import RATIO
            assert RATIO == 0.15

        def test_proves_nothing():
            assert True
    """)

    r, data = regress(project, cache)

    assert r.returncode == 1
    assert data["ok"] is False
    assert any("test_proves_nothing: passes on the unpatched upstream" in p
               for p in data["patches"][0]["problems"])


def test_a_test_that_fails_patched_fails_the_run(regress_project):
    project, cache = regress_project
    write_test(project, """
        def test_wrong_expectation():
            from toy.settings import RATIO
            assert RATIO == 0.5
    """)

    r, data = regress(project, cache)

    assert r.returncode == 1
    assert "failed when patched" in data["patches"][0]["problems"][0]


def test_human_table_shows_both_directions(regress_project):
    project, cache = regress_project
    write_test(project, """
        def test_ratio():
            from toy.settings import RATIO
            assert RATIO == 0.15
    """)
    r = project.tool("regress", "--cache", cache, "--env-python", sys.executable)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unpatched (must fail)" in r.stdout
    assert "1 failed" in r.stdout and "1 passed" in r.stdout and " ok" in r.stdout


def test_installed_site_packages_is_tested_as_is_and_patched_on_a_copy(regress_project, tmp_path):
    """--site-packages: the GPU host's model (a wheel with compiled kernels, not a source tree). The
    unpatched side imports the given directory untouched; the patched side is a patched copy; both
    paths reach the tests, and folders that the site's .pth files name are importable."""
    project, cache = regress_project
    site = tmp_path / "site-packages"
    subprocess.run(["git", "-C", str(project.upstream), "archive", "--output", str(tmp_path / "toy.tar"),
                    "HEAD", "toy"], check=True)
    site.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "toy.tar"), "-C", str(site)], check=True)
    (site / "extras" / "toy_extra").mkdir(parents=True)
    (site / "extras" / "toy_extra" / "__init__.py").write_text("")
    (site / "toy_extra.pth").write_text("# a comment\nextras\nimport os\n")
    before = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    write_test(project, """
        import os
        import toy, toy_extra

        def test_ratio_is_lowered_for_moe():
            here = os.environ["SERIES_UPSTREAM_TREE"]
            assert toy.__file__.startswith(here) and toy_extra.__file__.startswith(here)
            assert os.path.isdir(os.environ["SERIES_UNPATCHED_TREE"] + "/toy")
            assert os.path.isdir(os.environ["SERIES_RUN_SCRATCH"])
            from toy.settings import RATIO
            assert RATIO == 0.15
    """)

    r = project.tool("regress", "--cache", cache, "--env-python", sys.executable, "--upstream", "toy",
                     "--site-packages", site, "--json")

    assert r.returncode == 0, r.stdout + r.stderr
    row = json.loads(r.stdout)["patches"][0]
    assert row["tests"]["toy/test_fix.py::test_ratio_is_lowered_for_moe"] == \
        {"unpatched": "failed", "patched": "passed", "keeps_upstream": False}
    assert {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()} == before


def test_site_packages_without_the_package_is_refused(regress_project, tmp_path):
    project, cache = regress_project
    (tmp_path / "site" / "other").mkdir(parents=True)
    r = project.tool("regress", "--cache", cache, "--env-python", sys.executable, "--upstream", "toy",
                     "--site-packages", tmp_path / "site")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(f"no 'toy' package in {tmp_path / 'site'}")
