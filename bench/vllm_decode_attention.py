#!/usr/bin/env python3
"""Decode attention alone at Gemma-4-E4B's layer shapes, on vLLM 0.20.2's own kernels: FA4 at several
tile shapes and split counts, and vLLM's Triton kernel for the sliding-window layers.

The question it answers: is the per-call cost of FA4 on the 35 sliding-window layers (~14 µs at
b=16 @ 8192 on an H100, for 17 MB of KV) a property of FA4's tile choice for decode, which a small
change in FA4's Python could fix, or of the kernel itself?  FA4 on SM90 picks a 128 x 64 tile for
head_dim 256 with a sliding window (interface._tile_size_fwd_sm90), although a decode step packs only
4 query rows per KV head (8 query heads / 2 KV heads, pack_gqa) into the 128 rows.

  # on the GPU host, with vLLM's site-packages on PYTHONPATH (the staging of bench/vllm_backends.py):
  python3 bench/vllm_decode_attention.py run --out $OUT/decode_attention.json
  # the Triton kernel of a tree patched with gemma4-triton-sliding-window-decode-split, same host:
  PYTHONPATH=<patched site-packages> python3 bench/vllm_decode_attention.py run --kernels triton \
      --label patched --out $OUT/decode_attention_patched.json
  # here: bench/results/vllm_decode_attention.{json,md}
  python3 bench/vllm_decode_attention.py record /path/to/decode_attention.json --notes notes.md \
      --patched /path/to/decode_attention_patched.json

Calls are made as vLLM 0.20.2's FlashAttention backend makes them (paged KV in vLLM's block size for
the layer kind: 32 tokens for head_dim 256, 16 for 512; varlen q of one token per sequence; causal
with window (511, 0) on the sliding layers), timed by CUDA-graph replay (bench/gpu_timing.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (kind, head_dim, window_left, block_size, batch, context): vLLM's block sizes for this model
CASES = [("sliding hd256", 256, 511, 32, 16, 8192), ("sliding hd256", 256, 511, 32, 16, 1024),
         ("sliding hd256", 256, 511, 32, 1, 1024), ("full hd512", 512, None, 16, 16, 8192),
         ("full hd512", 512, None, 16, 1, 1024)]
# FA4 tile shapes (m, n) tried per head_dim; None is FA4's own choice
TILES = {256: [None, (64, 64), (64, 32), (64, 128)], 512: [None, (64, 32)]}
SPLITS = {256: [0, 1, 2, 4, 8], 512: [0, 8]}
Q_HEADS, KV_HEADS = 8, 2


def kv_bytes(hd: int, window: int | None, batch: int, context: int) -> int:
    return batch * min(context, (window + 1) if window else context) * KV_HEADS * hd * 2 * 2


def run(out: Path, kernels: set[str], label: str):
    import torch
    from gpu_timing import graph_us
    from vllm.vllm_flash_attn.cute import interface as fa4
    dev = torch.device("cuda")
    chosen: list = []
    heuristic = fa4.num_splits_heuristic

    def logged(total_mblocks, num_sms, num_n_blocks, max_splits):
        r = heuristic(total_mblocks, num_sms, num_n_blocks, max_splits)
        chosen.append({"total_mblocks": total_mblocks, "num_n_blocks": num_n_blocks, "splits": r})
        return r

    fa4.num_splits_heuristic = logged
    rows = []
    t0 = time.time()
    for kind, hd, window, bs, B, L in CASES:
        nblk = B * L // bs
        q = torch.randn(B, Q_HEADS, hd, device=dev, dtype=torch.bfloat16)
        o = torch.empty_like(q)
        bt = torch.arange(nblk, device=dev, dtype=torch.int32).view(B, -1)
        cu = torch.arange(B + 1, device=dev, dtype=torch.int32)
        used = torch.full((B,), L, device=dev, dtype=torch.int32)
        nbytes = kv_bytes(hd, window, B, L)
        base = {"kind": kind, "batch": B, "context": L, "block_size": bs}
        # FA4 as vLLM calls it (flash_attn_interface.flash_attn_varlen_func with fa_version=4 calls
        # _flash_attn_fwd with these arguments), plus tile_mn
        kc = torch.randn(nblk, bs, KV_HEADS, hd, device=dev, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        ref = None
        for tile in (TILES[hd] if "fa4" in kernels else []):
            for ns in SPLITS[hd]:
                chosen.clear()

                def call():
                    fa4._flash_attn_fwd(q, kc, vc, cu_seqlens_q=cu, seqused_k=used, max_seqlen_q=1,
                                        max_seqlen_k=L, page_table=bt, softmax_scale=hd ** -0.5, causal=True,
                                        window_size_left=window, window_size_right=0 if window else None,
                                        num_splits=ns, out=o, tile_mn=tile)
                row = {**base, "kernel": "fa4", "tile": list(tile) if tile else "default", "num_splits": ns}
                try:
                    tc = time.time()
                    call()
                    torch.cuda.synchronize()
                    row["first_call_s"] = round(time.time() - tc, 1)
                    if ref is None:
                        ref = o.clone()
                    row["max_abs_diff_vs_default"] = float((o.float() - ref.float()).abs().max())
                    us = graph_us(call, reps=20, replays=5)
                    row.update(us=round(us, 2), GB_per_s=round(nbytes / us / 1e3, 1),
                               heuristic=chosen[0] if chosen else None)
                except Exception as e:  # noqa: BLE001  (a tile FA4 cannot build is a finding)
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                print(json.dumps(row), flush=True)
        # vLLM's Triton kernel, with the 3D (split-KV) buffers vLLM's TRITON_ATTN backend
        # allocates (16 segments; used for decode below 64 sequences), and without them (2D)
        if "triton" in kernels:
            from vllm.v1.attention.ops.triton_unified_attention import unified_attention
            kt = torch.randn(nblk, bs, KV_HEADS, hd, device=dev, dtype=torch.bfloat16)
            vt = torch.randn_like(kt)
            segs = 16
            seg_o = torch.empty(64, Q_HEADS, segs, hd, device=dev, dtype=torch.float32)
            seg_m = torch.empty(64, Q_HEADS, segs, device=dev, dtype=torch.float32)
            seg_e = torch.empty_like(seg_m)
            for mode in ("3d", "2d"):
                extra = dict(seq_threshold_3D=64, num_par_softmax_segments=segs, softmax_segm_output=seg_o,
                             softmax_segm_max=seg_m, softmax_segm_expsum=seg_e) if mode == "3d" else {}

                def tcall():
                    unified_attention(q, kt, vt, o, cu_seqlens_q=cu, max_seqlen_q=1, seqused_k=used,
                                      max_seqlen_k=L, softmax_scale=hd ** -0.5, causal=True,
                                      window_size=(window, 0) if window else (-1, -1),
                                      block_table=bt, softcap=0,
                                      q_descale=None, k_descale=None, v_descale=None, **extra)
                row = {**base, "kernel": f"triton unified_attention ({mode})", "tree": label}
                try:
                    us = graph_us(tcall, reps=20, replays=5)
                    row.update(us=round(us, 2), GB_per_s=round(nbytes / us / 1e3, 1))
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                print(json.dumps(row), flush=True)
    import vllm
    out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "label": label,
                               "vllm": vllm.__version__, "command": "python3 " + " ".join(sys.argv),
                               "seconds": round(time.time() - t0), "rows": rows}, indent=1))


def record(path: Path, notes: Path | None, patched: Path | None = None, unpatched: Path | None = None):
    from results_record import write
    res = json.loads(path.read_text())
    if unpatched:   # Triton rows of the unpatched tree from the run that also measured --patched
        u = json.loads(unpatched.read_text())
        res["unpatched_triton_command"] = u["command"]
        res["rows"] = [r for r in res["rows"] if r["kernel"] == "fa4"] + u["rows"]
    if patched:   # Triton rows of the patched tree, measured on the same host right after
        p = json.loads(patched.read_text())
        res["patched_command"] = p["command"]
        res["rows"] += [{**r, "tree": "patched"} for r in p["rows"]]
    if notes:
        res["notes"] = notes.read_text()
    lines = ["# Decode attention alone at Gemma-4-E4B shapes: FA4 tiles and splits, vLLM's Triton kernel", ""]
    if notes:
        lines += [res["notes"].rstrip(), ""]
    lines += [f"GPU: {res['gpu']} · vLLM {res['vllm']} · torch {res['torch']} · bf16 · 8 query heads, 2 KV heads · "
              "one query token per sequence · paged KV in vLLM's block size for the layer kind · CUDA-graph "
              "replay, median of 5 x 20 calls", "",
              "Microseconds per call (KV read rate in GB/s). FA4 tile `default` is FA4's own choice "
              "(128 x 64 for head_dim 256 with a window, 64 x 64 for 512); num_splits 0 is FA4's heuristic "
              "(its choice in brackets), as vLLM calls it.", ""]
    for kind, hd, window, bs, B, L in CASES:
        sel = [r for r in res["rows"] if (r["kind"], r["batch"], r["context"]) == (kind, B, L)]
        if not sel:
            continue
        lines += [f"## {kind}, batch {B}, context {L} (block size {bs}, {kv_bytes(hd, window, B, L) / 1e6:.1f} MB of KV)", "",
                  "| kernel | tile | " + " | ".join(f"splits {s}" if s else "heuristic" for s in SPLITS[hd]) + " |",
                  "|---|---|" + "---|" * len(SPLITS[hd])]
        for tile in TILES[hd]:
            t = list(tile) if tile else "default"
            cells = []
            for s in SPLITS[hd]:
                r = next((x for x in sel if x["kernel"] == "fa4" and x["tile"] == t and x["num_splits"] == s), None)
                if r is None:
                    cells.append("")
                elif "error" in r:
                    cells.append("fails")
                else:
                    h = f" [{r['heuristic']['splits']}]" if s == 0 and r.get("heuristic") else ""
                    cells.append(f"{r['us']} ({r['GB_per_s']:.0f}){h}")
            lines.append(f"| FA4 | {'x'.join(map(str, tile)) if tile else 'default'} | " + " | ".join(cells) + " |")
        for r in (x for x in sel if x["kernel"].startswith("triton")):
            cell = "fails" if "error" in r else f"{r['us']} ({r['GB_per_s']:.0f})"
            tree = r.get("tree", "unpatched")
            name = r["kernel"] + (", patched" if tree == "patched" else "")
            lines.append(f"| {name} | | {cell} |" + " |" * (len(SPLITS[hd]) - 1))
        errs = sorted({(tuple(r["tile"]) if r.get("tile") != "default" else "default", r["error"][:160])
                       for r in sel if "error" in r and r["kernel"] == "fa4"})
        if errs:
            lines += [""] + [f"- tile {e[0]} fails: `{e[1]}`" for e in errs]
        diffs = [r["max_abs_diff_vs_default"] for r in sel if "max_abs_diff_vs_default" in r]
        if diffs:
            lines += ["", f"Every FA4 variant's output against FA4's default: max |Δ| = {max(diffs):.3g}."]
        lines.append("")
    lines += [f"Command (GPU host, vLLM 0.20.2 site-packages on PYTHONPATH): `{res['command']}`"]
    if res.get("unpatched_triton_command"):
        lines += [f"Triton rows of the unpatched tree, measured right before the patched ones on the same "
                  f"host (a later device session than the FA4 rows): `{res['unpatched_triton_command']}`"]
    if res.get("patched_command"):
        lines += [f"Triton rows marked patched (the same site-packages copied and patched with "
                  f"gemma4-triton-sliding-window-decode-split by tools/apply.py --site-packages, on PYTHONPATH): "
                  f"`{res['patched_command']}`"]
    lines.append("")
    write("vllm_decode_attention", res, "\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (GPU host)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--kernels", default="fa4,triton", help="comma-separated: fa4, triton (default both)")
    r.add_argument("--label", default="unpatched", help="which tree's vLLM is on PYTHONPATH (recorded)")
    c = sub.add_parser("record", help="bench/results/vllm_decode_attention.{json,md} (here)")
    c.add_argument("json", type=Path)
    c.add_argument("--notes", type=Path, help="markdown written by a person: the findings, put first")
    c.add_argument("--patched", type=Path, help="the JSON of a `run --kernels triton --label patched`")
    c.add_argument("--unpatched-triton", type=Path, help="the JSON of a `run --kernels triton` of the unpatched "
                   "tree made next to --patched: replaces the main run's Triton rows")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.out, set(a.kernels.split(",")), a.label)
    else:
        record(a.json, a.notes, a.patched, a.unpatched_triton)


if __name__ == "__main__":
    main()
