"""The real series at the real pins: it applies, its files are in stable form, and every carried
patch's regression tests fail on the unpatched upstream and pass on the patched one."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_tool
from patchseries import series as series_mod

SERIES = series_mod.load(ROOT / "series.yaml")
CARRIED = [p.name for p in SERIES.patches if p.status == "carried"]


def test_series_yaml_is_valid_and_every_patch_file_exists():
    for p in SERIES.patches:
        assert SERIES.patch_file(p).is_file(), p.file
        for test_id in p.tests.cpu + p.tests.gpu:
            assert (ROOT / test_id.split("::")[0]).is_file(), test_id


def test_every_carried_patch_applies_at_its_pin():
    r = run_tool("status", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    at_pin = {p["name"]: p["at_pin"] for u in json.loads(r.stdout)["upstreams"] for p in u["patches"]}
    assert {n: at_pin[n] for n in CARRIED} == {n: "applied" for n in CARRIED}


def test_patch_files_are_in_stable_exported_form():
    r = run_tool("export", "--check")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def regression_results():
    r = run_tool("regress", "--json")
    assert r.stdout.strip(), r.stderr
    return {row["name"]: row for row in json.loads(r.stdout)["patches"]}


@pytest.mark.parametrize("name", CARRIED)
def test_patch_regression_tests_fail_unpatched_and_pass_patched(regression_results, name):
    row = regression_results[name]
    assert row["problems"] == [], "\n".join(row["problems"])
