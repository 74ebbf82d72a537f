"""Series patch 4 (gemma4-moe-swa-full-tokens-ratio): swa_full_tokens_ratio for Gemma 4.

Specification:
- A MoE Gemma 4 (gemma-4-26B-A4B shape: num_experts=128, top-8) resolves
  ``swa_full_tokens_ratio`` to 0.15 and logs
  "Setting swa_full_tokens_ratio to 0.15 for Gemma4ForConditionalGeneration ...".
- A dense Gemma 4 (gemma-4-31B shape: num_experts null) keeps the global default 0.8.
- An explicit user value always wins, from the Python API and from the CLI.
- Other models keep the global default 0.8.

Everything goes through SGLang's real resolution path (``ServerArgs.__post_init__`` and
``prepare_server_args`` for the CLI), with ``device="cuda"`` / ``--device cuda`` as a
GPU deployment would resolve it; the model configs are the config.json files in
configs/ (shapes of the public google/gemma-4-26B-A4B-it and google/gemma-4-31B-it).
"""

import json
import logging
from pathlib import Path

import pytest

from sglang.srt.server_args import ServerArgs, prepare_server_args

CONFIGS = Path(__file__).parent / "configs"
MOE_26B_A4B = str(CONFIGS / "gemma-4-26B-A4B-it")
DENSE_31B = str(CONFIGS / "gemma-4-31B-it")

MOE_RATIO = 0.15
DEFAULT_RATIO = 0.8


def _resolve(model_path, **kwargs):
    return ServerArgs(model_path=model_path, device="cuda", **kwargs)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    (path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "vocab_size": 512,
                "max_position_embeddings": 2048,
            }
        )
    )
    return str(path)


def test_moe_gemma4_defaults_to_0_15_and_logs_it(caplog):
    """26B-A4B (MoE): ratio 0.15, with the log line an operator can grep for."""
    caplog.set_level(logging.INFO)
    server_args = _resolve(MOE_26B_A4B)
    assert server_args.swa_full_tokens_ratio == MOE_RATIO
    assert (
        "Setting swa_full_tokens_ratio to 0.15 for Gemma4ForConditionalGeneration"
        in caplog.text
    )


def test_only_moe_gemma4_is_changed(llama_dir):
    """Dense 31B and a non-Gemma model keep 0.8 while the MoE 26B-A4B gets 0.15."""
    # The fixtures really are one MoE and one dense Gemma 4, both 5 sliding : 1 full.
    moe = json.loads((CONFIGS / "gemma-4-26B-A4B-it" / "config.json").read_text())
    dense = json.loads((CONFIGS / "gemma-4-31B-it" / "config.json").read_text())
    assert moe["text_config"]["num_experts"] == 128
    assert not dense["text_config"]["num_experts"]
    for cfg in (moe, dense):
        assert cfg["architectures"] == ["Gemma4ForConditionalGeneration"]
        types = cfg["text_config"]["layer_types"]
        assert types.count("sliding_attention") == 5 * types.count("full_attention")

    assert _resolve(DENSE_31B).swa_full_tokens_ratio == DEFAULT_RATIO
    assert _resolve(llama_dir).swa_full_tokens_ratio == DEFAULT_RATIO
    assert ServerArgs.swa_full_tokens_ratio == DEFAULT_RATIO  # global default untouched
    assert _resolve(MOE_26B_A4B).swa_full_tokens_ratio == MOE_RATIO


def test_explicit_user_value_wins():
    """--swa-full-tokens-ratio given by the user is kept, MoE or dense, API or CLI."""
    assert _resolve(MOE_26B_A4B, swa_full_tokens_ratio=0.5).swa_full_tokens_ratio == 0.5
    assert _resolve(DENSE_31B, swa_full_tokens_ratio=0.5).swa_full_tokens_ratio == 0.5
    cli = ["--model-path", MOE_26B_A4B, "--device", "cuda"]
    assert (
        prepare_server_args(
            cli + ["--swa-full-tokens-ratio", "0.3"]
        ).swa_full_tokens_ratio
        == 0.3
    )
    # ... and without the flag, the CLI path applies the MoE default.
    assert prepare_server_args(cli).swa_full_tokens_ratio == MOE_RATIO
