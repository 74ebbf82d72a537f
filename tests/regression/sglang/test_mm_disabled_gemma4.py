"""Series patch 5 (gemma4-mm-disabled-by-default): Gemma 4 serves text only by default.

Specification:
- ``ModelConfig`` for a Gemma4ForConditionalGeneration checkpoint (gemma-4-26B-A4B and
  gemma-4-31B shapes) is text-only by default (``is_multimodal`` False, no image/audio
  understanding), exactly like Gemma 3 / Llama 4 in ``mm_disabled_models``;
  ``enable_multimodal=True`` (``--enable-multimodal``) makes it multimodal again.
- The text-only model builds no vision/audio tower and loads none of their weights
  from the checkpoint, while the language-model weights load as before.
- With ``--enable-multimodal`` the towers are built and their weights are loaded.

The model part runs SGLang's real loader (``sglang.srt.model_loader.get_model`` with
``load_format="safetensors"``) on the CPU: the architecture resolves to the real
Gemma4ForConditionalGeneration, which is constructed and fed a small safetensors
checkpoint in Hugging Face naming (text, vision tower, audio tower and both
multimodal embedders). The config is the gemma-4-31B fixture with every dimension
shrunk so that it builds in seconds, plus a small E2B/E4B-style audio tower so that
both towers are exercised.
"""

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.server_args import ServerArgs

CONFIGS = Path(__file__).parent / "configs"
GEMMA4_CONFIGS = ["gemma-4-26B-A4B-it", "gemma-4-31B-it"]
TOWER_PREFIXES = ("vision_tower.", "embed_vision.", "audio_tower.", "embed_audio.")


@pytest.mark.parametrize("name", GEMMA4_CONFIGS)
def test_model_config_is_text_only_unless_enable_multimodal(name):
    """Default: not multimodal. --enable-multimodal: multimodal (image understanding)."""
    path = str(CONFIGS / name)

    default = ModelConfig(model_path=path)
    assert default.hf_config.architectures == ["Gemma4ForConditionalGeneration"]
    assert default.is_multimodal is False
    assert not default.is_image_understandable_model
    assert not default.is_audio_understandable_model

    # The same through the server-args path the scheduler uses.
    from_server_args = ModelConfig.from_server_args(
        ServerArgs(model_path=path, device="cuda")
    )
    assert from_server_args.is_multimodal is False

    enabled = ModelConfig(model_path=path, enable_multimodal=True)
    assert enabled.is_multimodal is True
    assert enabled.is_image_understandable_model


# --------------------------------------------------------------------------- model

# The model is built on the CPU with SGLang's CPU engine, which conftest.py selects
# (SGLANG_USE_CPU_ENGINE=1) on machines without a CUDA device.
cpu_engine = pytest.mark.skipif(
    os.environ.get("SGLANG_USE_CPU_ENGINE") != "1",
    reason="builds the model with SGLang's CPU engine (conftest sets "
    "SGLANG_USE_CPU_ENGINE=1 only when there is no CUDA device)",
)


def _tiny_config():
    cfg = copy.deepcopy(
        json.loads((CONFIGS / "gemma-4-31B-it" / "config.json").read_text())
    )
    cfg["text_config"].update(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_global_key_value_heads=1,
        head_dim=32,
        global_head_dim=64,
        vocab_size=512,
        vocab_size_per_layer_input=512,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
    )
    cfg["vision_config"].update(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        position_embedding_size=64,
    )
    cfg["audio_config"] = {
        "model_type": "gemma4_audio",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "output_proj_dims": 32,
        "subsampling_conv_channels": [8, 4],
    }
    return cfg


