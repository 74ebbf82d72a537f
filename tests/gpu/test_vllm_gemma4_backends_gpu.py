"""GPU test: vLLM 0.20.2 on a Gemma-4-E4B-shaped model runs FlashAttention with FA4 on all 42 layers with
patch `gemma4-fa4-attention-backend` where FA4 is installed (TRITON_ATTN on all 42 where it is not), and
TRITON_ATTN on all 42 layers without the patch.

Each tree's engine really runs here, in its own process (`bench/vllm_backends.py probe`: an eager engine
with dummy weights that reports the backend of every Attention layer from static_forward_context and
generates a few greedy tokens).  The agreement tests run `bench/vllm_backends.py engine --agreement-only`
per tree: an eager engine whose dummy weights are replaced by deterministic realistic-scale ones, which
generates the same 8 prompts as one batch, the same batch again, and each prompt alone (the dummy
weights themselves give all-zero logits, so they cannot show a difference).  The two trees are the site-packages directories named by
VLLM_UNPATCHED_SITE and VLLM_PATCHED_SITE (bench/vllm_backends.py run sets both).  Skipped, with the
reason, where there is no CUDA device or no trees.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("vllm_backends", ROOT / "bench" / "vllm_backends.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)   # the engine code and environment the benchmark uses
SITES = {"unpatched": os.environ.get("VLLM_UNPATCHED_SITE"), "patched": os.environ.get("VLLM_PATCHED_SITE")}
N_SLIDING, N_FULL = 35, 7


def _skip_reason() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no CUDA device (nvidia-smi not found)"
    try:
        import torch  # noqa: PLC0415  (guarded: CPU machines may have no torch)
    except ImportError as e:
        return f"torch is not importable: {e}"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    missing = [k for k, v in SITES.items() if not v or not (Path(v) / "vllm").is_dir()]
    if missing:
        return ("no vLLM trees: set VLLM_UNPATCHED_SITE and VLLM_PATCHED_SITE to site-packages holding the "
                "unpatched and patched vLLM 0.20.2 (bench/vllm_backends.py run does)")
    return None


_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _run_bench(label: str, args: list[str], out: Path, timeout: int = 300) -> dict:
    """Run `bench/vllm_backends.py ARGS` in its own process on one tree; the JSON it wrote to out."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "vllm_backends.py"), *args],
                       env=bench.tree_env(SITES[label]), cwd=str(ROOT), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0 and out.exists(), \
        f"{label}: {args[0]} failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}"
    return json.loads(out.read_text())


def _probe(label: str, tmp: Path) -> dict:
    site = SITES[label]
    out = tmp / f"probe_{label}.json"
    res = _run_bench(label, ["probe", "--site", site, "--out", str(out)], out)
    assert str(Path(res["vllm_file"]).resolve()).startswith(str(Path(site).resolve())), res["vllm_file"]
    return res


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm_probe")
    return {label: _probe(label, tmp) for label in ("unpatched", "patched")}


def _by_head_size(res: dict) -> dict[int, list]:
    out: dict[int, list] = {}
    for name, (backend, head_size, fa_version, _shared) in res["backends_per_layer"].items():
        out.setdefault(head_size, []).append((name, backend, fa_version))
    return out


def test_unpatched_forces_triton_on_every_layer(probes):
    res = probes["unpatched"]
    assert res["vllm"].startswith("0.20.2")
    layers = _by_head_size(res)
    assert len(layers[256]) == N_SLIDING and len(layers[512]) == N_FULL, res["backends"]
    assert {b for v in layers.values() for _, b, _ in v} == {"TRITON_ATTN"}, res["backends"]


def test_patched_runs_one_backend_on_every_layer_fa4_where_installed(probes):
    """One backend and one KV cache layout for all 42 layers: FlashAttention with FA4 where FA4 is
    installed (it serves head_dim 256 and 512 on Hopper), else TRITON_ATTN as upstream."""
    res = probes["patched"]
    assert res["vllm"].startswith("0.20.2")
    layers = _by_head_size(res)
    assert len(layers[256]) == N_SLIDING and len(layers[512]) == N_FULL, res["backends"]
    used = {(b, v) for v in layers.values() for _, b, v in v}
    expected = ("FLASH_ATTN", 4) if res["fa4_available"] is True else ("TRITON_ATTN", None)
    assert used == {expected}, res["backends"]
    assert res["attention_config_backend"].endswith(expected[0]), res["attention_config_backend"]


def test_both_trees_generate(probes):
    for label, res in probes.items():
        toks = res["greedy_tokens"]
        assert len(toks) == 4 and all(len(t) == 8 for t in toks), (label, toks)


