"""The vLLM trees a GPU test runs on, and the engines it starts in them.

tools/regress.py --gpu --site-packages DIR runs each GPU test module twice: on DIR (the unpatched
vLLM 0.20.2 wheel, compiled kernels included) and on a copy of it patched through the test's patch.
It names the side under test in $SERIES_UPSTREAM_TREE and the unpatched one in
$SERIES_UNPATCHED_TREE.  Every engine runs in its own process with that site-packages first on
PYTHONPATH (`bench/vllm_backends.py`, the same engine code the benchmark uses).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("vllm_backends", ROOT / "bench" / "vllm_backends.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
TREE = os.environ.get("SERIES_UPSTREAM_TREE")
UNPATCHED = os.environ.get("SERIES_UNPATCHED_TREE")
SCRATCH = Path(os.environ.get("SERIES_RUN_SCRATCH") or "/tmp/gemma4-gpu-tests")
N_SLIDING, N_FULL = 35, 7
RUN_THEM = ("run them with: tools/regress.py --gpu --upstream vllm --site-packages <the vLLM 0.20.2 wheel's "
            "site-packages> --env-python python3 (README, 'GPU tests')")


def skip_reason() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no CUDA device (nvidia-smi not found)"
    try:
        import torch  # noqa: PLC0415  (guarded: CPU machines may have no torch)
    except ImportError as e:
        return f"torch is not importable: {e}"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not TREE or not (Path(TREE) / "vllm" / "__init__.py").is_file():
        return "no installed vLLM tree under test ($SERIES_UPSTREAM_TREE/vllm): " + RUN_THEM
    return None


def run_bench(site: str, args: list[str], out: Path, timeout: int = 400) -> dict:
    """`bench/vllm_backends.py ARGS` in its own process on one site-packages; the JSON it wrote to out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "vllm_backends.py"), *args],
                       env=bench.tree_env(site), cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0 and out.exists(), \
        f"{site}: {args[0]} failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}"
    res = json.loads(out.read_text())
    assert str(Path(res["vllm_file"]).resolve()).startswith(str(Path(site).resolve())), res["vllm_file"]
    return res


def once(site: str, role: str, args: list[str], timeout: int = 400) -> dict:
    """run_bench, but at most once per site and role in one regress invocation: the unpatched
    reference engine runs in the unpatched side's pass and is reused by the patched side's."""
    key = hashlib.sha256(f"{Path(site).resolve()}|{role}|{args}".encode()).hexdigest()[:16]
    out = SCRATCH / f"{role}-{key}.json"
    if out.exists():
        return json.loads(out.read_text())
    return run_bench(site, [*args, "--out", str(out)], out, timeout)