def _checkpoint():
    """HF-named tensors: text weights plus vision/audio tower and embedder weights."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "model.language_model.embed_tokens.weight": (512, 64),
        "model.language_model.norm.weight": (64,),
        "model.vision_tower.patch_embedder.input_proj.weight": (32, 3 * 16 * 16),
        "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight": (32, 32),
        "model.vision_tower.encoder.layers.0.mlp.down_proj.linear.weight": (32, 64),
        "model.embed_vision.embedding_projection.weight": (64, 32),
        "model.audio_tower.layers.0.self_attn.q_proj.linear.weight": (32, 32),
        "model.audio_tower.output_proj.weight": (32, 32),
        "model.embed_audio.embedding_projection.weight": (64, 32),
    }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def tiny_gemma4_dir(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny-gemma4")
    (path / "config.json").write_text(json.dumps(_tiny_config()))
    save_file(_checkpoint(), str(path / "model.safetensors"))
    return str(path)


def _load(model_dir, enable_multimodal, monkeypatch):
    """Build and load the model through SGLang's loader; also return what
    Gemma4ForConditionalGeneration.load_weights reported as loaded."""
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.model_loader import get_model
    from sglang.srt.models.gemma4_mm import Gemma4ForConditionalGeneration
    from sglang.srt.server_args import set_global_server_args_for_scheduler

    server_args = ServerArgs(
        model_path=model_dir,
        device="cpu",
        dtype="float32",
        enable_multimodal=enable_multimodal,
    )
    set_global_server_args_for_scheduler(server_args)
    model_config = ModelConfig.from_server_args(server_args)

    reported = {}
    real_load_weights = Gemma4ForConditionalGeneration.load_weights

    def observed_load_weights(self, weights):
        reported["loaded"] = real_load_weights(self, weights)
        return reported["loaded"]

    monkeypatch.setattr(
        Gemma4ForConditionalGeneration, "load_weights", observed_load_weights
    )
    model = get_model(
        model_config=model_config,
        load_config=LoadConfig(load_format="safetensors"),
        device_config=DeviceConfig(device="cpu"),
    )
    monkeypatch.undo()
    assert type(model) is Gemma4ForConditionalGeneration
    return model_config, model, reported["loaded"]


def _tower_names(names):
    return sorted(n for n in names if n.startswith(TOWER_PREFIXES))


@cpu_engine
def test_text_only_model_builds_and_loads_no_tower(
    tiny_gemma4_dir, sglang_cpu_dist, monkeypatch
):
    """Default serving: no tower module, parameter or buffer; no tower weight loaded;
    the language model's weights are loaded from the checkpoint."""
    model_config, model, loaded = _load(tiny_gemma4_dir, None, monkeypatch)
    assert model_config.is_multimodal is False

    assert model.vision_tower is None and model.embed_vision is None
    assert model.audio_tower is None and model.embed_audio is None
    assert _tower_names(model.state_dict()) == []
    assert _tower_names(n for n, _ in model.named_modules()) == []

    assert _tower_names(loaded) == []
    ckpt = _checkpoint()
    assert "language_model.norm.weight" in loaded
    torch.testing.assert_close(
        model.state_dict()["language_model.norm.weight"],
        ckpt["model.language_model.norm.weight"],
    )


@cpu_engine
def test_enable_multimodal_builds_and_loads_towers(
    tiny_gemma4_dir, sglang_cpu_dist, monkeypatch
):
    """--enable-multimodal keeps upstream behaviour (towers built, their weights loaded);
    without it the same checkpoint loads no tower weight."""
    _, text_only, text_only_loaded = _load(tiny_gemma4_dir, None, monkeypatch)
    assert _tower_names(text_only_loaded) == []
    assert text_only.vision_tower is None

    model_config, model, loaded = _load(tiny_gemma4_dir, True, monkeypatch)
    assert model_config.is_multimodal is True
    assert model.vision_tower is not None and model.audio_tower is not None

    ckpt = _checkpoint()
    state = model.state_dict()
    torch.testing.assert_close(
        state["embed_vision.embedding_projection.weight"],
        ckpt["model.embed_vision.embedding_projection.weight"],
    )
    torch.testing.assert_close(
        state["vision_tower.encoder.layers.0.self_attn.qkv.qkv_proj.weight"][:32],
        ckpt["model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight"],
    )
    torch.testing.assert_close(
        state["audio_tower.output_proj.weight"],
        ckpt["model.audio_tower.output_proj.weight"],
    )
    assert {
        "embed_vision.embedding_projection.weight",
        "embed_audio.embedding_projection.weight",
        "audio_tower.output_proj.weight",
    } <= set(loaded)
