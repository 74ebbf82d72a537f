#!/usr/bin/env python3
"""SGLang 0.5.12.post1, Gemma 4: full-attention and sliding-window KV pool sizes, unpatched vs the
series through `gemma4-moe-swa-full-tokens-ratio` and through `gemma4-mm-disabled-by-default`,
computed by SGLang's own code on a CPU.

Which it was: a CPU computation, not a GPU run. SGLang's engine was not staged on the GPU host; the
pool split is arithmetic that needs no GPU: ServerArgs resolves swa_full_tokens_ratio for the model,
ModelConfig reads the layer layout from config.json, and HybridSWAPoolConfigurator (the class the
model runner uses for hybrid sliding-window models) turns a KV memory budget into full and SWA pool
tokens. The budget per GPU is total memory x mem_fraction_static (SGLang's default for that GPU
memory, resolved by ServerArgs) minus the bf16 weights counted from the model's own parameter
shapes (the model is built on the meta device with SGLang's Gemma 4 classes, so no memory is
allocated). The text-only weight count is the same model with the vision/audio towers skipped.

  python3 bench/sglang_swa_pools.py            # both trees, both configs, 80 GB and 141 GB; records
                                               # bench/results/sglang_swa_pools.{json,md}
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
CONFIGS = ROOT / "tests" / "regression" / "sglang" / "configs"
MODELS = {"gemma-4-26B-A4B-it (MoE)": CONFIGS / "gemma-4-26B-A4B-it",
          "gemma-4-31B-it (dense)": CONFIGS / "gemma-4-31B-it"}
GPUS_GB = {"80 GB (H100)": 80, "141 GB (H200)": 141}
PATCH = "gemma4-moe-swa-full-tokens-ratio"
MM_PATCH = "gemma4-mm-disabled-by-default"   # also changes the budget: text-only weights, non-VLM fraction


def child(model_dir: str, gpu_gb: int) -> dict:
    """Runs with the tree's sglang on PYTHONPATH (SGLang's CPU engine: no CUDA here)."""
    import torch
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_executor import pool_configurator as pc
    from sglang.srt.server_args import ServerArgs

    weights = weight_bytes(model_dir)
    args = ServerArgs(model_path=model_dir, device="cuda")
    mc = ModelConfig.from_server_args(args)
    pc.get_attention_tp_size = lambda: 1   # TP=1: the distributed state is not initialised here
    runner = type("Runner", (), {"model_config": mc, "kv_cache_dtype": torch.bfloat16, "server_args": args})()
    conf = pc.HybridSWAPoolConfigurator(runner)
    fraction = args.mem_fraction_static
    budget = int(gpu_gb * 1e9 * fraction) - weights["text_only" if mc.is_multimodal is False else "all"]
    pools = conf.calculate_pool_sizes(budget, page_size=1)
    return {"swa_full_tokens_ratio": args.swa_full_tokens_ratio, "is_multimodal": mc.is_multimodal,
            "mem_fraction_static": fraction, "weights_bytes": weights, "kv_budget_bytes": budget,
            "full_layers": len(mc.full_attention_layer_ids), "swa_layers": len(mc.swa_attention_layer_ids),
            "full_tokens": pools.full_max_total_num_tokens, "swa_tokens": pools.swa_max_total_num_tokens}


def weight_bytes(model_dir: str) -> dict:
    """bf16 bytes of the model's parameters, all towers and text-only, from SGLang's own model classes
    built on the meta device (nothing allocated), as the model loader would build them."""
    import socket
    import torch
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.distributed import parallel_state as ps
    from sglang.srt.model_loader.utils import get_model_architecture
    from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

    if not ps.model_parallel_is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ps.init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                        distributed_init_method=f"tcp://127.0.0.1:{port}")
        ps.initialize_model_parallel(tensor_model_parallel_size=1, backend="gloo")
    out = {}
    for label, enable_mm in (("all", True), ("text_only", None)):
        args = ServerArgs(model_path=model_dir, device="cpu", dtype="bfloat16", enable_multimodal=enable_mm)
        set_global_server_args_for_scheduler(args)
        mc = ModelConfig.from_server_args(args)
        cls, _ = get_model_architecture(mc)
        with torch.device("meta"):
            model = cls(config=mc.hf_config, quant_config=None)
        out[label] = sum(p.numel() for p in model.parameters()) * 2
    return out


def run_tree(python: Path, tree: Path) -> dict:
    res = {}
    for model, path in MODELS.items():
        for gpu, gb in GPUS_GB.items():
            code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import sglang_swa_pools as m; "
                    f"print('RESULT', json.dumps(m.child({str(path)!r}, {gb})))")
            env = {**os.environ, "PYTHONPATH": str(tree / "python"), "SGLANG_USE_CPU_ENGINE": "1"}
            p = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, timeout=900)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            res[f"{model} @ {gpu}"] = json.loads(line[-1][7:]) if line else {"error": (p.stdout + p.stderr)[-2000:]}
            print(model, gpu, json.dumps(res[f"{model} @ {gpu}"])[:300], flush=True)
    return res


def main():
    from patchseries import engine
    from patchseries import series as series_mod
    from patchseries.pyenv import PythonEnv
    from patchseries.upstream_cache import UpstreamCache, default_cache_root
    series = series_mod.load(ROOT / "series.yaml")
    up = series.upstream("sglang")
    cache = UpstreamCache(default_cache_root())
    python = PythonEnv.for_requirements(cache.root, f"sglang-{up.artifact.version}",
                                        ROOT / "tests" / "regression" / "sglang" / "requirements.txt").python
    carried = list(series.patches_for("sglang"))
    names = [p.name for p in carried]
    res = {"what": __doc__.split("\n\n")[0], "sglang": up.artifact.version,
           "command": "python3 bench/sglang_swa_pools.py", "trees": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, last in (("unpatched", None), (f"through {PATCH}", PATCH), (f"through {MM_PATCH}", MM_PATCH)):
            tree = cache.tree_at(up, Path(tmp) / label.replace(" ", "_"))
            through = carried[: names.index(last) + 1] if last else []
            if through:
                outcomes = engine.TreeApplier(tree).apply(engine.load_items(series, through))
                assert all(o.outcome in engine.SUCCESS for o in outcomes), outcomes
            print(f"== {label}", flush=True)
            res["trees"][label] = {"patches": [p.name for p in through], "results": run_tree(python, tree)}
    from results_record import write as write_record
    write_record("sglang_swa_pools", res, markdown(res))


def markdown(res: dict) -> str:
    trees = res["trees"]
    base = trees["unpatched"]["results"]
    lines = [f"# SGLang {res['sglang']} Gemma 4 KV pools: unpatched vs `{PATCH}` and `{MM_PATCH}`", "",
             "Computed on a CPU with SGLang's own code (ServerArgs, ModelConfig, HybridSWAPoolConfigurator; "
             "weights counted from SGLang's model classes built on the meta device); not a GPU run: SGLang's "
             "engine was not staged on the GPU host. TP=1, bf16 KV cache and weights. KV budget per GPU = "
             "GPU memory × mem_fraction_static (as ServerArgs resolves it here, with no GPU memory to read) − "
             f"weights. Command: `{res['command']}`.", "",
             "| model @ GPU | tree | ratio | multimodal | weights GB | KV budget GB | full-attention pool tokens "
             "| SWA pool tokens | full tokens vs unpatched |", "|---|---|---|---|---|---|---|---|---|"]
    for key in base:
        for label, t in trees.items():
            r = t["results"][key]
            if "error" in r:
                lines.append(f"| {key} | {label} | error: {r['error'][-160:]!r} | | | | | | |")
                continue
            w = r["weights_bytes"]["all" if r["is_multimodal"] else "text_only"]
            u = base[key]
            rel = f"{r['full_tokens'] / u['full_tokens']:.2f}×" if "error" not in u and u["full_tokens"] else ""
            lines.append(f"| {key} | {label} | {r['swa_full_tokens_ratio']} | {r['is_multimodal']} | {w / 1e9:.2f} | "
                         f"{r['kv_budget_bytes'] / 1e9:.2f} | {r['full_tokens']:,} | {r['swa_tokens']:,} | {rel} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
