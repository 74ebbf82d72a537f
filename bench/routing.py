#!/usr/bin/env python3
"""Benchmark: SGLang Gemma 4 MoE routing, unpatched torch path vs the fused Triton kernel (patch 3).

Both sides run the real `Gemma4MoE.routing_function` source, taken from the unpatched and from the
patched pinned tree; the patched one dispatches to `gemma4_fused_routing` from the patched tree's
`gemma4_fused_ops.py`.  Only torch and Triton are needed on the GPU host: no SGLang install.

  # here: stage the three source files from the pinned trees (materialized by tools/)
  python3 bench/routing.py prepare .stage/routing
  # on the GPU host (one run measures both sides):
  python3 bench/routing.py run .stage/routing --out $OUT
  # here: record the JSON it wrote as bench/results/routing.{json,md}
  python3 bench/routing.py record /path/to/routing.json

Timing: CUDA-graph replay of 200 calls, median of 7 replays, per call; launches per call from
torch.profiler.  Outputs are compared bit for bit before timing.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAUSAL = "python/sglang/srt/models/gemma4_causal.py"
FUSED = "python/sglang/srt/layers/gemma4_fused_ops.py"
TOKENS = (1, 8, 32, 128, 512, 2048, 8192)


def prepare(stage: Path):
    sys.path.insert(0, str(ROOT / "tools"))
    from patchseries import engine, series as series_mod
    from patchseries.upstream_cache import UpstreamCache
    series = series_mod.load(ROOT / "series.yaml")
    up = series.upstream("sglang")
    patch = series.patch("gemma4-fused-moe-routing")
    cache = UpstreamCache()
    stage.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = cache.tree_at(up, Path(tmp) / "tree")
        (stage / "unpatched_gemma4_causal.py").write_bytes((tree / CAUSAL).read_bytes())
        chosen = [p for p in series.patches_for("sglang")]
        chosen = chosen[: chosen.index(patch) + 1]
        outcomes = engine.TreeApplier(tree).apply(engine.load_items(series, chosen))
        assert all(o.outcome in engine.SUCCESS for o in outcomes), outcomes
        (stage / "patched_gemma4_causal.py").write_bytes((tree / CAUSAL).read_bytes())
        (stage / "gemma4_fused_ops.py").write_bytes((tree / FUSED).read_bytes())
    (stage / "SOURCE").write_text(f"sglang {up.artifact.version} ({up.ref}); patch {patch.file}\n")
    print(f"staged in {stage}")


def routing_function_from(source_file: Path, namespace: dict):
    """The nested routing_function of Gemma4MoE.__init__, compiled from the file's own source."""
    tree = ast.parse(source_file.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "routing_function":
            module = ast.Module(body=[node], type_ignores=[])
            exec(compile(module, str(source_file), "exec"), namespace)
            return namespace["routing_function"]
    raise SystemExit(f"no routing_function in {source_file}")


def compare(g, wb, ib, wa, ia) -> dict:
    """Same experts up to ties (equal logits) and bit-identical weights wherever the ids agree."""
    import torch
    lb, la = g.gather(1, ib.long()), g.gather(1, ia.long())
    same_values = bool(torch.equal(lb.sort(dim=1).values, la.sort(dim=1).values))
    agree = ib == ia
    weights_equal = bool(torch.equal(wb[agree], wa[agree]))
    tie_rows = int((~agree).any(dim=1).sum())
    return {"ids_equal_up_to_ties": same_values, "weights_bitwise_equal_where_ids_agree": weights_equal,
            "rows_with_tied_ids_in_other_order": tie_rows,
            "equal": same_values and weights_equal}


def run(stage: Path, out: Path):
    import torch
    import triton
    from torch.profiler import ProfilerActivity, profile
    from gpu_timing import graph_us

    spec = importlib.util.spec_from_file_location("gemma4_fused_ops", stage / "gemma4_fused_ops.py")
    fused = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fused)
    E, K = 128, 8
    torch.manual_seed(0)
    scale = (torch.rand(E, device="cuda", dtype=torch.bfloat16) + 0.5)
    ns_before = {"torch": torch, "per_expert_scale": scale}
    ns_after = {"torch": torch, "per_expert_scale": scale, "gemma4_fused_routing": fused.gemma4_fused_routing,
                "gemma4_fused_routing_supported": fused.gemma4_fused_routing_supported}
    before = routing_function_from(stage / "unpatched_gemma4_causal.py", ns_before)
    after = routing_function_from(stage / "patched_gemma4_causal.py", ns_after)


    def launches(fn):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in p.events() if e.device_type.name == "CUDA")

    one = torch.zeros(1, device="cuda")
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "source": (stage / "SOURCE").read_text().strip(), "E": E, "topk": K, "dtype": "bfloat16",
           "method": "CUDA-graph replay of 200 calls, median of 7 replays, per call (bench/gpu_timing.py)",
           "command": "python3 bench/routing.py run .stage/routing --out $OUT",
           "one_trivial_launch_us": round(graph_us(lambda: one.add_(1.0)), 2), "rows": []}
    for T in TOKENS:
        g = torch.randn(T, E, device="cuda", dtype=torch.bfloat16)
        wb, ib = before(None, g, K, True)
        wa, ia = after(None, g, K, True)
        same = compare(g, wb, ib, wa, ia)
        tb = graph_us(lambda: before(None, g, K, True))
        ta = graph_us(lambda: after(None, g, K, True))
        row = {"T": T, "unpatched_us": round(tb, 2), "patched_us": round(ta, 2),
               "speedup": round(tb / ta, 2), "unpatched_launches": launches(lambda: before(None, g, K, True)),
               "patched_launches": launches(lambda: after(None, g, K, True)), **same}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))


def markdown(res) -> str:
    lines = [f"GPU: {res['gpu']} · torch {res['torch']} · triton {res['triton']} · {res['source']}",
             f"E={res['E']}, top-k {res['topk']}, {res['dtype']}; {res['method']}; one trivial launch: "
             f"{res['one_trivial_launch_us']} µs", "",
             "| tokens T | unpatched µs | patched µs | speed-up | launches unpatched → patched | "
             "same result (ids up to ties, weights bitwise) | rows with tied ids reordered |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['T']} | {r['unpatched_us']} | {r['patched_us']} | {r['speedup']}× | "
                     f"{r['unpatched_launches']} → {r['patched_launches']} | {'yes' if r['equal'] else 'NO'} | "
                     f"{r['rows_with_tied_ids_in_other_order']} |")
    lines += ["", f"Command (GPU host): `{res['command']}` after `python3 bench/routing.py prepare .stage/routing`."]
    return "\n".join(lines) + "\n"


def record(json_path: Path):
    res = json.loads(json_path.read_text())
    from results_record import write as write_record
    write_record("routing", res, markdown(res))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("stage", type=Path)
    r = sub.add_parser("run")
    r.add_argument("stage", type=Path)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")))
    c = sub.add_parser("record")
    c.add_argument("json", type=Path)
    a = ap.parse_args()
    {"prepare": lambda: prepare(a.stage), "run": lambda: run(a.stage, a.out),
     "record": lambda: record(a.json)}[a.cmd]()
