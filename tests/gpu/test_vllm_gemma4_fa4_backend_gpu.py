"""GPU tests of patch `gemma4-fa4-attention-backend` on a real vLLM 0.20.2 engine (Gemma-4-E4B-shaped
text model: 35 sliding layers head_dim 256 + 7 full layers head_dim 512; dummy weights).

Upstream forces TRITON_ATTN on all 42 layers. Patched, where FA4 is installed (Hopper), every layer
runs FlashAttention with FA4; without FA4 every layer keeps TRITON_ATTN. One backend for all layers
either way: mixed backends alias each other's KV cache blocks. Outputs must not change: greedy tokens
on realistic-scale weights agree with the unpatched engine within the noise floor of one tree.

Runs through tools/regress.py (module vllm_trees: which tree, which engines); skipped, with the
reason, where there is no CUDA device or no installed tree.
"""
from __future__ import annotations

import pytest

from vllm_trees import N_FULL, N_SLIDING, TREE, UNPATCHED, bench, once, skip_reason

_REASON = skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _backends_used(res: dict) -> set:
    by_head_size: dict[int, list] = {}
    for backend, head_size, fa_version, _kv_shared in res["backends_per_layer"].values():
        by_head_size.setdefault(head_size, []).append((backend, fa_version))
    assert len(by_head_size[256]) == N_SLIDING and len(by_head_size[512]) == N_FULL, res["backends"]
    return {used for layers in by_head_size.values() for used in layers}


@pytest.fixture(scope="module")
def probe():
    return once(TREE, "probe", ["probe", "--site", TREE])


@pytest.fixture(scope="module")
def probe_without_fa4():
    return once(TREE, "probe-no-fa4", ["probe", "--site", TREE, "--hide-fa4"])


def test_every_layer_runs_flash_attention_fa4_where_fa4_is_installed(probe):
    if probe["fa4_available"] is not True:
        pytest.skip(f"FA4 is not installed in this build ({probe['fa4_available']}): the patch keeps "
                    "TRITON_ATTN (test_without_fa4_every_layer_keeps_triton_attn)")
    assert _backends_used(probe) == {("FLASH_ATTN", 4)}, probe["backends"]
    assert probe["attention_config_backend"].endswith("FLASH_ATTN"), probe["attention_config_backend"]


@pytest.mark.keeps_upstream
def test_without_fa4_every_layer_keeps_triton_attn(probe_without_fa4):
    assert probe_without_fa4["fa4_hidden"] is True
    assert _backends_used(probe_without_fa4) == {("TRITON_ATTN", None)}, probe_without_fa4["backends"]


@pytest.mark.keeps_upstream
def test_engine_generates(probe):
    toks = probe["greedy_tokens"]
    assert len(toks) == 4 and all(len(t) == 8 for t in toks), toks


@pytest.fixture(scope="module")
def agreement():
    """This tree's engine and the unpatched reference engine (two processes, also when this tree is
    the unpatched one): realistic-scale deterministic weights, the same 8 prompts as one batch, the
    batch again, and each prompt alone."""
    run = once(TREE, "agreement", ["engine", "--agreement-only", "--site", TREE, "--label", "tree"])
    ref = once(UNPATCHED, "agreement-reference",
               ["engine", "--agreement-only", "--site", UNPATCHED, "--label", "reference"])
    return run, ref


@pytest.mark.keeps_upstream
def test_outputs_do_not_depend_on_kv_cache_history(agreement):
    """The same batch run twice gives the same greedy tokens. Mixed backends whose KV cache layouts
    differ ((2, num_blocks, ...) for FlashAttention, (num_blocks, 2, ...) for Triton) alias each
    other's blocks where the hybrid allocator lets layers of different groups share one tensor."""
    run, _ = agreement
    first = [g["tokens"] for g in run["greedy"]]
    again = [g["tokens"] for g in run["greedy_batched_again"]]
    diverged = [i for i, (a, b) in enumerate(zip(first, again)) if a != b]
    assert not diverged, f"sequences {diverged} of the same batch changed on the second run"


@pytest.mark.keeps_upstream
def test_outputs_agree_with_the_unpatched_engine(agreement):
    """Within a few times the noise floor seen between batch compositions of one tree (H100,
    2026-11-22: max |delta logit| / max |logit| 0.019, every token equal)."""
    run, ref = agreement
    for key in ("greedy", "greedy_batched_again", "greedy_single"):
        a = bench.agreement(ref[key], run[key])
        assert a["token_agreement"] >= 0.9 and a["max_rel_logit_diff"] <= 0.1, (key, a)