def _agreement_engine(label: str, tmp: Path) -> dict:
    return _run_bench(label, ["engine", "--agreement-only", "--site", SITES[label], "--label", label,
                              "--out", str(tmp)], tmp / f"agreement_{label}.json")


@pytest.fixture(scope="module")
def agreement_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm_agreement")
    return {label: _agreement_engine(label, tmp) for label in ("unpatched", "patched")}




def test_outputs_do_not_depend_on_kv_cache_history(agreement_runs):
    """The same batch, run twice in a row, must give the same greedy tokens.  Mixed backends whose KV cache
    layouts differ ((2, num_blocks, ...) for FlashAttention, (num_blocks, 2, ...) for Triton) alias each
    other's blocks where the hybrid allocator lets layers of different groups share one KV cache tensor."""
    for label, r in agreement_runs.items():
        first = [g["tokens"] for g in r["greedy"]]
        again = [g["tokens"] for g in r["greedy_batched_again"]]
        diverged = [i for i, (a, b) in enumerate(zip(first, again)) if a != b]
        assert not diverged, f"{label}: sequences {diverged} of the same batch changed on the second run"


def test_patched_agrees_with_unpatched(agreement_runs):
    """Within a few times the noise floor seen between batch compositions of one tree (H100, 2026-11-22:
    max |delta logit| / max |logit| 0.019, every token equal)."""
    u, p = agreement_runs["unpatched"], agreement_runs["patched"]
    for key in ("greedy", "greedy_batched_again", "greedy_single"):
        a = bench.agreement(u[key], p[key])
        assert a["token_agreement"] >= 0.9 and a["max_rel_logit_diff"] <= 0.1, (key, a)


# --- patches gemma4-dflash-*: a Gemma 4 target with a DFlash drafter ----------------------------------
# (the draft attention backend, the KV cache group of the draft layers, and the KV cache layout when the
# drafter's backend differs from the target's)

def _dflash(label: str, tmp: Path, target_backend: str | None = None) -> dict:
    out = tmp / f"dflash_{label}_{target_backend or 'auto'}.json"
    args = ["dflash", "--out", str(out)] + (["--target-backend", target_backend] if target_backend else [])
    return _run_bench(label, args, out, timeout=400)


@pytest.fixture(scope="module")
def dflash_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm_dflash")
    return {"unpatched": _dflash("unpatched", tmp), "patched": _dflash("patched", tmp),
            "patched, target TRITON_ATTN": _dflash("patched", tmp, "TRITON_ATTN")}


def _draft_layers(res: dict) -> dict:
    """The drafter's attention layers: head_dim 128 (the target's are 256 and 512)."""
    return {n: v for n, v in res["backends_per_layer"].items() if v[1] == 128}


def test_unpatched_dflash_drafter_fails_with_non_causal_error(dflash_runs):
    res = dflash_runs["unpatched"]
    assert "non-causal attention not supported" in res.get("error", ""), res


def test_patched_dflash_draft_config_gets_past_the_backend_error(dflash_runs):
    """What the patch itself fixes, seen in the real engine: the non-causal backend error is gone."""
    for run in ("patched", "patched, target TRITON_ATTN"):
        assert "non-causal attention not supported" not in dflash_runs[run].get("error", ""), dflash_runs[run]


@pytest.mark.parametrize("run", ["patched", "patched, target TRITON_ATTN"])
def test_patched_dflash_drafter_builds_with_its_own_backend_and_generates(dflash_runs, run):
    res = dflash_runs[run]
    assert "error" not in res, res["error"]
    draft = _draft_layers(res)
    assert len(draft) == 5 and {v[0] for v in draft.values()} <= {"FLASH_ATTN", "FLEX_ATTENTION"}, res["backends"]
    assert all(len(g["tokens"]) == 32 for g in res["greedy"]), res["greedy"]


@pytest.mark.parametrize("run", ["patched", "patched, target TRITON_ATTN"])
def test_dflash_outputs_do_not_depend_on_kv_cache_history(dflash_runs, run):
    """Greedy speculative decoding emits the target's greedy tokens: the same batch run twice must give
    the same tokens. With the target on TRITON_ATTN and the drafter on FlashAttention, their KV cache
    layouts differ where the hybrid allocator lets them share tensors (vLLM #41657)."""
    res = dflash_runs[run]
    assert "error" not in res, res["error"]
    first = [g["tokens"] for g in res["greedy"]]
    again = [g["tokens"] for g in res["greedy_batched_again"]]
    diverged = [i for i, (a, b) in enumerate(zip(first, again)) if a != b]
    assert not diverged, f"{run}: sequences {diverged} of the same batch changed on the second run"
