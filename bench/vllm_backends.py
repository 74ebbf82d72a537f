#!/usr/bin/env python3
"""Benchmark: vLLM 0.20.2 Gemma 4 attention backends, unpatched vs patch
`gemma4-fa4-attention-backend` (FlashAttention with FA4 on every layer where FA4 serves head_dim 512,
instead of TRITON_ATTN on every layer), or vs another vLLM patch of the series (`prepare --patch NAME`,
e.g. gemma4-triton-sliding-window-decode-split; `--reuse-bundle` keeps the staged bundle parts).

Both sides run the real vLLM 0.20.2 wheel (trimmed for Hopper) on the GPU host: the unpatched tree is
the wheel as built by tools/build.py with no vLLM patch; the patched tree is a copy of it patched on
the host by the project's own `tools/apply.py --site-packages` (Python files only, verified).  One
device run measures both, each engine in its own process (unpatched first), same prompts.

  # here: build the unpatched offline bundle (tools/build.py), split it into one folder per transfer,
  # snapshot the patch into a stage series, fetch the wheels tools/apply.py needs on the host
  python3 bench/vllm_backends.py prepare .stage/vllm
  # on the GPU host, one transfer per part (carry .stage/vllm/cN):
  bash .stage/vllm/cN/install.sh stage /tmp/stage
  # on the GPU host, last call: install, patch the copy, measure both trees
  python3 bench/vllm_backends.py run .stage/vllm --out $OUT
  # the GPU tests (not part of the benchmark): tools/regress.py --gpu --upstream vllm --site-packages ...
  # FA4 decode attention alone at several split counts, and its record:
  python3 bench/vllm_backends.py fa4-splits --out $OUT/fa4_splits.json
  python3 bench/vllm_backends.py record-splits /path/to/fa4_splits.json
  # here: record the JSON it wrote as bench/results/vllm_backends.{json,md}
  python3 bench/vllm_backends.py record /path/to/vllm_backends.json

Model: Gemma-4-E4B-shaped text model (bench/gemma4-e4b-text.config.json: 42 layers = 35 sliding
head_dim 256 + 7 full head_dim 512), dummy weights (load_format="dummy"), bf16, CUDA graphs.
Workloads (best of --reps): prefill 32x4096 (16 out), prefill 16x8192 (16 out), decode b=1 at 1024
in / 256 out, decode b=16 at 1024 and at 8192 in.  Decode tok/s = B*255 / (t(256 out) - t(1 out)).
Agreement: greedy tokens and top-k logprobs of both trees on the same dummy weights and prompts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the patch measured by default; `prepare --patch NAME` measures another vLLM patch of the series
PATCH_NAME = "gemma4-fa4-attention-backend"
CONFIG = ROOT / "bench" / "gemma4-e4b-text.config.json"
DEPS = ROOT / "bench" / "vllm-0.20.2-offline-deps.txt"
# FA4 (vllm/vllm_flash_attn/cute, 1.2 MB of Python) stays: the patch uses it on Hopper.
DROP = ["vllm/vllm_flash_attn/_vllm_fa2_C*", "vllm/_moe_C*", "vllm/third_party/deep_gemm*"]
TOOL_WHEELS = ["ruamel.yaml==0.19.1", "unidiff==1.0.1"]   # packaging is on the host
HOST_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            # FA4 kernels are compiled at first use (CuTe DSL); later engine processes reuse them
            "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1"}
MODEL_DIR = Path("/tmp/gemma4-e4b-dummy")
WORKLOADS = ["prefill_32x4096", "prefill_16x8192", "decode_b1_1024", "decode_b16_1024",
             "decode_b16_8192"]
TARGETS = {"prefill": 1.15, "decode_b16_8192": 1.2, "floor": 0.98}


def tree_env(site) -> dict:
    """Environment of a process that runs one tree: its site-packages first on PYTHONPATH, plus the
    folder nvidia-cutlass-dsl's .pth file names (pip --target does not process .pth files)."""
    path = f"{site}:{site}/nvidia_cutlass_dsl/python_packages"
    return {**os.environ, **HOST_ENV, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- prepare (here, CPU)

def _patch_snapshot(dest_dir: Path, patch: str) -> tuple[Path, str]:
    """series.yaml copied into dest_dir with the vLLM patches replaced by the one patch measured, its
    file snapshotted into dest_dir/patches, so that the run measures a known version of it.
    Returns the snapshot series.yaml and the patch's file (relative to patches/)."""
    from ruamel.yaml import YAML
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load((ROOT / "series.yaml").read_text())
    entry = next((p for p in doc["patches"] if p["name"] == patch and p["upstream"] == "vllm"), None)
    if entry is None:
        raise SystemExit(f"no vLLM patch named {patch!r} in series.yaml")
    if (dest_dir / "patches").exists():
        shutil.rmtree(dest_dir / "patches")
    (dest_dir / "patches" / "vllm").mkdir(parents=True)
    shutil.copy2(ROOT / "patches" / entry["file"], dest_dir / "patches" / entry["file"])
    doc["patches"] = [{"name": patch, "upstream": "vllm", "file": entry["file"], "summary": entry["summary"],
                       "why": "snapshot for bench/vllm_backends.py", "status": "carried"}]
    with open(dest_dir / "series.yaml", "w") as f:
        yaml.dump(doc, f)
    return dest_dir / "series.yaml", entry["file"]


def prepare(stage: Path, max_part: str, patch: str = PATCH_NAME, reuse_bundle: bool = False):
    stage = stage.resolve()
    stage.mkdir(parents=True, exist_ok=True)
    meta = stage / "meta"          # what the last device call needs besides its bundle part
    shutil.rmtree(stage / "series-unpatched", ignore_errors=True)   # what earlier versions staged
    unpatched_site = Path("/tmp/vllm-0.20.2-unpatched/site-packages")
    cmd = [sys.executable, str(ROOT / "tools" / "build.py"), "vllm", "--unpatched",
           "--target", str(unpatched_site)]
    for g in DROP:
        cmd += ["--drop", g]
    cmd += ["--deps", str(DEPS), "--bundle", str(stage / "bundle"), "--max-part", max_part, "--json"]
    bundle_keys = ("wheel", "build_command", "dropped_globs", "dropped_files", "fa4_cute_dropped", "parts",
                   "other_py_differing")
    if reuse_bundle:   # the unpatched bundle does not depend on the patch: keep c1, c2, ... as staged
        if not (meta / "PREPARED.json").exists() or not unpatched_site.is_dir():
            raise SystemExit("--reuse-bundle: run prepare without it first (no earlier bundle here)")
        earlier = json.loads((meta / "PREPARED.json").read_text())
        bundle_info = {k: earlier[k] for k in bundle_keys}
    else:
        print("$", " ".join(cmd[1:]), flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"build failed ({p.returncode}): {p.stdout[-2000:]}{p.stderr[-2000:]}")
        build = json.loads(p.stdout)
        if build["series_files"]:
            raise SystemExit(f"the unpatched build touched series files: {build['series_files']}")
        # one folder per transfer: the installer, the sums and one part each
        parts = sorted((stage / "bundle").glob("part-*"))
        for old in stage.glob("c[0-9]*"):
            shutil.rmtree(old)
        for i, part in enumerate(parts, 1):
            d = stage / f"c{i}"
            d.mkdir()
            for f in ("install.sh", "SHA256SUMS", "FILES.sha256"):
                shutil.copy2(stage / "bundle" / f, d / f)
            shutil.move(str(part), d / part.name)
        bundle_info = {"wheel": build["wheel"], "build_command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""),
                       "dropped_globs": DROP, "dropped_files": len(build["dropped_files"]),
                       "fa4_cute_dropped": any(f.startswith("vllm/vllm_flash_attn/cute/")
                                               for f in build["dropped_files"]),
                       "parts": build["bundle"]["parts"], "other_py_differing": build["other_py_differing"]}
    patched, patch_file = _patch_snapshot(meta / "series-patched", patch)
    # wheels tools/apply.py needs on the host
    tw = meta / "tool-wheels"
    shutil.rmtree(tw, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "-d", str(tw), *TOOL_WHEELS], check=True)
    # the patched files as tools/apply.py must produce them (checked on the host)
    sys.path.insert(0, str(ROOT / "tools"))
    from patchseries import series as series_mod
    from patchseries.installed import InstalledPatcher
    from patchseries import engine
    ser = series_mod.load(patched)
    up = ser.upstream("vllm")
    probe = Path("/tmp/vllm-0.20.2-probe")
    shutil.rmtree(probe, ignore_errors=True)
    shutil.copytree(unpatched_site, probe)
    outcomes = InstalledPatcher(probe, up).apply(engine.load_items(ser, list(ser.patches_for("vllm"))))
    files = sorted({f for o in outcomes for f in o.files})
    info = {"patch": patch, "patch_file": patch_file, **bundle_info,
            "patch_sha256": sha256(ROOT / "patches" / patch_file),
            "patch_outcomes": [(o.name, o.outcome) for o in outcomes],
            "expected_patched_sha256": {rel: sha256(probe / rel) for rel in files},
            "unpatched_sha256": {rel: sha256(unpatched_site / rel) for rel in files}}
    shutil.rmtree(meta / "fallback", ignore_errors=True)
    for rel in files:   # used only if apply.py fails there
        (meta / "fallback" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(probe / rel, meta / "fallback" / rel)
    shutil.rmtree(probe, ignore_errors=True)
    (meta / "PREPARED.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.copy2(CONFIG, meta / "config.json")
    print(json.dumps({k: info[k] for k in ("wheel", "parts", "patch_outcomes", "expected_patched_sha256")},
                     indent=1))
    print(f"staged in {stage}: " + ", ".join(sorted(d.name for d in stage.glob("c[0-9]*"))))


# --------------------------------------------------------------------------- engine (GPU host, one tree)

def _backends_rpc(self):
    """Per Attention layer: backend name, head size, FlashAttention version, KV-sharing."""
    ctx = self.model_runner.vllm_config.compilation_config.static_forward_context
    out = {}
    for name, layer in ctx.items():
        ab = getattr(layer, "attn_backend", None)
        if ab is None:
            continue
        impl = getattr(layer, "impl", None)
        out[name] = [ab.get_name(), getattr(layer, "head_size", None),
                     getattr(impl, "vllm_flash_attn_version", None),
                     getattr(layer, "kv_sharing_target_layer_name", None) is not None]
    return out


def _reinit_rpc(self):
    """Replace the dummy weights by deterministic ones on a realistic scale, in place.

    load_format="dummy" fills every state_dict tensor uniformly in +-1e-3, Gemma 4's persistent
    `layer_scalar` buffers included: the residual stream is scaled by ~1e-3 in each of the 42 layers and
    every logit comes out exactly 0.0, so greedy agreement on those weights is vacuous.  Here: matrices
    ~ N(0, 1/fan_in) from a generator seeded by the tensor's name (same values in both trees), norm
    weights, layer_scalar and any other 0-d/1-d tensor = 1.0, except q_norm/k_norm weights = head_size**-0.25
    (so that q.k is ~N(0, 1), not a near-one-hot softmax)."""
    import zlib
    import torch
    mr = self.model_runner
    model = mr.get_model() if hasattr(mr, "get_model") else mr.model
    ones, qk, mats = [], [], 0
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if t.dim() <= 1:
                if name.endswith(("q_norm.weight", "k_norm.weight")):
                    t.fill_(t.numel() ** -0.25)   # q.k over head_dim ~ N(0, 1): a typical attention entropy
                    qk.append(name)
                else:
                    t.fill_(1.0)
                    ones.append(name)
                continue
            g = torch.Generator(device=t.device).manual_seed(zlib.crc32(name.encode()))
            std = (t.numel() // t.shape[0]) ** -0.5
            if not t.is_contiguous():
                t.copy_(torch.randn(t.shape, generator=g, device=t.device, dtype=torch.float32) * std)
                mats += 1
                continue
            flat = t.view(t.shape[0], -1)
            for i in range(0, flat.shape[0], 16384):
                rows = flat[i:i + 16384]
                rows.copy_(torch.randn(rows.shape, generator=g, device=t.device, dtype=torch.float32) * std)
            mats += 1
    torch.cuda.synchronize()
    return {"matrices": mats, "set_to_one": len(ones), "q_k_norm_head_size_pow_-0.25": len(qk),
            "set_to_one_kinds": sorted({".".join(n.split(".")[-2:]) for n in ones})}


def fa4_available():
    """vLLM's FA4_AVAILABLE (it only looks for vllm_flash_attn/cute), or why FA4 cannot be imported."""
    try:
        from vllm.vllm_flash_attn import flash_attn_interface as fai
        if not fai.FA4_AVAILABLE:
            return False
        import vllm.vllm_flash_attn.cute.interface  # noqa: F401  (imports cutlass and quack)
        return True
    except Exception as e:  # noqa: BLE001
        return f"import failed: {e!r}"


def summarize_backends(per_layer: dict) -> dict:
    summary: dict = {}
    for v in per_layer.values():
        k = f"{v[0]}/hd{v[1]}" + (f"/fa{v[2]}" if v[2] is not None else "")
        summary[k] = summary.get(k, 0) + 1
    return dict(sorted(summary.items()))


def make_llm(eager: bool, max_model_len: int, gpu_mem: float, flash_attn_version: int | None = None,
             block_size: int | None = None):
    """flash_attn_version: as --attention-config.flash_attn_version; block_size: as --block-size
    (None: vLLM's choice)."""
    from vllm import LLM
    extra = {"attention_config": {"flash_attn_version": flash_attn_version}} if flash_attn_version else {}
    extra.update({"block_size": block_size} if block_size else {})
    return LLM(model=str(MODEL_DIR), load_format="dummy", skip_tokenizer_init=True,
               max_model_len=max_model_len, dtype="bfloat16", gpu_memory_utilization=gpu_mem,
               enable_prefix_caching=False, enforce_eager=eager, seed=0, logprobs_mode="raw_logits", **extra)


def agreement_prompts(n=8):
    import random
    rng = random.Random(2024)
    return [[rng.randrange(10, 262000) for _ in range(rng.choice((64, 256, 512, 1024)))] for _ in range(n)]


def greedy_with_logits(llm, prompts, max_tokens=32, k=5):
    """Greedy tokens and, per step, the top-k raw logits (logprobs_mode=raw_logits)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=k)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
    res = []
    for o in outs:
        c = o.outputs[0]
        steps = [{str(t): lp.logprob for t, lp in d.items()} for d in (c.logprobs or [])]
        res.append({"tokens": list(c.token_ids), "logits": steps})
    return res


def engine_agreement(label: str, out: Path):
    """Eager engine, realistic-scale deterministic weights (_reinit_rpc), greedy tokens + top-5 logits;
    written to out (a .json path, or a folder: out/agreement_LABEL.json)."""
    import torch
    import vllm
    t0 = time.perf_counter()
    write_model_dir()
    llm = make_llm(eager=True, max_model_len=2048, gpu_mem=0.7)
    per_layer = llm.collective_rpc(_backends_rpc)[0]
    reinit = llm.collective_rpc(_reinit_rpc)[0]
    res = {"label": label, "vllm": vllm.__version__, "vllm_file": vllm.__file__, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(), "mode": "eager (enforce_eager=True), max_model_len 2048",
           "weights": "dummy, then re-initialized: matrices N(0, 1/fan_in) seeded by tensor name; "
                      "q_norm/k_norm weights head_size**-0.25; other 0-d/1-d tensors (norm weights, "
                      "layer_scalar) = 1.0", "reinit": reinit,
           "backends_per_layer": per_layer, "backends": summarize_backends(per_layer),
           "attention_config_backend": str(llm.llm_engine.vllm_config.attention_config.backend),
           "greedy": greedy_with_logits(llm, agreement_prompts())}
    # controls with the same kernels: the same batch again (determinism), and each prompt alone (the batch
    # composition changes; the noise floor a kernel change has to be compared with)
    res["greedy_batched_again"] = greedy_with_logits(llm, agreement_prompts())
    res["greedy_single"] = [greedy_with_logits(llm, [q])[0] for q in agreement_prompts()]
    res["s"] = round(time.perf_counter() - t0, 1)
    (out if out.suffix == ".json" else out / f"agreement_{label}.json").write_text(json.dumps(res))
    print(f"[{label}] agreement engine done in {res['s']}s backends {json.dumps(res['backends'])} "
          f"reinit {json.dumps(reinit)} first tokens {res['greedy'][0]['tokens'][:8]}", flush=True)


def fa4_split_hook(force_hd512: int | None) -> list:
    """Record FA4's split-KV decision for every call (kernel launches during CUDA graph capture are
    what the graphs replay), and optionally force num_splits for head_dim-512 calls: an experiment
    knob for finding out what the full-attention layers lose at decode, not a patch."""
    from vllm.vllm_flash_attn.cute import interface as fa4
    log: list = []
    heuristic, fwd = fa4.num_splits_heuristic, fa4._flash_attn_fwd
    last: dict = {}

    def logged_heuristic(total_mblocks, num_sms, num_n_blocks, max_splits):
        r = heuristic(total_mblocks, num_sms, num_n_blocks, max_splits)
        last.update(total_mblocks=total_mblocks, num_sms=num_sms, num_n_blocks=num_n_blocks, heuristic=r)
        return r

    def logged_fwd(q, k, v, *args, **kw):
        hd = q.shape[-1]
        asked = kw.get("num_splits", 1)
        if force_hd512 is not None and hd == 512 and kw.get("max_seqlen_q") == 1:
            kw["num_splits"] = force_hd512
        last.clear()
        out = fwd(q, k, v, *args, **kw)
        log.append({"head_dim": hd, "tokens": q.shape[0], "kv_cache_shape": list(k.shape), "max_seqlen_q": kw.get("max_seqlen_q"),
                    "max_seqlen_k": kw.get("max_seqlen_k"), "window_left": kw.get("window_size_left"),
                    "num_splits_asked": asked, "num_splits_passed": kw.get("num_splits"), **last})
        return out

    logged_fwd.compile_cache = fwd.compile_cache   # the module looks it up on _flash_attn_fwd
    fa4.num_splits_heuristic, fa4._flash_attn_fwd = logged_heuristic, logged_fwd
    return log


def summarize_split_log(log: list) -> list:
    """Distinct FA4 split decisions with how often each was made."""
    seen: dict = {}
    for e in log:
        key = json.dumps(e, sort_keys=True)
        seen[key] = seen.get(key, 0) + 1
    return [{**json.loads(k), "calls": n} for k, n in sorted(seen.items(), key=lambda kv: -kv[1])][:40]


def engine(site: str, label: str, out: Path, reps: int, skip: list[str], profile: bool,
           flash_attn_version: int | None = None, profile_shapes: list[tuple[int, int]] = (),
           fa4_splits: str | None = None, block_size: int | None = None):
    import random
    import torch
    import vllm
    import transformers
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    t0 = time.perf_counter()
    write_model_dir()
    split_log = None
    if fa4_splits is not None and fa4_available() is True:
        split_log = fa4_split_hook(None if fa4_splits == "log" else int(fa4_splits))
    llm = make_llm(eager=False, max_model_len=10240, gpu_mem=0.85, flash_attn_version=flash_attn_version,
                   block_size=block_size)
    res = {"label": label, "site": site, "flash_attn_version_option": flash_attn_version,
           "block_size_option": block_size, "vllm": vllm.__version__, "vllm_file": vllm.__file__,
           "torch": torch.__version__, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name(), "init_s": round(time.perf_counter() - t0, 1)}
    print(f"[{label}] INIT {res['init_s']}s vllm {vllm.__version__} from {vllm.__file__}", flush=True)
    res["fa4_available"] = fa4_available()
    if split_log is not None:
        res["fa4_splits_option"] = fa4_splits
        res["fa4_split_decisions_init"] = summarize_split_log(split_log)
        split_log.clear()
    per_layer = llm.collective_rpc(_backends_rpc)[0]
    res["backends_per_layer"] = per_layer
    res["backends"] = summarize_backends(per_layer)
    cfg = llm.llm_engine.vllm_config
    res["attention_config_backend"] = str(cfg.attention_config.backend)
    res["cudagraph_mode"] = str(cfg.compilation_config.cudagraph_mode)
    res["max_num_batched_tokens"] = cfg.scheduler_config.max_num_batched_tokens
    print(f"[{label}] BACKENDS {json.dumps(res['backends'])} attention_config.backend="
          f"{res['attention_config_backend']}", flush=True)
    # agreement data (compared across trees by `run`)
    res["greedy"] = greedy_with_logits(llm, agreement_prompts())
    (out / f"engine_{label}.json").write_text(json.dumps(res))

    rng = random.Random(1234)

    def prompts(n, L):
        return [TokensPrompt(prompt_token_ids=[rng.randrange(10, 262000) for _ in range(L)]) for _ in range(n)]

    def timed(n, L, out_toks, r):
        sp = SamplingParams(temperature=0.0, max_tokens=out_toks, ignore_eos=True)
        times = []
        gen = 0
        for _ in range(r):
            ps = prompts(n, L)
            torch.cuda.synchronize()
            t = time.perf_counter()
            outs = llm.generate(ps, sp, use_tqdm=False)
            times.append(time.perf_counter() - t)
            gen = sum(len(o.outputs[0].token_ids) for o in outs)
        return min(times), times, gen

    timed(4, 512, 8, 1)   # warm-up
    w = res["workloads"] = {}
    for name in WORKLOADS:
        if name in skip:
            continue
        if name.startswith("prefill"):
            n, L = map(int, name.split("_")[1].split("x"))
            best, times, gen = timed(n, L, 16, reps)
            w[name] = {"prompt_tok_s": n * L / best, "s": best, "times_s": times, "out_tokens": gen,
                       "what": f"{n} prompts x {L} tokens, 16 out; prompt tokens / s"}
        else:
            _, b, L = name.split("_")
            B, L = int(b[1:]), int(L)
            t1, times1, _ = timed(B, L, 1, reps)
            t256, times256, gen = timed(B, L, 256, reps)
            w[name] = {"decode_tok_s": B * 255 / (t256 - t1), "out_tok_s": gen / t256, "s_256": t256,
                       "s_1": t1, "times_256_s": times256, "times_1_s": times1,
                       "what": f"batch {B}, {L} in, 256 out; B*255 / (t(256 out) - t(1 out))"}
        print(f"[{label}] {name} {json.dumps({k: v for k, v in w[name].items() if 'times' not in k})}",
              flush=True)
        if split_log is not None:
            w[name]["fa4_split_decisions"] = summarize_split_log(split_log)
            split_log.clear()
        (out / f"engine_{label}.json").write_text(json.dumps(res))
    if profile:
        res["profile_decode_b1"] = profile_decode(llm, torch)
        (out / f"engine_{label}.json").write_text(json.dumps(res))
    for batch, context in profile_shapes:
        res[f"profile_decode_b{batch}_{context}"] = profile_decode(llm, torch, batch=batch, context=context)
        (out / f"engine_{label}.json").write_text(json.dumps(res))
    print(f"[{label}] done in {time.perf_counter() - t0:.0f}s", flush=True)


def profile_decode(llm, torch, steps=64, batch=1, context=1024):
    """Per decode step (batch prompts of context tokens): CUDA kernel time by kernel name, from the
    difference of a 1-token and a (steps+1)-token generate under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    import random
    rng = random.Random(7)
    p = [TokensPrompt(prompt_token_ids=[rng.randrange(10, 262000) for _ in range(context)])
         for _ in range(batch)]

    def kernels(max_tokens):
        sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        llm.generate(p, sp, use_tqdm=False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            llm.generate(p, sp, use_tqdm=False)
            torch.cuda.synchronize()
        agg: dict = {}
        for e in prof.events():
            if e.device_type.name != "CUDA":
                continue
            a = agg.setdefault(e.name, [0.0, 0])
            a[0] += e.time_range.elapsed_us()
            a[1] += 1
        return agg

    k1, kn = kernels(1), kernels(steps + 1)
    per_step = {}
    for name in set(k1) | set(kn):
        us = (kn.get(name, [0, 0])[0] - k1.get(name, [0, 0])[0]) / steps
        cnt = (kn.get(name, [0, 0])[1] - k1.get(name, [0, 0])[1]) / steps
        if us > 0.05:
            per_step[name] = {"us": round(us, 2), "launches": round(cnt, 2)}
    top = sorted(per_step.items(), key=lambda kv: -kv[1]["us"])
    return {"steps": steps, "total_us_per_step": round(sum(v["us"] for _, v in top), 1),
            "top": [{"kernel": n[:160], **v} for n, v in top[:60]]}


def fa4_decode_splits(out: Path, block_size: int = 64):
    """FA4 decode attention alone, as vLLM calls it (paged KV, varlen q of one token per sequence),
    for Gemma-4-E4B's two layer kinds, at several num_splits (0: FA4's own heuristic, whose choice is
    recorded): microseconds per call (CUDA-graph replay, median of 5 x 20 calls) and the KV bytes
    read per microsecond.  Finds whether split-KV leaves decode time on the table."""
    import torch
    from gpu_timing import graph_us
    from vllm.vllm_flash_attn.cute import interface as fa4
    from vllm.vllm_flash_attn.flash_attn_interface import flash_attn_varlen_func
    chosen: list = []
    heuristic = fa4.num_splits_heuristic

    def logged(total_mblocks, num_sms, num_n_blocks, max_splits):
        r = heuristic(total_mblocks, num_sms, num_n_blocks, max_splits)
        chosen.append({"total_mblocks": total_mblocks, "num_sms": num_sms, "num_n_blocks": num_n_blocks, "splits": r})
        return r

    fa4.num_splits_heuristic = logged
    dev = torch.device("cuda")
    rows = []
    cases = [("full hd512", 512, None, 16, 8192), ("full hd512", 512, None, 16, 1024), ("full hd512", 512, None, 1, 1024),
             ("sliding hd256", 256, 511, 16, 8192), ("sliding hd256", 256, 511, 1, 1024)]
    for kind, hd, window, B, L in cases:
        nblk = B * L // block_size
        kc = torch.randn(nblk, block_size, 2, hd, device=dev, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(B, 8, hd, device=dev, dtype=torch.bfloat16)
        o = torch.empty_like(q)
        bt = torch.arange(nblk, device=dev, dtype=torch.int32).view(B, -1)
        cu = torch.arange(B + 1, device=dev, dtype=torch.int32)
        used = torch.full((B,), L, device=dev, dtype=torch.int32)
        kv_bytes = B * min(L, (window or L) + 1) * 2 * hd * 2 * 2
        for ns in (0, 1, 2, 3, 4, 6, 8, 16):
            chosen.clear()

            def call():
                flash_attn_varlen_func(q=q, k=kc, v=vc, out=o, cu_seqlens_q=cu, max_seqlen_q=1, seqused_k=used,
                                       max_seqlen_k=L, softmax_scale=hd ** -0.5, causal=True,
                                       window_size=[window, 0] if window else None, block_table=bt,
                                       fa_version=4, num_splits=ns)
            try:
                us = graph_us(call, reps=20, replays=5)
                row = {"kind": kind, "batch": B, "context": L, "num_splits": ns, "us": round(us, 2),
                       "GB_per_s": round(kv_bytes / us / 1e3, 1), "heuristic": chosen[0] if chosen else None}
            except Exception as e:  # noqa: BLE001
                row = {"kind": kind, "batch": B, "context": L, "num_splits": ns, "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "block_size": block_size, "rows": rows}, indent=1))


# --------------------------------------------------------------------------- probe (GPU test helper)

def probe(site: str, out: Path, hide_fa4: bool = False):
    """A small eager engine: per-layer backends and greedy tokens, as JSON (for the GPU test).
    hide_fa4: vLLM is told FA4 is not installed (FA4_AVAILABLE = False), as on a build without it."""
    import vllm
    if hide_fa4:
        from vllm.vllm_flash_attn import flash_attn_interface as fai
        fai.FA4_AVAILABLE = False
    write_model_dir()
    llm = make_llm(eager=True, max_model_len=2048, gpu_mem=0.6)
    per_layer = llm.collective_rpc(_backends_rpc)[0]
    g = greedy_with_logits(llm, agreement_prompts(4)[:4], max_tokens=8, k=1)
    out.write_text(json.dumps({"vllm": vllm.__version__, "vllm_file": vllm.__file__, "fa4_available": fa4_available(),
                               "fa4_hidden": hide_fa4,
                               "backends_per_layer": per_layer, "backends": summarize_backends(per_layer),
                               "attention_config_backend": str(llm.llm_engine.vllm_config.attention_config.backend),
                               "greedy_tokens": [x["tokens"] for x in g]}))


DRAFTER_CONFIGS = {"dflash": ROOT / "tests" / "regression" / "vllm" / "configs" / "gemma4-e4b-dflash" / "config.json",
                   "eagle3": ROOT / "tests" / "regression" / "vllm" / "configs" / "gemma4-e4b-eagle3" / "config.json"}
SPEC_TOKENS = {"dflash": 8, "eagle3": 3}


def drafter_probe(out: Path, method: str, target_backend: str | None):
    """An eager engine: the Gemma-4-E4B-shaped target with a drafter (dflash: 5 layers, head_dim 128,
    non-causal; eagle3: one Llama layer, head_dim 128, on the target's KV-cache path), dummy weights,
    the target's re-initialized on a realistic scale. Records whether it builds (and the error if not),
    every attention layer's backend, and the greedy tokens of one batch of 8 prompts run twice:
    speculative decoding with greedy verification emits the target's own greedy tokens, so the two
    runs must agree unless one layer group overwrites another's KV cache blocks."""
    import vllm
    write_model_dir()
    draft_dir = Path(f"/tmp/gemma4-e4b-{method}-dummy")
    draft_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(DRAFTER_CONFIGS[method], draft_dir / "config.json")
    res = {"vllm_file": vllm.__file__, "fa4_available": fa4_available(), "method": method,
           "target_backend_option": target_backend}
    try:
        from vllm import LLM
        extra = {"attention_config": {"backend": target_backend}} if target_backend else {}
        llm = LLM(model=str(MODEL_DIR), load_format="dummy", skip_tokenizer_init=True, max_model_len=2048,
                  dtype="bfloat16", gpu_memory_utilization=0.6, enable_prefix_caching=False, enforce_eager=True,
                  seed=0, logprobs_mode="raw_logits",
                  speculative_config={"method": method, "model": str(draft_dir),
                                      "num_speculative_tokens": SPEC_TOKENS[method]},
                  **extra)
    except Exception as e:  # noqa: BLE001  (the unpatched tree's failure is the finding)
        res["error"] = f"{type(e).__name__}: {e}"[:2000]
        out.write_text(json.dumps(res))
        return
    per_layer = llm.collective_rpc(_backends_rpc)[0]
    res["backends_per_layer"] = per_layer
    res["backends"] = summarize_backends(per_layer)
    res["attention_config_backend"] = str(llm.llm_engine.vllm_config.attention_config.backend)
    res["reinit"] = llm.collective_rpc(_reinit_rpc)[0]
    res["greedy"] = greedy_with_logits(llm, agreement_prompts(), k=1)
    res["greedy_batched_again"] = greedy_with_logits(llm, agreement_prompts(), k=1)
    out.write_text(json.dumps(res))
    print(f"[{method}] backends {json.dumps(res['backends'])}", flush=True)


def write_model_dir():
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    cfg = CONFIG if CONFIG.exists() else ROOT / ".stage" / "vllm" / "meta" / "config.json"
    shutil.copy2(cfg, MODEL_DIR / "config.json")


# --------------------------------------------------------------------------- run (GPU host, both trees)

def agreement(u: list, p: list) -> dict:
    """Greedy tokens and top-k raw logits, unpatched vs patched, same prompts and dummy weights.
    Logits are compared at every step whose context is identical in both (up to and including the
    first diverging token); relative = |delta| / max |logit| of that step."""
    seqs, equal_seqs, tok_total, tok_equal = len(u), 0, 0, 0
    max_abs, max_rel, first_div, margins = 0.0, 0.0, [], []
    for a, b in zip(u, p):
        ta, tb = a["tokens"], b["tokens"]
        tok_total += len(ta)
        tok_equal += sum(x == y for x, y in zip(ta, tb))
        div = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), None)
        equal_seqs += div is None
        first_div.append(div)
        last = len(ta) - 1 if div is None else div
        for i in range(min(last + 1, len(a["logits"]), len(b["logits"]))):
            la, lb = a["logits"][i], b["logits"][i]
            scale = max(abs(v) for v in la.values()) or 1.0
            for t in set(la) & set(lb):
                d = abs(la[t] - lb[t])
                max_abs, max_rel = max(max_abs, d), max(max_rel, d / scale)
        if div is not None and div < len(a["logits"]):
            top = sorted(a["logits"][div].values(), reverse=True)
            if len(top) > 1:
                margins.append(top[0] - top[1])
    all_zero = all(v == 0.0 for a in u + p for step in a["logits"] for v in step.values())
    return {"sequences": seqs, "identical_sequences": equal_seqs, "tokens": tok_total, "all_logits_zero": all_zero,
            "tokens_equal_position_wise": tok_equal, "token_agreement": tok_equal / max(tok_total, 1),
            "first_divergence_step": first_div, "max_abs_logit_diff": max_abs,
            "max_rel_logit_diff": max_rel,
            "unpatched_top1_top2_margin_at_divergence": margins}


def agreement_comparisons(u: dict, p: dict) -> dict:
    """Each engine generated the 8 prompts as one batch (greedy), the same batch again right after
    (greedy_batched_again), and each prompt alone (greedy_single)."""
    pairs = {"patched vs unpatched, first batch": (u, "greedy", p, "greedy"),
             "patched vs unpatched, same batch again": (u, "greedy_batched_again", p, "greedy_batched_again"),
             "patched vs unpatched, each prompt alone": (u, "greedy_single", p, "greedy_single"),
             "unpatched: first batch vs same batch again": (u, "greedy", u, "greedy_batched_again"),
             "patched: first batch vs same batch again": (p, "greedy", p, "greedy_batched_again"),
             "unpatched: batch again vs each prompt alone (noise floor)": (u, "greedy_batched_again", u,
                                                                          "greedy_single"),
             "patched: batch again vs each prompt alone (noise floor)": (p, "greedy_batched_again", p,
                                                                        "greedy_single")}
    return {name: agreement(a[ka], b[kb]) for name, (a, ka, b, kb) in pairs.items() if a.get(ka) and b.get(kb)}


def ratios(u: dict, p: dict) -> dict:
    """patched/unpatched per workload: prompt tok/s for prefill, decode tok/s for decode."""
    out = {}
    for name in WORKLOADS:
        a, b = u.get("workloads", {}).get(name), p.get("workloads", {}).get(name)
        if a and b:
            key = "prompt_tok_s" if name.startswith("prefill") else "decode_tok_s"
            out[name] = b[key] / a[key]
    return out


def _stream(cmd, env, log: Path, timeout: float, tag: str) -> int | str:
    """Run cmd, all output to log; lines tagged with tag (and errors) also to stdout."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, cwd=str(ROOT))
        t_end = time.time() + timeout
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        tail = []
        while True:
            if time.time() > t_end:
                proc.kill()
                proc.wait()
                print(f"{tag}: killed after {timeout:.0f}s", flush=True)
                return "timeout"
            if sel.select(timeout=1.0):
                line = proc.stdout.readline()
                if not line:
                    break
                f.write(line)
                tail = (tail + [line])[-25:]
                if tag in line or "Error" in line or line.startswith(("PASSED", "FAILED", "SKIPPED")) \
                        or " passed" in line or " failed" in line:
                    print(line.rstrip()[:400], flush=True)
            elif proc.poll() is not None:
                break
        rc = proc.wait()
        if rc != 0:
            print(f"{tag}: exit {rc}; last lines:\n" + "".join(tail)[-3000:], flush=True)
        return rc


def run_agreement(site_u: Path, site_p: Path, out: Path, budget_s: float, res: dict):
    """Both trees, eager engines, realistic-scale weights: greedy agreement and logit differences."""
    t_start = time.time()
    got = {}
    for label, site in (("unpatched", site_u), ("patched", site_p)):
        cmd = [sys.executable, str(Path(__file__).relative_to(ROOT)), "engine", "--agreement-only",
               "--site", str(site), "--label", label, "--out", str(out)]
        env = tree_env(site)
        res["commands"][f"agreement_{label}"] = f"PYTHONPATH={env['PYTHONPATH']} python3 " + " ".join(cmd[1:])
        left = budget_s - (time.time() - t_start)
        rc = _stream(cmd, env, out / f"agreement_{label}.log", max(60.0, left / (2 if label == "unpatched" else 1)),
                     f"[{label}]")
        f = out / f"agreement_{label}.json"
        got[label] = json.loads(f.read_text()) if f.exists() else {"rc": rc}
    u, p = got["unpatched"], got["patched"]
    res["agreement_realistic_weights"] = {
        "how": u.get("weights"), "mode": u.get("mode"), "reinit": u.get("reinit"),
        "backends": {k: v.get("backends") for k, v in got.items()},
        **(agreement(u["greedy"], p["greedy"]) if u.get("greedy") and p.get("greedy") else
           {"error": f"unpatched rc {u.get('rc')}, patched rc {p.get('rc')}"})}
    res["agreement_realistic_weights"]["comparisons"] = agreement_comparisons(u, p)
    res["agreement_tokens"] = {k: [g["tokens"] for g in v.get("greedy", [])] for k, v in got.items()}


def run(stage: Path, site_u: Path, out: Path, reps: int, skip: list[str], budget_s: float,
        profile: bool, agreement_only: bool = False, variant: bool = False):
    t_start = time.time()
    deadline = t_start + budget_s
    out.mkdir(parents=True, exist_ok=True)
    stage = stage.resolve()
    meta = stage / "meta"
    prepared = json.loads((meta / "PREPARED.json").read_text())
    res = {"run_command": "python3 " + " ".join(sys.argv), "prepared": prepared, "host_env": HOST_ENV, "reps": reps, "skipped_workloads": skip,
           "commands": {}, "timeline_s": {}}
    write_model_dir()

    def save():
        (out / "vllm_backends.json").write_text(json.dumps(res, indent=1) + "\n")

    # 1. the patched copy, made by the project's own tools/apply.py (Python files only, verified)
    toolsite = Path("/tmp/toolsite")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(toolsite), *map(str, sorted((meta / "tool-wheels").glob("*.whl")))],
                   check=True)
    site_p = Path("/tmp/vllm-patched/site-packages")
    shutil.rmtree(site_p.parent, ignore_errors=True)
    shutil.copytree(site_u, site_p, symlinks=True)
    apply_cmd = ["tools/apply.py", "--site-packages", str(site_p), "--upstream", "vllm",
                 "--series", str((meta / "series-patched" / "series.yaml").relative_to(ROOT)), "--json"]
    res["commands"]["apply"] = "python3 " + " ".join(apply_cmd)
    p = subprocess.run([sys.executable, *apply_cmd], cwd=str(ROOT), capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(toolsite)})
    try:
        apply_out = json.loads(p.stdout)
    except ValueError:
        apply_out = p.stdout[-3000:] + p.stderr[-3000:]
    res["apply"] = {"rc": p.returncode, "output": apply_out, "git": shutil.which("git")}
    expected = prepared["expected_patched_sha256"]
    res["apply"]["patched_file_matches_expected"] = all(sha256(site_p / r) == h for r, h in expected.items())
    res["apply"]["unpatched_file_matches_wheel"] = all(sha256(site_u / r) == h
                                                       for r, h in prepared["unpatched_sha256"].items())
    print(f"apply.py rc={p.returncode} patched {', '.join(expected)} as expected: "
          f"{res['apply']['patched_file_matches_expected']}; unpatched as wheel: "
          f"{res['apply']['unpatched_file_matches_wheel']}", flush=True)
    if p.returncode != 0 or not res["apply"]["patched_file_matches_expected"]:
        print(f"apply.py output: {str(apply_out)[:2000]}", flush=True)
        if not all((meta / "fallback" / r).exists() for r in expected):
            save()
            raise SystemExit("patching failed and no fallback")
        for r in expected:
            shutil.copy2(meta / "fallback" / r, site_p / r)
        res["apply"]["fallback_used"] = all(sha256(site_p / r) == h for r, h in expected.items())
        print("FALLBACK: staged patched files copied in", flush=True)
    res["timeline_s"]["patched_copy_ready"] = round(time.time() - t_start, 1)
    save()
    if agreement_only:
        run_agreement(site_u, site_p, out, deadline - time.time() - 10, res)
        res["timeline_s"]["agreement_done"] = round(time.time() - t_start, 1)
        (out / "vllm_backends_agreement.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / "vllm_backends.json").unlink(missing_ok=True)
        print(json.dumps({k: v for k, v in res["agreement_realistic_weights"].items()}), flush=True)
        return

    # 2. one engine per tree, its own process, unpatched first
    engines = {}
    runs = [("unpatched", site_u, None), ("patched", site_p, None)]
    if variant:   # the patched tree with FA3 on the head_dim-256 layers (FA4 only where FA3 cannot serve)
        runs.append(("patched_fa3", site_p, 3))
    for i, (label, site, fa_version) in enumerate(runs):
        left = deadline - time.time()
        reserve = 20 + 150 * (len(runs) - 1 - i)
        timeout = max(60.0, min(300.0, left - reserve))
        cmd = [sys.executable, str(Path(__file__).relative_to(ROOT)), "engine", "--site", str(site),
               "--label", label, "--out", str(out), "--reps", str(reps)]
        cmd += [a for s in skip for a in ("--skip", s)] + (["--profile"] if profile else [])
        cmd += ["--flash-attn-version", str(fa_version)] if fa_version else []
        env = tree_env(site)
        res["commands"][f"engine_{label}"] = f"PYTHONPATH={env['PYTHONPATH']} python3 " + " ".join(cmd[1:])
        rc = _stream(cmd, env, out / f"engine_{label}.log", timeout, f"[{label}]")
        f = out / f"engine_{label}.json"
        engines[label] = json.loads(f.read_text()) if f.exists() else {}
        engines[label]["rc"] = rc
        res["timeline_s"][f"engine_{label}_done"] = round(time.time() - t_start, 1)
    res["engines"] = {k: {kk: vv for kk, vv in v.items() if kk not in ("greedy", "backends_per_layer")}
                      for k, v in engines.items()}
    res["backends_per_layer"] = {k: v.get("backends_per_layer") for k, v in engines.items()}
    u, pt = engines["unpatched"], engines["patched"]
    if u.get("greedy") and pt.get("greedy"):
        res["agreement"] = agreement(u["greedy"], pt["greedy"])
    res["ratios"] = ratios(u, pt)
    if "patched_fa3" in engines:
        res["ratios_patched_fa3"] = ratios(u, engines["patched_fa3"])
    save()
    print(markdown(res), flush=True)

    print(json.dumps({"ratios": res["ratios"], "agreement": res.get("agreement"),
                      "timeline_s": res["timeline_s"]}), flush=True)


# --------------------------------------------------------------------------- record (here)

LABELS = {"prefill_32x4096": "prefill 32×4096 in, 16 out (prompt tok/s)",
          "prefill_16x8192": "prefill 16×8192 in, 16 out (prompt tok/s)",
          "decode_b1_1024": "decode b=1, 1024 in, 256 out (decode tok/s)",
          "decode_b16_1024": "decode b=16, 1024 in, 256 out (decode tok/s)",
          "decode_b16_8192": "decode b=16, 8192 in, 256 out (decode tok/s)"}


def target_of(name: str) -> float:
    if name.startswith("prefill"):
        return TARGETS["prefill"]
    if name == "decode_b16_8192":
        return TARGETS["decode_b16_8192"]
    return TARGETS["floor"]


def markdown(res) -> str:
    e = res.get("engines", {})
    u, p, v = e.get("unpatched", {}), e.get("patched", {}), e.get("patched_fa3")
    prep = res["prepared"]
    lines = [f"GPU: {u.get('gpu', '?')} · vLLM {u.get('vllm', '?')} ({prep['wheel']}, trimmed) · torch "
             f"{u.get('torch', '?')} · transformers {u.get('transformers', '?')}",
             f"Patch: `{prep.get('patch_file', 'vllm/gemma4-fa4-attention-backend.patch')}` (sha256 "
             f"{prep['patch_sha256'][:16]}…), applied on the host by "
             f"`tools/apply.py --site-packages` (rc {res.get('apply', {}).get('rc')}, patched files as expected: "
             f"{res.get('apply', {}).get('patched_file_matches_expected')}"
             + ("; FALLBACK copy used" if res.get("apply", {}).get("fallback_used") else "") + ").",
             f"FA4: {'dropped from the bundle (vllm/vllm_flash_attn/cute*); ' if prep.get('fa4_cute_dropped') else ''}"
             f"FA4_AVAILABLE unpatched={u.get('fa4_available')}, patched={p.get('fa4_available')}.",
             "Model: Gemma-4-E4B-shaped text model (42 layers: 35 sliding head_dim 256 + 7 full head_dim 512), "
             "dummy weights, bf16, CUDA graphs + torch.compile, each tree in its own process (unpatched first), "
             f"best of {res['reps']}.", "",
             "## Attention backends (static_forward_context)", "",
             "| tree | backends (layers) | attention_config.backend |", "|---|---|---|"]
    trees = [("unpatched", u), ("patched", p)] + ([("patched, flash_attn_version=3", v)] if v else [])
    for label, x in trees:
        lines.append(f"| {label} | {', '.join(f'{k}: {n}' for k, n in (x.get('backends') or {}).items())} | "
                     f"{x.get('attention_config_backend')} |")
    lines += ["", "## Throughput", "",
              "| workload | unpatched | patched | patched/unpatched | target | met |"
              + (" patched with flash_attn_version=3 (FA3 256 + FA4 512) | its ratio |" if v else ""),
              "|---|---|---|---|---|---|" + ("---|---|" if v else "")]
    for name in WORKLOADS:
        a, b = u.get("workloads", {}).get(name), p.get("workloads", {}).get(name)
        if not (a and b):
            why = "skipped" if name in res.get("skipped_workloads", []) else "not measured"
            lines.append(f"| {LABELS[name]} | {why} | | | | |")
            continue
        key = "prompt_tok_s" if name.startswith("prefill") else "decode_tok_s"
        r = res["ratios"][name]
        t = target_of(name)
        # the targets are issue 4's for the default patch; another patch's ratios stand alone
        verdict = (f"≥ {t} | {'yes' if r >= t else 'NO'}" if prep.get("patch", PATCH_NAME) == PATCH_NAME
                   else "— | —")
        row = f"| {LABELS[name]} | {a[key]:,.1f} | {b[key]:,.1f} | {r:.3f} | {verdict} |"
        c = (v or {}).get("workloads", {}).get(name)
        if v:
            row += f" {c[key]:,.1f} | {c[key] / a[key]:.3f} |" if c else " not measured | |"
        lines.append(row)
    ar = res.get("agreement_realistic_weights")
    if ar and "tokens" in ar:
        lines += ["", "## Greedy agreement, patched vs unpatched (same weights, same 8 prompts of 64-1024 tokens, "
                  "32 greedy tokens each)", "",
                  f"Engines: {ar.get('mode')}; weights: {ar.get('how')}.", "",
                  f"- backends in these engines: {json.dumps(ar.get('backends'))}",
                  f"- identical sequences: {ar['identical_sequences']}/{ar['sequences']}; tokens equal position-wise: "
                  f"{ar['tokens_equal_position_wise']}/{ar['tokens']} ({ar['token_agreement']:.1%}); first "
                  f"divergence step per sequence: {ar['first_divergence_step']}",
                  f"- top-5 raw logits at every step whose context is identical in both: max |Δ| = "
                  f"{ar['max_abs_logit_diff']:.4g}; max |Δ| / max|logit| of the step = {ar['max_rel_logit_diff']:.4g}",
                  f"- unpatched top-1 − top-2 logit margin at the diverging steps: "
                  f"{[round(m, 4) for m in ar['unpatched_top1_top2_margin_at_divergence']]}"]
        if ar.get("comparisons"):
            lines += ["", "Controls: the same comparison between runs of one tree (same kernels) whose batch "
                      "composition differs give the noise floor a kernel change has to be judged against.", "",
                      "| comparison | identical sequences | tokens equal | max abs Δ logit | max Δ / max abs logit | "
                      "first divergence steps |", "|---|---|---|---|---|---|"]
            for name, c in ar["comparisons"].items():
                lines.append(f"| {name} | {c['identical_sequences']}/{c['sequences']} | {c['token_agreement']:.1%} | "
                             f"{c['max_abs_logit_diff']:.4g} | {c['max_rel_logit_diff']:.4g} | "
                             f"{c['first_divergence_step']} |")
    elif ar:
        lines += ["", f"## Greedy agreement on realistic-scale weights: not measured ({ar.get('error')})"]
    ag = res.get("agreement")
    if ag:
        vacuous = ag.get("all_logits_zero")
        lines += ["", "## Greedy agreement on the benchmark's dummy weights" + (" — VACUOUS" if vacuous else ""), "",
                  f"- identical sequences: {ag['identical_sequences']}/{ag['sequences']}; max |Δ logit| = "
                  f"{ag['max_abs_logit_diff']:.4g}"]
        if vacuous:
            lines += ["- every top-5 raw logit is exactly 0.0 in both trees and every greedy token is id 0: "
                      "load_format=\"dummy\" fills Gemma 4's persistent `layer_scalar` buffers with values in "
                      "±1e-3, so the residual stream vanishes over 42 layers. This says nothing about agreement; "
                      "the agreement engines (and tests/gpu) re-initialize the weights on a realistic scale."]
    for key in sorted({k for _, x in trees for k in x if k.startswith("profile_decode_")}):
        batch, context = ((1, 1024) if key == "profile_decode_b1" else
                          map(int, key.removeprefix("profile_decode_b").split("_")))
        for label, x in trees:
            prof = x.get(key)
            if prof:
                lines += ["", f"## Decode step profile, b={batch}, {context} in ({label}): {prof['total_us_per_step']} "
                          "µs of kernels per step", "", "| kernel | µs/step | launches/step |", "|---|---|---|"]
                lines += [f"| `{k['kernel'][:90]}` | {k['us']} | {k['launches']} |" for k in prof["top"][:10]]
    gt = res.get("gpu_test")
    if gt:
        lines += ["", f"## GPU tests: tools/regress.py --gpu (rc {gt.get('rc')})", ""]
        lines += [f"    {s}" for s in gt.get("summary", [gt.get("why", "")])]
    patch_opt = "" if prep.get("patch", PATCH_NAME) == PATCH_NAME else f" --patch {prep['patch']}"
    lines += ["", "## Commands", "", f"Here (CPU): `python3 bench/vllm_backends.py prepare .stage/vllm{patch_opt}` "
              "which ran (or, with `--reuse-bundle`, had run):", f"`python3 {prep['build_command']}`", "",
              "GPU host, one call per bundle part: `bash .stage/vllm/cN/install.sh stage /tmp/stage`; last call: "
              "`bash .stage/vllm/cN/install.sh install /tmp/stage /tmp/vllm-unpatched` then "
              f"`{res.get('run_command', 'python3 bench/vllm_backends.py run .stage/vllm ...')}`, which ran:"]
    lines += [f"- {k}: `{v}`" for k, v in res.get("commands", {}).items()]
    if res.get("agreement_run"):
        lines += [f"- agreement engines, a separate device session (same staging, then): "
                  f"`{res['agreement_run']['run_command']}`"]
    lines += [f"- host environment: `{' '.join(f'{k}={v}' for k, v in res['host_env'].items())}`"]
    return "\n".join(lines) + "\n"


def record(json_path: Path, agreement_json: Path | None = None, engine_dir: Path | None = None,
           notes: Path | None = None, variant_json: Path | None = None, gpu_test_log: Path | None = None,
           profile_dir: Path | None = None, name: str = "vllm_backends"):
    """bench/results/<name>.{json,md} (default vllm_backends) from the run's JSON; optionally with the agreement run's JSON
    (run --agreement-only), the dummy-weight agreement recomputed from the engine_*.json of the run, the
    engine_patched_fa3.json of `engine --label patched_fa3 --flash-attn-version 3` and the log of the GPU
    test module, each run on the same machine right after the run."""
    res = json.loads(json_path.read_text())
    site_u, site_p = "/tmp/vllm-unpatched/site-packages", "/tmp/vllm-patched/site-packages"
    if profile_dir:   # engine_{label}.json of `engine --profile-decode BxL` runs (a later session)
        for label in ("unpatched", "patched"):
            extra = json.loads((profile_dir / f"engine_{label}.json").read_text())
            for k, v in extra.items():
                if k.startswith("profile_decode_b") and k != "profile_decode_b1":
                    res["engines"][label][k] = v
        skips = " ".join(f"--skip {w}" for w in WORKLOADS)
        res["commands"]["profile_decode"] = (f"PYTHONPATH=<tree> python3 bench/vllm_backends.py engine --site <tree> "
                                             f"--label <label> --out $OUT {skips} --profile-decode 16x8192")
    if variant_json:
        v = json.loads(variant_json.read_text())
        res["engines"]["patched_fa3"] = {k: x for k, x in v.items() if k not in ("greedy", "backends_per_layer")}
        res["ratios_patched_fa3"] = ratios(res["engines"]["unpatched"], v)
        res["commands"]["engine_patched_fa3"] = (
            f"PYTHONPATH={tree_env(site_p)['PYTHONPATH']} python3 bench/vllm_backends.py engine --site {site_p} "
            "--label patched_fa3 --out $OUT --reps 2 --profile --flash-attn-version 3")
    if gpu_test_log:   # the table `tools/regress.py --gpu --upstream vllm --site-packages ...` printed
        lines = gpu_test_log.read_text().splitlines()
        res["gpu_test"] = {"rc": 0 if lines and not any("NOT OK" in ln for ln in lines) else 1,
                           "summary": [ln for ln in lines if ln.startswith(("upstream", "vllm", "-"))]}
        res["commands"]["gpu_test"] = (f"PYTHONPATH=/tmp/toolsite python3 tools/regress.py --gpu --upstream vllm "
                                       f"--site-packages {site_u} --env-python python3")
    if engine_dir:
        e = {k: json.loads((engine_dir / f"engine_{k}.json").read_text()) for k in ("unpatched", "patched")}
        res["agreement"] = agreement(e["unpatched"]["greedy"], e["patched"]["greedy"])
    if agreement_json:
        extra = json.loads(agreement_json.read_text())
        res["agreement_realistic_weights"] = extra["agreement_realistic_weights"]
        d = agreement_json.parent
        if (d / "agreement_unpatched.json").exists() and (d / "agreement_patched.json").exists():
            au, ap = (json.loads((d / f"agreement_{k}.json").read_text()) for k in ("unpatched", "patched"))
            res["agreement_realistic_weights"]["comparisons"] = agreement_comparisons(au, ap)
        res["agreement_tokens"] = extra.get("agreement_tokens")
        res["agreement_run"] = {"run_command": extra["run_command"], "commands": extra["commands"],
                                "apply": extra["apply"], "timeline_s": extra["timeline_s"],
                                "prepared_parts": extra["prepared"]["parts"]}
        for k, v in extra["commands"].items():
            res["commands"].setdefault(k, v)
    if notes:
        res["notes"] = notes.read_text()
    from results_record import write as write_record
    write_record(name, res, "# vLLM 0.20.2 Gemma 4 attention backends: unpatched vs "
                 f"`{res['prepared'].get('patch', PATCH_NAME)}`\n\n" + res.get("notes", "") + markdown(res))


def record_splits(json_path: Path, notes: Path | None = None):
    """bench/results/vllm_fa4_decode_splits.{json,md} from the JSON of `fa4-splits` (notes: the findings,
    written by a person, put first)."""
    res = json.loads(json_path.read_text())
    if notes:
        res["notes"] = notes.read_text()
    res["command"] = "PYTHONPATH=<vLLM 0.20.2 site-packages> python3 bench/vllm_backends.py fa4-splits --out $OUT/fa4_splits.json"
    rows = res["rows"]
    cases = []
    for r in rows:
        key = (r["kind"], r["batch"], r["context"])
        if key not in cases:
            cases.append(key)
    splits = sorted({r["num_splits"] for r in rows})
    lines = ["# FA4 decode attention alone: split-KV counts (vLLM 0.20.2's FA4, Gemma-4-E4B layer shapes)", "",
             res.get("notes", ""), f"GPU: {res['gpu']} · paged KV, block size {res['block_size']} · bf16 · 8 query heads, 2 KV heads · "
             "one query token per sequence (decode), called as vLLM's FlashAttention backend calls FA4 · "
             "CUDA-graph replay, median of 5 x 20 calls", "",
             "Microseconds per call (KV read rate in GB/s); num_splits 0 is FA4's own heuristic (what vLLM passes), "
             "its choice in brackets.", "",
             "| layer | batch | context | " + " | ".join(f"splits {n}" if n else "heuristic" for n in splits) + " |",
             "|---|---|---|" + "---|" * len(splits)]
    for kind, b, L in cases:
        cells = []
        for n in splits:
            r = next((x for x in rows if (x["kind"], x["batch"], x["context"], x["num_splits"]) == (kind, b, L, n)), None)
            if r is None or "us" not in r:
                cells.append(r.get("error", "-")[:40] if r else "-")
                continue
            pick = f" [{r['heuristic']['splits']}]" if r.get("heuristic") else ""
            cells.append(f"{r['us']} ({r['GB_per_s']:.0f}){pick}")
        lines.append(f"| {kind} | {b} | {L} | " + " | ".join(cells) + " |")
    lines += ["", f"Command (GPU host): `{res['command']}`", ""]
    from results_record import write as write_record
    write_record("vllm_fa4_decode_splits", res, "\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("stage", type=Path)
    p.add_argument("--max-part", default="60MB")
    p.add_argument("--patch", default=PATCH_NAME, help=f"the vLLM patch to measure (default {PATCH_NAME})")
    p.add_argument("--reuse-bundle", action="store_true",
                   help="keep the bundle parts an earlier prepare staged (they do not depend on the patch)")
    r = sub.add_parser("run")
    r.add_argument("stage", type=Path)
    r.add_argument("--site", type=Path, default=Path("/tmp/vllm-unpatched/site-packages"),
                   help="the installed unpatched bundle's site-packages")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")))
    r.add_argument("--reps", type=int, default=2)
    r.add_argument("--skip", action="append", default=[], choices=WORKLOADS)
    r.add_argument("--budget", type=float, default=560, help="seconds for the whole run")
    r.add_argument("--profile", action="store_true", help="profile one b=1 decode step per tree")
    r.add_argument("--agreement-only", action="store_true",
                   help="only the agreement check on realistic-scale weights (eager engines)")
    r.add_argument("--variant", action="store_true",
                   help="also measure the patched tree with --attention-config.flash_attn_version=3")
    e = sub.add_parser("engine")
    e.add_argument("--site", required=True)
    e.add_argument("--label", required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--reps", type=int, default=2)
    e.add_argument("--skip", action="append", default=[])
    e.add_argument("--profile", action="store_true")
    e.add_argument("--agreement-only", action="store_true")
    e.add_argument("--flash-attn-version", type=int, choices=(2, 3, 4))
    e.add_argument("--profile-decode", action="append", default=[], metavar="BxL",
                   help="also profile one decode step of B prompts of L tokens (e.g. 16x8192)")
    e.add_argument("--block-size", type=int, help="as vLLM's --block-size (default: vLLM's choice)")
    e.add_argument("--fa4-splits", metavar="log|N", help="record FA4's split-KV decisions (log), or force "
                   "num_splits=N for head_dim-512 decode calls (an experiment, not the patch)")
    q = sub.add_parser("probe")
    q.add_argument("--site", required=True)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--hide-fa4", action="store_true", help="as on a build without FA4")
    f = sub.add_parser("fa4-splits", help="FA4 decode attention alone at several num_splits (GPU)")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--block-size", type=int, default=64)
    d = sub.add_parser("drafter", help="GPU test helper: a Gemma 4 target with a speculative drafter")
    d.add_argument("--method", choices=sorted(DRAFTER_CONFIGS), required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--target-backend", help="the target's --attention-backend (default: vLLM's choice)")
    rs = sub.add_parser("record-splits", help="bench/results/vllm_fa4_decode_splits.{json,md} from fa4-splits' JSON")
    rs.add_argument("json", type=Path)
    rs.add_argument("--notes", type=Path, help="markdown written by a person: the findings, put first")
    c = sub.add_parser("record")
    c.add_argument("json", type=Path)
    c.add_argument("--agreement", type=Path, help="vllm_backends_agreement.json of a run --agreement-only")
    c.add_argument("--engine-dir", type=Path, help="folder with the run's engine_*.json")
    c.add_argument("--notes", type=Path, help="markdown written by a person: the findings, put first")
    c.add_argument("--variant", type=Path, help="engine_patched_fa3.json (engine --flash-attn-version 3)")
    c.add_argument("--gpu-test-log", type=Path, help="the table tools/regress.py --gpu --upstream vllm printed")
    c.add_argument("--profile-dir", type=Path, help="folder with engine_*.json of engine --profile-decode runs")
    c.add_argument("--name", default="vllm_backends", help="record name under bench/results/ (one per GPU "
                   "model: vllm_backends is the H100's, vllm_backends_h200 the H200's)")
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.stage, a.max_part, a.patch, a.reuse_bundle)
    elif a.cmd == "run":
        t = time.time()
        run(a.stage, a.site, a.out, a.reps, a.skip, a.budget, a.profile, a.agreement_only, a.variant)
    elif a.cmd == "engine" and a.agreement_only:
        engine_agreement(a.label, a.out)
    elif a.cmd == "engine":
        engine(a.site, a.label, a.out, a.reps, a.skip, a.profile, a.flash_attn_version,
               [tuple(map(int, x.split("x"))) for x in a.profile_decode], a.fa4_splits, a.block_size)
    elif a.cmd == "probe":
        probe(a.site, a.out, a.hide_fa4)
    elif a.cmd == "fa4-splits":
        fa4_decode_splits(a.out, a.block_size)
    elif a.cmd == "drafter":
        drafter_probe(a.out, a.method, a.target_backend)
    elif a.cmd == "record-splits":
        record_splits(a.json, a.notes)
    else:
        record(a.json, a.agreement, a.engine_dir, a.notes, a.variant, a.gpu_test_log, a.profile_dir, a.name)
