"""Attention layers of different backends that share KV cache tensors keep each
block in one place (patch gemma4-dflash-kv-cache-layout).

The hybrid KV cache manager lets one layer of each KV cache group share a raw
KV cache tensor: a block id belongs to one group at a time, so the groups'
views must agree on where block b lives. FlashAttention views the tensor as
(2, num_blocks, ...) (all K blocks, then all V blocks) and Triton as
(num_blocks, 2, ...) (K and V of a block together), so FlashAttention's block
b overlaps Triton's blocks b/2 and (num_blocks + b)/2. A Gemma 4 target on
TRITON_ATTN with a DFlash drafter on FlashAttention is such a mix: on an H100
the same batch run twice gave different greedy tokens (bench/results/
vllm_dflash.md). vLLM already re-strides attention caches to blocks-first next
to Mamba layers; the patch does it whenever attention backends disagree.

Real code: GPUModelRunner._reshape_kv_cache_tensors (the method that views
the raw tensors for every layer) with the real FlashAttention and Triton
backends and KV cache specs; the runner around it is a stand-in holding only
the attributes that method reads (a GPU model runner cannot be built here).
"""

from __future__ import annotations

import types

import pytest
import torch

from vllm.config import VllmConfig, set_current_vllm_config

BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE, NUM_BLOCKS = 16, 2, 64, 4


def views_of_one_shared_tensor(backends: dict[str, type]) -> dict[str, torch.Tensor]:
    """Each layer in its own KV cache group, all sharing one raw tensor, viewed
    by GPUModelRunner._reshape_kv_cache_tensors."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    specs = {
        "sliding": SlidingWindowSpec(block_size=BLOCK_SIZE, num_kv_heads=NUM_KV_HEADS,
                                     head_size=HEAD_SIZE, dtype=torch.float32, sliding_window=64),
        "full": FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=NUM_KV_HEADS,
                                  head_size=HEAD_SIZE, dtype=torch.float32),
    }
    groups = [
        types.SimpleNamespace(kv_cache_spec=specs[name], backend=backend, kv_cache_group_id=i,
                              layer_names=[name])
        for i, (name, backend) in enumerate(backends.items())
    ]
    runner = types.SimpleNamespace(runner_only_attn_layers=set(),
                                   cache_config=types.SimpleNamespace(cache_dtype="auto"),
                                   _kv_cache_spec_attn_group_iterator=lambda: iter(groups))
    for name, member in vars(GPUModelRunner).items():
        if name.startswith(("_update_hybrid", "_attention_kv")) and callable(member):
            setattr(runner, name, types.MethodType(member, runner))
    page = specs["full"].page_size_bytes
    raw = torch.zeros(NUM_BLOCKS * page, dtype=torch.int8)
    with set_current_vllm_config(VllmConfig()):   # the backends read the KV cache layout from it
        return GPUModelRunner._reshape_kv_cache_tensors(runner, {name: raw for name in backends},
                                                        [BLOCK_SIZE] * len(backends))


def block(view: torch.Tensor, backend: type, b: int) -> torch.Tensor:
    """K and V of block b, in the backend's own (logical) view."""
    dim = backend.get_kv_cache_block_dim(BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
    return view.select(dim, b)


def test_flash_attention_and_triton_layers_agree_on_every_block():
    from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
    from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend

    backends = {"sliding": FlashAttentionBackend, "full": TritonAttentionBackend}
    views = views_of_one_shared_tensor(backends)

    for b in range(NUM_BLOCKS):
        block(views["sliding"], FlashAttentionBackend, b).fill_(b + 1)
    for b in range(NUM_BLOCKS):
        seen = block(views["full"], TritonAttentionBackend, b).unique().tolist()
        assert seen == [b + 1], f"Triton's block {b} holds FlashAttention's blocks {seen}"


@pytest.mark.keeps_upstream
def test_layers_of_one_backend_keep_its_usual_layout():
    """Where every group uses FlashAttention (the usual hybrid case), the views
    are the plain (2, num_blocks, ...) ones, as before."""
    from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend

    views = views_of_one_shared_tensor({"sliding": FlashAttentionBackend,
                                        "full": FlashAttentionBackend})

    for view in views.values():
        assert view.shape[:2] == (2, NUM_BLOCKS)
        assert view.is_contiguous()
