"""One real rebase step per upstream, from the pins to the next release that changes the patched code.

Runs on a copy of the project (series.yaml, patches/, tests/regression/) so the real files stay
untouched; the releases come from the package index through the cache, and each patch's
regression tests run in the upstream's cached environment to find "fixed upstream differently".
"""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT, run_tool


@pytest.fixture
def project_copy(tmp_path):
    dest = tmp_path / "project"
    dest.mkdir()
    shutil.copy(ROOT / "series.yaml", dest / "series.yaml")
    shutil.copytree(ROOT / "patches", dest / "patches")
    shutil.copytree(ROOT / "tests" / "regression", dest / "tests" / "regression")
    yield dest
    # The rebase state lives in the shared cache: a test that failed midway must not leave a rebase
    # in progress there for the next run (its abort says "no rebase in progress" otherwise).
    for upstream in ("vllm", "sglang"):
        run_tool("rebase", upstream, "--series", dest / "series.yaml", "--report-dir", dest / "reports", "--abort")


def rebase(project, upstream, *args):
    r = run_tool("rebase", upstream, "--series", project / "series.yaml",
                 "--report-dir", project / "reports", "--json", *args)
    assert r.stdout.strip(), (r.returncode, r.stderr[-3000:])
    return r, {p["name"]: p for p in json.loads(r.stdout)["patches"]}


def snapshot(project):
    return {str(p.relative_to(project)): p.read_bytes() for p in sorted(project.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_sglang_0_5_12_post1_to_0_5_13(project_copy):
    """0.5.13 added its own fused routing kernel in the file patch 3 extends, and reworked the
    Gemma 4 multimodal model that patch 5 changes: both stop for a maintainer; the SWA hook only
    moved."""
    before = snapshot(project_copy)

    r, out = rebase(project_copy, "sglang", "--onto", "0.5.13")
    assert r.returncode == 1, r.stderr
    assert out["gemma4-fused-moe-routing"]["outcome"] == "conflict"
    assert {c["file"] for c in out["gemma4-fused-moe-routing"]["conflicts"]} == {
        "python/sglang/srt/layers/gemma4_fused_ops.py", "python/sglang/srt/models/gemma4_causal.py"}

    r, out = rebase(project_copy, "sglang", "--skip", "--reason", "0.5.13 has its own fused routing")
    assert r.returncode == 1, r.stderr
    assert out["gemma4-fused-moe-routing"]["outcome"] == "dropped"
    assert out["gemma4-moe-swa-full-tokens-ratio"]["outcome"] == "applied with offset"
    assert out["gemma4-mm-disabled-by-default"]["outcome"] == "conflict"

    r, _ = rebase(project_copy, "sglang", "--abort")
    assert r.returncode == 0, r.stderr
    assert snapshot(project_copy) == before


def test_vllm_0_20_2_to_0_21_0(project_copy):
    """0.21.0 stopped handing the target's backend to every drafter (so the DFlash drafter now
    picks a non-causal backend on its own) and reads non-causal selection from the draft's own
    attention config, as patch 2 does: most of patch 2 is upstream, and its own tests show the
    split (3 of 4 pass on 0.21.0 without it); its code conflicts with upstream's rework.
    Patch 1 still applies cleanly and is still needed (its tests fail on 0.21.0 without it)."""
    before = snapshot(project_copy)

    r, out = rebase(project_copy, "vllm", "--onto", "0.21.0")

    assert r.returncode == 1, r.stderr
    assert out["gemma4-fa4-attention-backend"]["outcome"] == "applied"
    assert out["gemma4-fa4-attention-backend"]["tests_on_new_base"] == "6 failed, 1 passed"
    dflash = out["gemma4-dflash-draft-attention-backend"]
    assert dflash["outcome"] == "conflict"
    assert "vllm/v1/spec_decode/llm_base_proposer.py" in {c["file"] for c in dflash["conflicts"]}
    assert dflash["tests_on_new_base"] == "1 failed, 3 passed"     # mostly fixed upstream

    r, _ = rebase(project_copy, "vllm", "--abort")
    assert r.returncode == 0, r.stderr
    assert snapshot(project_copy) == before
