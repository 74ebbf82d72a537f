"""Gemma 4: each attention layer selects its own backend (patch
gemma4-per-layer-attention-backend).

Gemma-4-E4B has 42 attention layers: 35 sliding-window layers with
head_dim=256 and 7 full-attention layers with global_head_dim=512. Upstream
forced TRITON_ATTN on all 42 because FlashAttention (without FA4) cannot serve
head_dim=512. With the patch the attention selector picks per layer:
FlashAttention for the sliding-window layers, and for the full-attention layers
FlashAttention where FA4 serves head_dim=512 (compute capability 9.x), else a
compatible fallback (TRITON_ATTN).

The layers are built with vLLM's real ``Attention`` layer, whose constructor asks
the real attention selector of the stand-in SM 9.0 CUDA platform; the model
configs are real config.json files read by vLLM's ``ModelConfig``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from vllm.config import AttentionConfig, DeviceConfig, ModelConfig, VllmConfig

E4B_CONFIGS = ["gemma4-e4b", "gemma4-e4b-text"]  # multimodal checkpoint, text-only


def make_vllm_config(model_dir: str, backend: str | None = None) -> VllmConfig:
    return VllmConfig(
        model_config=ModelConfig(
            model=model_dir, skip_tokenizer_init=True, max_model_len=4096
        ),
        device_config=DeviceConfig(device="cuda"),
        attention_config=AttentionConfig(backend=backend),
    )


def messages(records) -> str:
    return "\n".join(r.getMessage() for r in records)


@pytest.mark.parametrize("model", E4B_CONFIGS)
def test_sm90_sliding_layers_use_flash_attention_full_layers_fall_back(
    model, config_dir, attention_layers, census, vllm_log
):
    """On SM 9.0 without FA4, no backend is forced: the 35 sliding-window
    layers (head_dim 256) run FlashAttention (FA3) and the 7 full-attention
    layers (head_dim 512) a backend that supports 512 (TRITON_ATTN). The split
    is logged. A non-Gemma model built afterwards in the same process is
    unaffected: FlashAttention for every layer, no backend forced."""
    vllm_config = make_vllm_config(config_dir(model))
    assert vllm_config.attention_config.backend is None

    layers = attention_layers(vllm_config)
    assert census(layers) == {
        ("sliding_attention", 256, "FLASH_ATTN"): 35,
        ("full_attention", 512, "TRITON_ATTN"): 7,
    }
    assert {
        attn.impl.vllm_flash_attn_version
        for _, attn in layers
        if attn.attn_backend.get_name() == "FLASH_ATTN"
    } == {3}
    log = messages(vllm_log)
    assert (
        "35 sliding-window layers can use FlashAttention; "
        "7 full-attention layers will fall back to a compatible backend" in log
    )

    llama = make_vllm_config(config_dir("llama-tiny"))
    assert llama.attention_config.backend is None
    assert census(attention_layers(llama)) == {("full_attention", 64, "FLASH_ATTN"): 4}


def test_sm90_with_fa4_serves_every_layer_with_flash_attention(
    config_dir, attention_layers, census, fa4_kernels, vllm_log
):
    """Where FA4 serves head_dim 512 (SM 9.0 with the FA4 kernels installed),
    all 42 layers select FlashAttention: FA3 for head_dim 256, FA4 for 512."""
    vllm_config = make_vllm_config(config_dir("gemma4-e4b"))
    assert vllm_config.attention_config.backend is None

    layers = attention_layers(vllm_config)
    assert census(layers) == {
        ("sliding_attention", 256, "FLASH_ATTN"): 35,
        ("full_attention", 512, "FLASH_ATTN"): 7,
    }
    versions = Counter(
        (attn.head_size, attn.impl.vllm_flash_attn_version) for _, attn in layers
    )
    assert versions == {(256, 3): 35, (512, 4): 7}
    assert "7 full-attention layers will use FlashAttention (FA4)" in messages(vllm_log)


def test_sm100_with_fa4_keeps_triton_for_all_layers_and_says_why(
    config_dir, attention_layers, census, fa4_kernels, device_capability, vllm_log
):
    """FA4 is installed but cannot run head_dim 512 on SM 10.x (vLLM falls
    back to FA2 there), while FlashAttention still claims head sizes up to 512:
    per-layer selection would hand the full-attention layers to a kernel that
    fails. So every layer keeps TRITON_ATTN (upstream's choice), and the log
    says why."""
    device_capability(10, 0)
    vllm_config = make_vllm_config(config_dir("gemma4-e4b"))

    assert vllm_config.attention_config.backend is not None
    assert vllm_config.attention_config.backend.name == "TRITON_ATTN"
    assert census(attention_layers(vllm_config)) == {
        ("sliding_attention", 256, "TRITON_ATTN"): 35,
        ("full_attention", 512, "TRITON_ATTN"): 7,
    }
    assert (
        "Forcing TRITON_ATTN backend for all layers: FlashAttention serves "
        "head_dim=512 only with FA4 on compute capability 9.x" in messages(vllm_log)
    )


def test_explicit_backend_wins_and_one_that_cannot_serve_512_fails_early(
    config_dir, attention_layers, census, request
):
    """An explicit attention backend applies to every layer: TRITON_ATTN is
    honoured as chosen. FLASH_ATTN without FA4 cannot serve head_dim 512, so
    building the config fails with a clear error, not later in the model's
    full-attention layers. With FA4 on SM 9.0, an explicit FLASH_ATTN serves
    all layers."""
    triton = make_vllm_config(config_dir("gemma4-e4b"), backend="TRITON_ATTN")
    assert triton.attention_config.backend.name == "TRITON_ATTN"
    assert census(attention_layers(triton)) == {
        ("sliding_attention", 256, "TRITON_ATTN"): 35,
        ("full_attention", 512, "TRITON_ATTN"): 7,
    }

    with pytest.raises(ValueError) as excinfo:
        make_vllm_config(config_dir("gemma4-e4b"), backend="FLASH_ATTN")
    error = str(excinfo.value)
    assert "FLASH_ATTN cannot serve head_size=512" in error
    assert "FA4 on compute capability 9.x" in error

    request.getfixturevalue("fa4_kernels")
    flash = make_vllm_config(config_dir("gemma4-e4b"), backend="FLASH_ATTN")
    assert census(attention_layers(flash)) == {
        ("sliding_attention", 256, "FLASH_ATTN"): 35,
        ("full_attention", 512, "FLASH_ATTN"): 7,
    }


def test_bidirectional_vision_checkpoint_keeps_triton_and_says_why(
    config_dir, attention_layers, census, vllm_log
):
    """A checkpoint with text_config.use_bidirectional_attention="vision" needs
    multimodal-prefix attention in every layer, which FlashAttention does not
    support in this release: per-layer selection would pick TRITON_ATTN for
    every layer anyway, so TRITON_ATTN stays the backend for all layers, and
    the log says why (instead of promising FlashAttention)."""
    vllm_config = make_vllm_config(config_dir("gemma4-e4b-bidirectional-vision"))

    assert vllm_config.model_config.is_mm_prefix_lm
    assert vllm_config.attention_config.backend.name == "TRITON_ATTN"
    assert census(attention_layers(vllm_config)) == {
        ("sliding_attention", 256, "TRITON_ATTN"): 35,
        ("full_attention", 512, "TRITON_ATTN"): 7,
    }
    assert (
        "Forcing TRITON_ATTN backend for all layers: FlashAttention does not "
        "support multimodal prefix attention" in messages(vllm_log)
    )
