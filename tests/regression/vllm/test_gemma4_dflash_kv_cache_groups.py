"""Gemma 4 + DFlash: the drafter's layers share one KV cache group (patch
gemma4-dflash-kv-cache-group).

The draft layers of a speculative drafter run with one attention metadata, so
DFlashProposer.validate_same_kv_cache_group() asserts that they all sit in one
KV cache group. Gemma-4-E4B keeps its own KV cache in 24 of its 42 layers (20
sliding-window, 4 full-attention; the last 18 share earlier layers' caches),
and a DFlash drafter adds 5 full-attention layers with head_dim 128. Upstream
sizes the groups by the smallest attention type (4), which splits the 5 draft
layers over two groups: on an H100 the engine stopped with "All drafting
layers should belong to the same kv cache group" (bench/results/vllm_dflash.md).
With the patch the group size is the one that needs the fewest padding layers.

Real code: vLLM's Attention layers built from the real config.json files
report their KV cache specs (Attention.get_kv_cache_spec), and vLLM's
get_kv_cache_groups() groups them.
"""

from __future__ import annotations

import pytest

from vllm.config import DeviceConfig, ModelConfig, VllmConfig

NUM_OWN_KV_LAYERS = 24  # gemma4-e4b: num_hidden_layers 42 - num_kv_shared_layers 18


def vllm_config_for(model_dir: str) -> VllmConfig:
    config = VllmConfig(
        model_config=ModelConfig(model=model_dir, skip_tokenizer_init=True, max_model_len=4096),
        device_config=DeviceConfig(device="cuda"),
    )
    config.cache_config.block_size = config.cache_config.block_size or 16
    return config


@pytest.fixture
def target_and_draft_specs(config_dir, attention_layers):
    """KV cache specs of the target's own-KV layers and of the 5 draft layers."""
    target = vllm_config_for(config_dir("gemma4-e4b"))
    text = target.model_config.hf_text_config
    assert text.num_hidden_layers - text.num_kv_shared_layers == NUM_OWN_KV_LAYERS
    specs = {}
    for i, (_, attn) in enumerate(attention_layers(target)):
        if i < NUM_OWN_KV_LAYERS:
            specs[attn.layer_name] = attn.get_kv_cache_spec(target)
    draft_text = vllm_config_for(config_dir("gemma4-e4b-dflash")).model_config.hf_text_config
    for _, attn in attention_layers(target, text_config=draft_text, prefix="draft_model"):
        specs[attn.layer_name] = attn.get_kv_cache_spec(target)
    return target, specs


def test_dflash_draft_layers_of_a_gemma4_target_share_one_kv_cache_group(target_and_draft_specs):
    from vllm.v1.core.kv_cache_utils import get_kv_cache_groups

    vllm_config, specs = target_and_draft_specs
    draft = [name for name in specs if name.startswith("draft_model.")]
    assert len(draft) == 5

    groups = get_kv_cache_groups(vllm_config, specs)

    holding_draft = [g.layer_names for g in groups if set(g.layer_names) & set(draft)]
    assert holding_draft == [draft]
    grouped = [name for g in groups for name in g.layer_names]
    assert sorted(grouped) == sorted(specs)  # every layer in exactly one group


@pytest.mark.keeps_upstream
def test_gemma4_without_a_drafter_keeps_its_groups(target_and_draft_specs):
    """The target alone (20 sliding-window + 4 full-attention layers) is grouped
    as before: groups of 4 layers, no padding."""
    from vllm.v1.core.kv_cache_utils import get_kv_cache_groups

    vllm_config, specs = target_and_draft_specs
    target_only = {n: s for n, s in specs.items() if not n.startswith("draft_model.")}

    groups = get_kv_cache_groups(vllm_config, target_only)

    assert [len(g.layer_names) for g in groups] == [4] * 6
