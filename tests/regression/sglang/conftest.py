"""pytest setup shared by the SGLang regression tests.

Run (see tests/regression/pytest.ini and CONVENTIONS.md):

    SERIES_UPSTREAM_TREE=<tree> PYTHONPATH=<tree>/python <venv>/bin/python -m pytest \
        -c tests/regression/pytest.ini tests/regression/sglang/test_x.py

What this file does, before any test module imports SGLang:

(a) It checks that ``sglang`` is imported from ``$SERIES_UPSTREAM_TREE/python`` (the
    materialized upstream tree with the series applied), or from ``$SERIES_UPSTREAM_TREE``
    itself when that is the installed site-packages under test (tools/regress.py
    --site-packages, on a GPU host), never from another copy, and stops the run otherwise.

(b) Stand-ins. At SGLang 0.5.12.post1 every import these tests need
    (``sglang.srt.server_args``, ``sglang.srt.configs.model_config``,
    ``sglang.srt.models.gemma4_*``) works on a CPU-only machine WITHOUT the compiled
    packages (``sgl_kernel``/``sglang-kernel``, ``flashinfer``, ``deep_gemm``), because
    SGLang only imports them behind its own ``is_cuda()`` checks. So no module is stood
    in, and no device is faked: a stand-in CUDA device would make those guarded imports
    run and drag the compiled packages in. Instead, on a machine without a CUDA device
    (or without SGLang's compiled kernel package: a GPU host that only has torch and Triton)
    the suite selects SGLang's own CPU engine (``SGLANG_USE_CPU_ENGINE=1``, the upstream
    switch for running SGLang on a CPU), so that model layers are built with their
    CPU/native code paths (e.g. ``RotaryEmbedding`` would otherwise import
    ``vllm._custom_ops``). Tests that resolve a GPU serving configuration pass
    ``device="cuda"`` to ``ServerArgs`` explicitly, as ``--device cuda`` would.

Also provided:
- ``REAL_CUDA``: whether this machine has a CUDA device (checked before anything else).
- tests marked ``@pytest.mark.gpu`` are skipped, with a visible reason, without one.
- ``sglang_cpu_dist``: a session fixture that initialises SGLang's distributed state
  for a single CPU process (gloo, world size 1, TP=1), idempotently, for tests that
  construct real SGLang layers or models.
"""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

REAL_CUDA = bool(torch.cuda.is_available())

_TREE_ENV = "SERIES_UPSTREAM_TREE"
_tree = os.environ.get(_TREE_ENV)
if not _tree:
    pytest.exit(
        f"{_TREE_ENV} is not set: point it at the materialized SGLang tree (git layout, "
        "python/sglang/...) and put <tree>/python on PYTHONPATH.",
        returncode=4,
    )
# A materialized tree (git layout: python/sglang) or, on a GPU host, an installed site-packages
# directory (tools/regress.py --site-packages: sglang/ at its top).
_expected_pkg = next(
    (
        (Path(_tree) / sub / "sglang").resolve()
        for sub in ("python", ".")
        if (Path(_tree) / sub / "sglang" / "__init__.py").is_file()
    ),
    None,
)
if _expected_pkg is None:
    pytest.exit(
        f"{_TREE_ENV}={_tree} holds neither python/sglang/__init__.py (git layout) nor "
        "sglang/__init__.py (site-packages).",
        returncode=4,
    )


def _has_sglang_kernels() -> bool:
    import importlib.util

    return importlib.util.find_spec("sgl_kernel") is not None


# Without a CUDA device, or on a GPU host without SGLang's compiled kernel package (the routing
# kernel under test is Triton and needs none), import SGLang with its CPU code paths: with them
# the CUDA-only imports behind is_cuda() are not made. The GPU tests still run on CUDA tensors.
SGLANG_KERNELS = REAL_CUDA and _has_sglang_kernels()
if not SGLANG_KERNELS:
    # Must be set before SGLang is imported: many modules read it at import time.
    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"

import sglang  # noqa: E402

_imported_pkg = Path(sglang.__file__).resolve().parent
if _imported_pkg != _expected_pkg:
    pytest.exit(
        f"sglang was imported from {_imported_pkg}, not from {_expected_pkg} "
        f"(${_TREE_ENV}/python). Put <tree>/python first on PYTHONPATH; never test a "
        "site-packages copy.",
        returncode=4,
    )

if REAL_CUDA and not SGLANG_KERNELS:
    # GPU host without SGLang's compiled kernels: SGLang picks its imports by the lru-cached
    # is_cuda() (torch.cuda.is_available() and torch.version.cuda), which SGLANG_USE_CPU_ENGINE
    # does not change. Answer it once with torch.version.cuda hidden, so SGLang's modules take
    # their CPU imports; torch itself, and the tensors and Triton kernels of the tests, stay on CUDA.
    from sglang.srt.utils import common as _sgl_common

    _cuda_version = torch.version.cuda
    torch.version.cuda = None
    try:
        _sgl_common.is_cuda.cache_clear()
        _sgl_common.is_cuda()
    finally:
        torch.version.cuda = _cuda_version


def pytest_report_header(config):
    return [
        f"sglang under test: {_imported_pkg}",
        f"torch {torch.__version__}; CUDA device: {REAL_CUDA}; sgl_kernel: {SGLANG_KERNELS}; "
        f"SGLANG_USE_CPU_ENGINE={os.environ.get('SGLANG_USE_CPU_ENGINE', '0')}",
    ]


def pytest_collection_modifyitems(config, items):
    if REAL_CUDA:
        return
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sglang_cpu_dist():
    """SGLang's process groups for one CPU process: gloo, world size 1, TP/PP/EP 1."""
    from sglang.srt.distributed import parallel_state as ps

    ps.init_distributed_environment(
        world_size=1,
        rank=0,
        local_rank=0,
        distributed_init_method=f"tcp://127.0.0.1:{_free_port()}",
        backend="gloo",
    )
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=1, backend="gloo")
    yield ps
