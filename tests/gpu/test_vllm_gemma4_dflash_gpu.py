"""GPU tests of the DFlash patches (`gemma4-dflash-draft-attention-backend`, `-kv-cache-group`,
`-kv-cache-layout`; listed under the last, since a Gemma 4 target with a DFlash drafter needs all three)
on a real vLLM 0.20.2 engine: a Gemma-4-E4B-shaped target with a DFlash-shaped drafter (5 layers,
head_dim 128, non-causal; tests/regression/vllm/configs/gemma4-e4b-dflash), dummy weights.

Upstream cannot start it ("non-causal attention not supported": the drafter inherits the target's
forced backend). Patched, the drafter selects its own non-causal backend, its layers share one KV cache
group, and the target's KV cache keeps its blocks: the same batch run twice gives the same tokens,
with the target on vLLM's choice (FA4 on Hopper) and on TRITON_ATTN. A drafter that is not DFlash
(EAGLE-3 here: vLLM 0.20.2 has no Gemma 4 MTP drafter, and MTP and EAGLE-3 share the proposer whose
propagation the patch changes) keeps inheriting the target's backend, in both trees.

Runs through tools/regress.py (module vllm_trees); skipped, with the reason, where there is no CUDA
device or no installed tree.
"""
from __future__ import annotations

import pytest

from vllm_trees import TREE, once, skip_reason

_REASON = skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
TARGETS = ["auto", "TRITON_ATTN"]   # the target's attention backend: vLLM's choice, or this one


def _drafter(method: str, target: str) -> dict:
    args = ["drafter", "--method", method] + ([] if target == "auto" else ["--target-backend", target])
    return once(TREE, f"{method}-{target}", args, timeout=500)


def _draft_layers(res: dict) -> dict:
    """The drafter's attention layers: head_dim 128 (the target's are 256 and 512)."""
    return {n: v for n, v in res["backends_per_layer"].items() if v[1] == 128}


@pytest.mark.parametrize("target", TARGETS)
def test_dflash_drafter_builds_with_its_own_backend_and_generates(target):
    res = _drafter("dflash", target)
    assert "error" not in res, res["error"]
    draft = _draft_layers(res)
    assert len(draft) == 5 and {v[0] for v in draft.values()} <= {"FLASH_ATTN", "FLEX_ATTENTION"}, res["backends"]
    assert all(len(g["tokens"]) == 32 for g in res["greedy"]), res["greedy"]


@pytest.mark.parametrize("target", TARGETS)
def test_dflash_outputs_do_not_depend_on_kv_cache_history(target):
    """Greedy speculative decoding emits the target's greedy tokens: the same batch run twice must give
    the same tokens. With the target on TRITON_ATTN and the drafter on FlashAttention, their KV cache
    layouts differ where the hybrid allocator lets them share tensors (vLLM #41657)."""
    res = _drafter("dflash", target)
    assert "error" not in res, res["error"]
    first = [g["tokens"] for g in res["greedy"]]
    again = [g["tokens"] for g in res["greedy_batched_again"]]
    diverged = [i for i, (a, b) in enumerate(zip(first, again)) if a != b]
    assert not diverged, f"sequences {diverged} of the same batch changed on the second run"


@pytest.mark.keeps_upstream
def test_eagle3_drafter_keeps_the_targets_backend():
    res = _drafter("eagle3", "auto")
    assert "error" not in res, res["error"]
    target = {v[0] for v in res["backends_per_layer"].values() if v[1] in (256, 512)}
    draft = _draft_layers(res)
    assert len(target) == 1 and len(draft) == 1, res["backends"]
    assert {v[0] for v in draft.values()} == target, res["backends"]
    assert all(len(g["tokens"]) == 32 for g in res["greedy"]), res["greedy"]
