"""Run vLLM's Triton unified attention on decode batches and report, per case, how
far its output is from a reference and which split-KV (3D) segments did work.

A separate process (tests/regression/vllm/test_triton_sliding_window_decode_segments.py
starts it): whether vLLM uses Triton, and whether Triton interprets kernels on
the CPU (TRITON_INTERPRET=1), is decided when they are first imported.

  python triton_decode_run.py interpreter|cuda CASES_JSON   ->  RESULTS_JSON on stdout

A case: {"contexts": [int, ...], "window": int or null, "head_dim", "q_heads",
"kv_heads"}: one decode step (one query token) per sequence, with 16 segments, as
vLLM's TRITON_ATTN backend calls the kernel below 64 sequences.
"""

from __future__ import annotations

import json
import os
import sys
import types

SEGMENTS = 16
BLOCK_SIZE = 16


def _setup(device: str) -> None:
    if device == "interpreter":
        os.environ["TRITON_INTERPRET"] = "1"
        # vllm.triton_utils keeps the real Triton when it finds no GPU driver only
        # where CUDA_VISIBLE_DEVICES is set and empty (its check for Ray workers)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        # compiled extensions the imported modules reach (as the tests' conftest);
        # a GPU host has the real ones
        for name in ("vllm._C", "vllm._C_stable_libtorch", "vllm._moe_C"):
            sys.modules.setdefault(name, types.ModuleType(name))
        import numpy as np
        import triton.runtime.interpreter as interpreter

        # The interpreter turns a scalar into a loop bound with int(array); vLLM's
        # kernel loads seq_len as a one-element array, which NumPy 2 refuses.
        patch_tensor = interpreter._patch_lang_tensor

        def patch_with_scalar_index(tensor, scope):
            patch_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__",
                           lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

        interpreter._patch_lang_tensor = patch_with_scalar_index


def run_case(case: dict, device: str) -> dict:
    import torch

    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    dev = "cpu" if device == "interpreter" else "cuda"
    dtype = torch.float32 if device == "interpreter" else torch.bfloat16
    contexts, window = case["contexts"], case["window"]
    hd, qh, kvh = case["head_dim"], case["q_heads"], case["kv_heads"]
    n = len(contexts)
    gen = torch.Generator().manual_seed(0)
    per_seq = max((c + BLOCK_SIZE - 1) // BLOCK_SIZE for c in contexts)
    k_cache = torch.randn(n * per_seq, BLOCK_SIZE, kvh, hd, generator=gen).to(dev, dtype)
    v_cache = torch.randn(n * per_seq, BLOCK_SIZE, kvh, hd, generator=gen).to(dev, dtype)
    # every sequence's blocks in reverse order: block ids are not positions
    block_table = torch.arange(n * per_seq, dtype=torch.int32).view(n, per_seq).flip(1).contiguous().to(dev)
    q = torch.randn(n, qh, hd, generator=gen).to(dev, dtype)
    out = torch.zeros_like(q)
    segm_out = torch.zeros(n, qh, SEGMENTS, hd, device=dev, dtype=torch.float32)
    segm_max = torch.full((n, qh, SEGMENTS), float("nan"), device=dev, dtype=torch.float32)
    segm_expsum = torch.zeros(n, qh, SEGMENTS, device=dev, dtype=torch.float32)
    unified_attention(
        q, k_cache, v_cache, out,
        cu_seqlens_q=torch.arange(n + 1, dtype=torch.int32, device=dev), max_seqlen_q=1,
        seqused_k=torch.tensor(contexts, dtype=torch.int32, device=dev), max_seqlen_k=max(contexts),
        softmax_scale=hd**-0.5, causal=True,
        window_size=(window - 1, 0) if window else (-1, -1),
        block_table=block_table, softcap=0, q_descale=None, k_descale=None, v_descale=None,
        seq_threshold_3D=n, num_par_softmax_segments=SEGMENTS, softmax_segm_output=segm_out,
        softmax_segm_max=segm_max, softmax_segm_expsum=segm_expsum)
    max_err = 0.0
    for i, ctx in enumerate(contexts):
        blocks = block_table[i].long().cpu()
        k = k_cache.float().cpu()[blocks].reshape(-1, kvh, hd)[:ctx]
        v = v_cache.float().cpu()[blocks].reshape(-1, kvh, hd)[:ctx]
        if window:
            k, v = k[-window:], v[-window:]
        qq = q[i].float().cpu().view(kvh, qh // kvh, hd)
        p = (torch.einsum("hgd,thd->hgt", qq, k) * hd**-0.5).softmax(-1)
        ref = torch.einsum("hgt,thd->hgd", p, v).reshape(qh, hd)
        max_err = max(max_err, (ref - out[i].float().cpu()).abs().max().item())
    # a segment that attended to at least one key leaves a finite running max
    worked = torch.isfinite(segm_max.cpu())
    return {"case": case, "max_abs_err": max_err,
            "segments_with_keys": worked.sum(-1).tolist(),   # [sequence][query head]
            "segments": SEGMENTS}


def main() -> None:
    device, cases = sys.argv[1], json.loads(sys.argv[2])
    _setup(device)
    print(json.dumps([run_case(c, device) for c in cases]))


if __name__ == "__main__":
    main()
