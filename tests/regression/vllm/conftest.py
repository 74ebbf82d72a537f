"""Run vLLM's own Python code from a source tree on a CPU-only machine.

Two things happen here, before any test module imports vLLM:

1. The tree check: $SERIES_UPSTREAM_TREE names the vLLM tree under test, and
   the imported ``vllm`` package must come from it (never from a copy in
   site-packages).
2. The stand-ins, and only these:
   - empty modules for vLLM's COMPILED extensions that the Python code imports
     at module level (``vllm._C``, ``vllm._C_stable_libtorch``, ``vllm._moe_C``,
     ``vllm.vllm_flash_attn._vllm_fa2_C``, ``vllm.vllm_flash_attn._vllm_fa3_C``),
     plus the four capability-query ops of ``_C`` that vLLM calls while it
     imports (``cutlass_*_supported``: they answer from the compute capability,
     as the CUDA code in csrc/ does);
   - the device query: a CUDA platform whose device reports compute
     capability 9.0 (H100), 80 GiB, and no pinned-memory allocator (there is no
     CUDA driver here).
   The code under test (configs, the attention selector, the backends'
   capability checks, the spec-decode proposers) is the tree's own.

FA4 (``vllm/vllm_flash_attn/cute``) is a kernel package built into vLLM's wheel,
not part of the source tree, so FlashAttention here reports FA4 as unavailable
unless a test asks for the ``fa4_kernels`` fixture.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import types

import pytest

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)

COMPILED_EXTENSIONS = (
    "vllm._C",
    "vllm._C_stable_libtorch",
    "vllm._moe_C",
    "vllm.vllm_flash_attn._vllm_fa2_C",
    "vllm.vllm_flash_attn._vllm_fa3_C",
)

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def _check_upstream_tree() -> pathlib.Path:
    tree = os.environ.get("SERIES_UPSTREAM_TREE")
    if not tree:
        raise pytest.UsageError(
            "SERIES_UPSTREAM_TREE must name the vLLM tree under test "
            "(and PYTHONPATH must start with it)"
        )
    tree_path = pathlib.Path(tree).resolve()
    import vllm

    origin = pathlib.Path(vllm.__file__).resolve()
    if tree_path / "vllm" not in origin.parents:
        raise pytest.UsageError(
            f"imported vllm from {origin}, not from SERIES_UPSTREAM_TREE="
            f"{tree_path}; put the tree first on PYTHONPATH"
        )
    return tree_path


def _install_compiled_extension_standins() -> None:
    import torch

    for name in COMPILED_EXTENSIONS:
        sys.modules.setdefault(name, types.ModuleType(name))

    # Capability queries registered by vllm._C; vLLM calls them at import time
    # (e.g. w8a8_utils.CUTLASS_FP8_SUPPORTED). Same answers as csrc/ for a
    # CUDA >= 12.8 build.
    global _C_LIBRARY
    _C_LIBRARY = torch.library.Library("_C", "FRAGMENT")
    for op, supported in {
        "cutlass_scaled_mm_supports_fp8": lambda cap: cap >= 89,
        "cutlass_scaled_mm_supports_block_fp8": lambda cap: cap >= 90,
        "cutlass_group_gemm_supported": lambda cap: cap >= 90,
        "cutlass_scaled_mm_supports_fp4": lambda cap: 100 <= cap < 130,
    }.items():
        _C_LIBRARY.define(f"{op}(int cuda_device_capability) -> bool")
        _C_LIBRARY.impl(op, supported, "CompositeExplicitAutograd")


def _install_cuda_device_standin() -> None:
    import vllm.platforms
    from vllm.platforms.cuda import NonNvmlCudaPlatform
    from vllm.platforms.interface import DeviceCapability

    assert vllm.platforms._current_platform is None, (
        "vLLM resolved its platform before the stand-in was installed"
    )

    class StandInCudaPlatform(NonNvmlCudaPlatform):
        """A CUDA platform whose device answers like an H100 (SM 9.0)."""

        capability = DeviceCapability(9, 0)

        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
            return cls.capability

        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return "NVIDIA H100 80GB HBM3 (stand-in)"

        @classmethod
        def get_device_total_memory(cls, device_id: int = 0) -> int:
            return 80 << 30

        @classmethod
        def is_pin_memory_available(cls) -> bool:
            return False

    vllm.platforms._current_platform = StandInCudaPlatform()


UPSTREAM_TREE = _check_upstream_tree()
_install_compiled_extension_standins()
_install_cuda_device_standin()


@pytest.fixture(autouse=True)
def _fresh_attention_selector():
    """The selector caches its answer per (backend, layer config)."""
    from vllm.v1.attention.selector import _cached_get_attn_backend

    _cached_get_attn_backend.cache_clear()
    yield
    _cached_get_attn_backend.cache_clear()


@pytest.fixture
def device_capability(monkeypatch):
    """Make the stand-in device report another compute capability."""
    from vllm.platforms import current_platform
    from vllm.platforms.interface import DeviceCapability

    def set_capability(major: int, minor: int = 0) -> None:
        monkeypatch.setattr(
            type(current_platform), "capability", DeviceCapability(major, minor)
        )

    return set_capability


@pytest.fixture
def fa4_kernels(monkeypatch):
    """Behave as a wheel that ships FA4 (vllm/vllm_flash_attn/cute)."""
    from vllm.vllm_flash_attn import flash_attn_interface

    monkeypatch.setattr(flash_attn_interface, "FA4_AVAILABLE", True)
    monkeypatch.setattr(flash_attn_interface, "FA4_UNAVAILABLE_REASON", None)


@pytest.fixture
def vllm_log():
    """Records of vLLM's loggers (they do not propagate to the root logger)."""
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect(level=logging.DEBUG)
    logger = logging.getLogger("vllm")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def config_dir():
    """Path of a fixture model directory (a config.json, no weights)."""
    return lambda name: str(CONFIGS / name)


