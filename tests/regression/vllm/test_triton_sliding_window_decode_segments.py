"""Split-KV decode on TRITON_ATTN spreads a sliding window over every segment
(patch gemma4-triton-sliding-window-decode-split).

vLLM's Triton unified attention decodes batches of fewer than 64 sequences with
its 3D kernel: each sequence's keys are split over 16 segments that run in
parallel and are then reduced. The segments split the whole sequence, but a
sliding-window layer attends only to its last W keys: Gemma 4's sliding layers
(W = 512) at 8192 tokens of context leave the window to one segment of 16,
which reads it alone while the other 15 find nothing to do. That is where
Gemma 4 decode spends its attention time on every GPU that runs it on
TRITON_ATTN (vLLM forces TRITON_ATTN for Gemma 4 wherever FlashAttention cannot
serve head_dim 512: Ampere, Ada, Blackwell; bench/results/vllm_triton_window.md).

Real code: vLLM's ``unified_attention`` from the tree under test, run by
Triton's interpreter on the CPU (on a GPU for the ``gpu`` variant), in a
process of its own (tests/regression/vllm/triton_decode_run.py). Shapes are
those of Gemma-4-E4B's sliding layers: 8 query heads, 2 KV heads, head_dim 256.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

RUNNER = pathlib.Path(__file__).resolve().parent / "triton_decode_run.py"
GEMMA4_SLIDING = {"head_dim": 256, "q_heads": 8, "kv_heads": 2}
WINDOW = 512
# decode steps at a long context (window-aligned and not) and one shorter than the window
WINDOWED = {**GEMMA4_SLIDING, "contexts": [8192, 8000, 300], "window": WINDOW}
FULL = {**GEMMA4_SLIDING, "contexts": [1000, 37], "window": None}

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


@functools.lru_cache(maxsize=None)
def decode(device: str) -> dict:
    """Results of triton_decode_run.py for both cases, keyed 'windowed' and 'full'."""
    proc = subprocess.run(
        [sys.executable, str(RUNNER), device, json.dumps([WINDOWED, FULL])],
        capture_output=True, text=True, env=os.environ.copy(), timeout=900,
    )
    if proc.returncode != 0:
        raise AssertionError(f"triton_decode_run.py {device} failed:\n{proc.stderr[-4000:]}")
    windowed, full = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"windowed": windowed, "full": full}


def _cuda_available() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                          capture_output=True, text=True)
    return proc.stdout.strip() == "True"


DEVICES = [
    pytest.param("interpreter", marks=pytest.mark.skipif(
        not HAS_TRITON, reason="triton is not installed (tests/regression/vllm/requirements.txt)")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not _cuda_available(), reason="no CUDA device")]),
]


@pytest.mark.parametrize("device", DEVICES)
def test_long_context_window_is_split_over_every_segment(device):
    res = decode(device)["windowed"]
    for context, heads in zip(WINDOWED["contexts"][:2], res["segments_with_keys"][:2]):
        assert heads == [res["segments"]] * GEMMA4_SLIDING["q_heads"], (
            f"decode at {context} tokens with a {WINDOW}-token window: segments that "
            f"attended to keys, per query head: {heads} of {res['segments']}"
        )


@pytest.mark.keeps_upstream
@pytest.mark.parametrize("device", DEVICES)
def test_windowed_decode_attends_to_exactly_the_window(device):
    res = decode(device)["windowed"]
    assert res["max_abs_err"] < (1e-4 if device == "interpreter" else 3e-2), res["max_abs_err"]


@pytest.mark.keeps_upstream
@pytest.mark.parametrize("device", DEVICES)
def test_full_attention_decode_keeps_its_split(device):
    """Without a window the segments split the whole sequence, as before."""
    res = decode(device)["full"]
    assert res["max_abs_err"] < (1e-4 if device == "interpreter" else 3e-2), res["max_abs_err"]
    # 1000 tokens = 63 tiles of 16: 16 segments of 4 tiles; 37 tokens = 3 tiles: 3 segments
    assert res["segments_with_keys"] == [[16] * 8, [3] * 8]
