"""Gemma 4 + DFlash: the draft model selects its own non-causal attention
backend (patch gemma4-dflash-draft-attention-backend).

Upstream the spec-decode draft config was the target's config: a DFlash drafter
inherited the target's attention backend (TRITON_ATTN, forced for Gemma 4), and
every layer, the target's included, was selected for non-causal attention.
Building the drafter then failed with "Selected backend TRITON_ATTN is not
valid for this configuration. Reason: ['non-causal attention not supported']".

With the patch the choice is method-aware: a DFlash drafter (own KV cache,
non-causal attention) does not inherit the target's backend and selects one
that supports non-causal attention; drafters that run the target's kind of
attention (MTP) keep inheriting it; ``speculative_config.attention_backend``
wins over both. The target's own layers stay causal.

Real code paths: VllmConfig/SpeculativeConfig from config.json files, the real
DFlashProposer/EagleProposer constructors (device=cpu, which they accept) and
their ``_create_draft_vllm_config()``, and vLLM's ``Attention`` layers built
under the resulting config with the real attention selector (stand-in SM 9.0).
vLLM 0.20.2 has no Gemma 4 MTP drafter (gemma4_mtp comes with 0.21), so the
MTP case uses a GLM-4-MoE target with its MTP layer.
"""

from __future__ import annotations

import pytest
import torch

from vllm.config import (
    AttentionConfig,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    SpeculativeConfig,
    VllmConfig,
)

NUM_DRAFT_LAYERS = 5  # configs/gemma4-e4b-dflash: 5 layers, head_dim 128


def speculative_vllm_config(
    target_dir: str,
    backend: str | None = None,
    **speculative: object,
) -> VllmConfig:
    target = ModelConfig(model=target_dir, skip_tokenizer_init=True, max_model_len=4096)
    return VllmConfig(
        model_config=target,
        speculative_config=SpeculativeConfig(
            target_model_config=target,
            target_parallel_config=ParallelConfig(),
            **speculative,
        ),
        device_config=DeviceConfig(device="cuda"),
        attention_config=AttentionConfig(backend=backend),
    )


def dflash_draft_config(config_dir, backend=None, **speculative) -> VllmConfig:
    """The draft VllmConfig that DFlashProposer builds its drafter with."""
    from vllm.v1.spec_decode.dflash import DFlashProposer

    vllm_config = speculative_vllm_config(
        config_dir("gemma4-e4b"),
        backend=backend,
        method="dflash",
        model=config_dir("gemma4-e4b-dflash"),
        num_speculative_tokens=15,
        **speculative,
    )
    proposer = DFlashProposer(vllm_config=vllm_config, device=torch.device("cpu"))
    return proposer._create_draft_vllm_config()


def draft_layers(attention_layers, draft_config: VllmConfig):
    draft_text = draft_config.speculative_config.draft_model_config.hf_text_config
    return attention_layers(draft_config, text_config=draft_text, prefix="draft_model")


@pytest.mark.parametrize("target_backend", [None, "TRITON_ATTN"])
def test_dflash_drafter_for_gemma4_selects_a_non_causal_backend(
    target_backend, config_dir, attention_layers, census
):
    """The DFlash drafter of a Gemma 4 target builds: whether the target's
    TRITON_ATTN (which has no non-causal support) is forced for Gemma 4 or
    chosen by the user, the drafter selects its own backend with
    non-causal support (FlashAttention on SM 9.0) instead of failing with
    "non-causal attention not supported"."""
    draft_config = dflash_draft_config(config_dir, backend=target_backend)

    layers = draft_layers(attention_layers, draft_config)
    assert census(layers) == {("full_attention", 128, "FLASH_ATTN"): NUM_DRAFT_LAYERS}
    assert all(attn.attn_backend.supports_non_causal() for _, attn in layers)
    assert draft_config.attention_config.backend is None  # the drafter's own choice
    assert draft_config.attention_config.use_non_causal is True


def test_gemma4_target_layers_stay_causal_with_a_dflash_drafter(
    config_dir, attention_layers, census
):
    """Speculative decoding with DFlash does not change how the target's
    layers select: they are causal, so all 42 keep the target's TRITON_ATTN
    (Gemma 4 without FA4) instead of failing validation as non-causal layers."""
    vllm_config = speculative_vllm_config(
        config_dir("gemma4-e4b"),
        method="dflash",
        model=config_dir("gemma4-e4b-dflash"),
        num_speculative_tokens=15,
    )

    assert census(attention_layers(vllm_config)) == {
        ("sliding_attention", 256, "TRITON_ATTN"): 35,
        ("full_attention", 512, "TRITON_ATTN"): 7,
    }
    assert vllm_config.attention_config.use_non_causal is False


def test_explicit_speculative_attention_backend_wins(
    config_dir, attention_layers, census
):
    """``speculative_config.attention_backend`` sets the draft model's backend:
    for a DFlash drafter (FLEX_ATTENTION, non-causal capable) and for an MTP
    drafter (FLASH_ATTN while the target uses TRITON_ATTN). Without it, the
    MTP drafter keeps the target's backend, as before; "auto" means select."""
    draft_config = dflash_draft_config(config_dir, attention_backend="FLEX_ATTENTION")
    assert draft_config.attention_config.backend.name == "FLEX_ATTENTION"
    assert census(draft_layers(attention_layers, draft_config)) == {
        ("full_attention", 128, "FLEX_ATTENTION"): NUM_DRAFT_LAYERS
    }

    from vllm.v1.spec_decode.eagle import EagleProposer

    def mtp_draft_backend(**speculative):
        vllm_config = speculative_vllm_config(
            config_dir("glm4-moe-mtp-tiny"),
            backend="TRITON_ATTN",
            method="mtp",
            num_speculative_tokens=1,
            **speculative,
        )
        proposer = EagleProposer(vllm_config=vllm_config, device=torch.device("cpu"))
        return proposer._create_draft_vllm_config().attention_config.backend

    assert mtp_draft_backend().name == "TRITON_ATTN"
    assert mtp_draft_backend(attention_backend="FLASH_ATTN").name == "FLASH_ATTN"
    assert mtp_draft_backend(attention_backend="auto").name == "TRITON_ATTN"