@pytest.fixture
def attention_layers():
    """Build one real vLLM ``Attention`` layer per decoder layer of a model.

    ``Attention.__init__`` asks the attention selector for its backend under
    the given VllmConfig, exactly as the model's layers do when the model is
    built. Head sizes and sliding windows follow the model's config the way
    Gemma4DecoderLayer assigns them: full_attention layers use
    global_head_dim when the config has one; other models' layers are plain
    full-attention decoder layers.

    Returns a list of (layer_type, Attention).
    """
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.attention import Attention
    from vllm.utils.torch_utils import set_default_torch_dtype

    def build(vllm_config, text_config=None, prefix="model"):
        text = text_config or vllm_config.model_config.hf_text_config
        layer_types = getattr(text, "layer_types", None) or (
            ["full_attention"] * text.num_hidden_layers
        )
        layers = []
        with (
            set_current_vllm_config(vllm_config),
            set_default_torch_dtype(vllm_config.model_config.dtype),
        ):
            for i, layer_type in enumerate(layer_types):
                full = layer_type == "full_attention"
                head_size = getattr(text, "head_dim", None) or (
                    text.hidden_size // text.num_attention_heads
                )
                if full and getattr(text, "global_head_dim", None):
                    head_size = text.global_head_dim
                sliding_window = getattr(text, "sliding_window", None)
                layers.append(
                    (
                        layer_type,
                        Attention(
                            text.num_attention_heads,
                            head_size,
                            head_size**-0.5,
                            num_kv_heads=text.num_key_value_heads,
                            cache_config=vllm_config.cache_config,
                            per_layer_sliding_window=None if full else sliding_window,
                            prefix=f"{prefix}.layers.{i}.self_attn.attn",
                        ),
                    )
                )
        return layers

    return build


def census(layers) -> dict:
    """{(layer_type, head_size, backend name): number of layers}"""
    from collections import Counter

    return dict(
        Counter(
            (layer_type, attn.head_size, attn.attn_backend.get_name())
            for layer_type, attn in layers
        )
    )


@pytest.fixture(name="census")
def census_fixture():
    return census
