"""pytest setup shared by the SGLang regression tests.

Run (see tests/regression/pytest.ini and CONVENTIONS.md):

    SERIES_UPSTREAM_TREE=<tree> PYTHONPATH=<tree>/python <venv>/bin/python -m pytest \
        -c tests/regression/pytest.ini tests/regression/sglang/test_x.py

What this file does, before any test module imports SGLang:

(a) It checks that ``sglang`` is imported from ``$SERIES_UPSTREAM_TREE/python`` (the
    materialized upstream tree with the series applied), never from a site-packages
    copy, and stops the run otherwise.

(b) Stand-ins. At SGLang 0.5.12.post1 every import these tests need
    (``sglang.srt.server_args``, ``sglang.srt.configs.model_config``,
    ``sglang.srt.models.gemma4_*``) works on a CPU-only machine WITHOUT the compiled
    packages (``sgl_kernel``/``sglang-kernel``, ``flashinfer``, ``deep_gemm``), because
    SGLang only imports them behind its own ``is_cuda()`` checks. So no module is stood
    in, and no device is faked: a stand-in CUDA device would make those guarded imports
    run and drag the compiled packages in. Instead, on a machine without a CUDA device
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
_expected_pkg = (Path(_tree) / "python" / "sglang").resolve()
if not (_expected_pkg / "__init__.py").is_file():
    pytest.exit(
        f"{_TREE_ENV}={_tree} does not hold python/sglang/__init__.py (git layout).",
        returncode=4,
    )

if not REAL_CUDA:
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


def pytest_report_header(config):
    return [
        f"sglang under test: {_imported_pkg}",
        f"torch {torch.__version__}; CUDA device: {REAL_CUDA}; "
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
