"""Gemma 4: one attention backend for every layer, FlashAttention with FA4
where FA4 serves head_dim 512 (patch gemma4-fa4-attention-backend).

Gemma-4-E4B has 42 attention layers: 35 sliding-window layers with
head_dim=256 and 7 full-attention layers with global_head_dim=512. Upstream
forces TRITON_ATTN on all 42 because FlashAttention without FA4 cannot serve
head_dim=512. With the patch, where FA4 serves 512 (compute capability 9.x with
the FA4 kernels installed), all 42 layers run FlashAttention with FA4; where it
does not, all 42 keep TRITON_ATTN. Backends are never mixed across layers:
FlashAttention and Triton lay out KV cache blocks differently, and layers of
the sliding-window and full-attention groups share KV cache tensors (a mixed
build was measured to corrupt outputs on an H100: bench/results/).

The layers are built with vLLM's real ``Attention`` layer, whose constructor asks
the real attention selector of the stand-in SM 9.0 CUDA platform; the model
configs are real config.json files read by vLLM's ``ModelConfig``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from vllm.config import AttentionConfig, DeviceConfig, ModelConfig, VllmConfig

E4B_CONFIGS = ["gemma4-e4b", "gemma4-e4b-text"]  # multimodal checkpoint, text-only
ALL_TRITON = {
    ("sliding_attention", 256, "TRITON_ATTN"): 35,
    ("full_attention", 512, "TRITON_ATTN"): 7,
}
ALL_FLASH = {
    ("sliding_attention", 256, "FLASH_ATTN"): 35,
    ("full_attention", 512, "FLASH_ATTN"): 7,
}


def make_vllm_config(
    model_dir: str, backend: str | None = None, flash_attn_version: int | None = None
) -> VllmConfig:
    return VllmConfig(
        model_config=ModelConfig(
            model=model_dir, skip_tokenizer_init=True, max_model_len=4096
        ),
        device_config=DeviceConfig(device="cuda"),
        attention_config=AttentionConfig(
            backend=backend, flash_attn_version=flash_attn_version
        ),
    )


def messages(records) -> str:
    return "\n".join(r.getMessage() for r in records)


def fa_versions(layers) -> Counter:
    """{(head_size, FlashAttention version): number of layers}"""
    return Counter(
        (attn.head_size, attn.impl.vllm_flash_attn_version) for _, attn in layers
    )


@pytest.mark.parametrize("model", E4B_CONFIGS)
def test_sm90_with_fa4_runs_fa4_on_every_layer(
    model, config_dir, attention_layers, census, fa4_kernels, vllm_log
):
    """Where FA4 serves head_dim 512 (SM 9.0 with the FA4 kernels installed),
    all 42 layers run FlashAttention, all with FA4 (not FA3 on the 256 layers
    next to FA4 on the 512 ones), and the log says so. A non-Gemma model built
    afterwards in the same process is unaffected."""
    vllm_config = make_vllm_config(config_dir(model))
    assert vllm_config.attention_config.backend.name == "FLASH_ATTN"
    assert vllm_config.attention_config.flash_attn_version == 4

    layers = attention_layers(vllm_config)
    assert census(layers) == ALL_FLASH
    assert fa_versions(layers) == {(256, 4): 35, (512, 4): 7}
    assert (
        "Using FLASH_ATTN (FA4) for all layers (35 sliding-window, "
        "7 full-attention): FA4 serves head_dim=512 here" in messages(vllm_log)
    )

    llama = make_vllm_config(config_dir("llama-tiny"))
    assert llama.attention_config.backend is None
    assert llama.attention_config.flash_attn_version is None
    llama_layers = attention_layers(llama)
    assert census(llama_layers) == {("full_attention", 64, "FLASH_ATTN"): 4}
    assert fa_versions(llama_layers) == {(64, 3): 4}


@pytest.mark.keeps_upstream
def test_sm90_without_fa4_keeps_triton_on_every_layer(
    config_dir, attention_layers, census
):
    """Without FA4, FlashAttention could serve only the 35 sliding-window
    layers; mixing it with Triton on the other 7 aliases KV cache blocks. All 42
    keep TRITON_ATTN, as upstream."""
    vllm_config = make_vllm_config(config_dir("gemma4-e4b"))

    assert vllm_config.attention_config.backend.name == "TRITON_ATTN"
    assert census(attention_layers(vllm_config)) == ALL_TRITON


def test_triton_is_kept_with_the_reason_in_the_log(
    config_dir, attention_layers, census, fa4_kernels, device_capability, vllm_log
):
    """Where FlashAttention cannot run head_dim 512 (SM 10.x, where vLLM falls
    back from FA4 to FA2 above head size 128, although FlashAttention claims
    head sizes up to 512 whenever FA4 is installed), every layer keeps
    TRITON_ATTN and the log says why."""
    device_capability(10, 0)
    vllm_config = make_vllm_config(config_dir("gemma4-e4b"))

    assert vllm_config.attention_config.backend.name == "TRITON_ATTN"
    assert census(attention_layers(vllm_config)) == ALL_TRITON
    assert (
        "Using TRITON_ATTN for all layers (35 sliding-window, 7 full-attention): "
        "FlashAttention serves head_dim=512 only with FA4 on compute capability "
        "9.x, and mixing backends across layers is not supported"
        in messages(vllm_log)
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
    assert census(attention_layers(triton)) == ALL_TRITON

    with pytest.raises(ValueError) as excinfo:
        make_vllm_config(config_dir("gemma4-e4b"), backend="FLASH_ATTN")
    error = str(excinfo.value)
    assert "FLASH_ATTN cannot serve head_size=512" in error
    assert "FA4 on compute capability 9.x" in error

    request.getfixturevalue("fa4_kernels")
    flash = make_vllm_config(config_dir("gemma4-e4b"), backend="FLASH_ATTN")
    assert census(attention_layers(flash)) == ALL_FLASH


def test_explicit_flash_attn_version_is_kept(
    config_dir, attention_layers, census, fa4_kernels
):
    """A user who asks for FlashAttention version 3 gets FlashAttention on
    every layer with FA3 where it serves (head_dim 256) and FA4 where only FA4
    does (512): one backend, one KV cache layout, the user's version. Version 2
    cannot serve 512, so every layer keeps TRITON_ATTN."""
    fa3 = make_vllm_config(config_dir("gemma4-e4b"), flash_attn_version=3)
    assert fa3.attention_config.flash_attn_version == 3
    layers = attention_layers(fa3)
    assert census(layers) == ALL_FLASH
    assert fa_versions(layers) == {(256, 3): 35, (512, 4): 7}

    fa2 = make_vllm_config(config_dir("gemma4-e4b"), flash_attn_version=2)
    assert fa2.attention_config.backend.name == "TRITON_ATTN"
    assert census(attention_layers(fa2)) == ALL_TRITON


def test_bidirectional_vision_checkpoint_keeps_triton_and_says_why(
    config_dir, attention_layers, census, fa4_kernels, vllm_log
):
    """A checkpoint with text_config.use_bidirectional_attention="vision" needs
    multimodal-prefix attention in every layer, which FlashAttention does not
    support in this release: even with FA4 every layer keeps TRITON_ATTN, and
    the log says why."""
    vllm_config = make_vllm_config(config_dir("gemma4-e4b-bidirectional-vision"))

    assert vllm_config.model_config.is_mm_prefix_lm
    assert vllm_config.attention_config.backend.name == "TRITON_ATTN"
    assert census(attention_layers(vllm_config)) == ALL_TRITON
    assert (
        "Using TRITON_ATTN for all layers (35 sliding-window, 7 full-attention): "
        "FlashAttention does not support multimodal prefix attention"
        in messages(vllm_log)
    )
