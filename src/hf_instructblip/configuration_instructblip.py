# Copyright 2026 The hf_instructblip authors. Licensed under the Apache License, Version 2.0.
"""InstructBLIP configuration: vision tower, instruction-aware Q-Former, and the language model they feed.

This file ships to the Hub next to the weights (``trust_remote_code``), so it imports only from ``transformers``
and ``huggingface_hub``.

The sub-config field names are the same as in ``transformers``' own InstructBLIP configs, so an official
``config.json`` (``model_type: "instructblip"``) loads into these classes unchanged. This package has its own
``model_type`` because ``transformers`` owns ``"instructblip"`` in its Auto mappings.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlamaConfig, PreTrainedConfig, T5Config
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


@strict
class InstructBlipVisionConfig(PreTrainedConfig):
    r"""Configuration of the EVA ViT image encoder. The defaults are EVA ViT-g as LAVIS builds it for InstructBLIP.

    Args:
        hidden_size (`int`, defaults to 1408): width of the residual stream.
        intermediate_size (`int`, defaults to 6144): hidden width of each MLP.
        num_hidden_layers (`int`, defaults to 39): LAVIS builds 39 of EVA-CLIP-g's 40 blocks, so InstructBLIP
            reads the second-to-last layer of EVA-CLIP.
        num_attention_heads (`int`, defaults to 16): EVA ViT-g uses heads of width 88.
        image_size (`int`, defaults to 224): input resolution; the position embedding has
            `(image_size // patch_size) ** 2 + 1` rows.
        patch_size (`int`, defaults to 14): side of the square patches.
        hidden_act (`str`, defaults to `"gelu"`): exact (erf) GELU, as in EVA.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of the LayerNorms inside the blocks.
        post_layernorm_eps (`float`, defaults to 1e-5): epsilon of the final LayerNorm (LAVIS's `ln_vision`, a
            plain `nn.LayerNorm`). `transformers`' port uses `layer_norm_eps` (1e-6) there, which moves features by
            up to ~1e-2; set 1e-6 to reproduce that port bit for bit.
        attention_dropout (`float`, defaults to 0.0): dropout on the attention probabilities.
        initializer_range (`float`, defaults to 1e-10): std of the random init (real checkpoints overwrite it).
        qkv_bias (`bool`, defaults to `True`): whether the fused qkv projection has a bias. EVA learns query and
            value biases only; the key slice of the fused bias is zero in converted checkpoints and, being constant
            across keys, cannot change the attention weights anyway.
    """

    model_type = "hf_instructblip_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    post_layernorm_eps: float = 1e-5
    attention_dropout: float | int = 0.0
    initializer_range: float = 1e-10
    qkv_bias: bool = True

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision_config.hidden_size ({self.hidden_size}) must be divisible by "
                f"vision_config.num_attention_heads ({self.num_attention_heads})."
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision_config.image_size ({self.image_size}) must be a multiple of "
                f"vision_config.patch_size ({self.patch_size})."
            )

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


@strict
class InstructBlipQFormerConfig(PreTrainedConfig):
    r"""Configuration of the Query Transformer: a BERT encoder whose input is `[learned queries ; instruction]`.

    Args:
        vocab_size (`int`, defaults to 30523): bert-base-uncased plus LAVIS's `[DEC]` token.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, max_position_embeddings,
        layer_norm_eps, initializer_range, pad_token_id: as in BERT (bert-base-uncased values by default).
        hidden_dropout_prob, attention_probs_dropout_prob (`float`, defaults to 0.1): BERT's dropouts; active only
            in training mode.
        cross_attention_frequency (`int`, defaults to 2): layers with `layer_idx % cross_attention_frequency == 0`
            let the query slice cross-attend to the image (layers 0, 2, ..., 10).
        encoder_hidden_size (`int`, defaults to 1408): width of the image features; set from the vision config by
            [`InstructBlipConfig`].
    """

    model_type = "hf_instructblip_qformer"
    base_config_key = "qformer_config"

    vocab_size: int = 30523
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"qformer_config.hidden_size ({self.hidden_size}) must be divisible by "
                f"qformer_config.num_attention_heads ({self.num_attention_heads})."
            )
        if self.cross_attention_frequency < 1:
            raise ValueError(
                f"qformer_config.cross_attention_frequency must be >= 1, got {self.cross_attention_frequency}."
            )


def _vicuna_config(hidden_size: int, intermediate_size: int, num_layers: int) -> dict:
    # Vicuna v1.1 is LLaMA-1 shaped; LAVIS adds "[PAD]" (32000) and the processor adds "<image>" (32001).
    return LlamaConfig(
        vocab_size=32002,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 128,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=32000,
        tie_word_embeddings=False,
    ).to_dict()


def _flan_t5_config(d_model: int, d_ff: int, num_heads: int) -> dict:
    # LAVIS replaces flan-t5's tanh GELU with the exact one. "gated-gelu" would be turned back into "gelu_new" by
    # T5Config on every reload, so the exact erf GELU is named by its own activation key.
    return T5Config(
        vocab_size=32128,
        d_model=d_model,
        d_kv=64,
        d_ff=d_ff,
        num_layers=24,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu_python",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    ).to_dict()


PRESETS = {
    "vicuna7b": {"text_config": _vicuna_config(4096, 11008, 32), "image_token_index": 32001},
    "vicuna13b": {"text_config": _vicuna_config(5120, 13824, 40), "image_token_index": 32001},
    "flant5xl": {"text_config": _flan_t5_config(2048, 5120, 32), "image_token_index": 32100},
    "flant5xxl": {"text_config": _flan_t5_config(4096, 10240, 64), "image_token_index": 32100},
}


# The model class's name in config.json, an alias defined next to the class in modeling_instructblip.py.
SAVED_ARCHITECTURES = {"InstructBlipForConditionalGeneration": "HfInstructBlipForConditionalGeneration"}


@strict
class InstructBlipConfig(PreTrainedConfig):
    r"""Configuration of [`InstructBlipForConditionalGeneration`].

    Args:
        vision_config (`dict` or [`InstructBlipVisionConfig`]): the image encoder.
        qformer_config (`dict` or [`InstructBlipQFormerConfig`]): the Q-Former.
        text_config (`dict` or `PreTrainedConfig`): any causal-LM (decoder-only, e.g. LLaMA/Vicuna) or seq2seq-LM
            (encoder-decoder, e.g. Flan-T5) config; a dict needs its `model_type`. Defaults to Vicuna-7B.
        num_query_tokens (`int`, defaults to 32): learned queries, hence LLM tokens per image (per video frame).
        image_token_index (`int`): id of the `<image>` placeholder whose embeddings are replaced by the projected
            query outputs. It must lie inside the language model's vocabulary.
        initializer_factor, initializer_range (`float`): random-init scales.

    Presets for the four released models: `InstructBlipConfig.from_preset("vicuna7b" | "vicuna13b" | "flant5xl" |
    "flant5xxl")`.

    Example:

    ```python
    >>> from hf_instructblip import InstructBlipConfig
    >>> config = InstructBlipConfig.from_preset("flant5xl")
    >>> config.use_decoder_only_language_model, config.text_config.d_model
    (False, 2048)
    ```
    """

    model_type = "hf_instructblip"
    attribute_map = {"image_token_id": "image_token_index"}
    # Trainer's evaluation gathers every other output across batches; only `logits` are predictions.
    keys_to_ignore_at_inference = [
        "last_hidden_state", "image_features", "image_outputs", "vision_outputs", "qformer_outputs",
        "language_model_outputs",
    ]
    sub_configs_defaults = {
        "vision_config": InstructBlipVisionConfig,
        "qformer_config": InstructBlipQFormerConfig,
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama", init_kwargs=PRESETS["vicuna7b"]["text_config"]
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    image_token_index: int | None = None
    initializer_factor: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # Official transformers configs store this derived flag; it is recomputed below, never trusted.
        kwargs.pop("use_decoder_only_language_model", None)
        super().__post_init__(**kwargs)
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self.use_decoder_only_language_model = self.text_config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    def to_dict(self) -> dict:
        output = super().to_dict()
        # Tools resolve `architectures[0]` in `transformers` first (TRL's `trl sft`), where the model's class name
        # is transformers' own InstructBLIP; the saved name resolves only in this package's modeling file.
        if output.get("architectures"):
            output["architectures"] = [SAVED_ARCHITECTURES.get(name, name) for name in output["architectures"]]
        return output

    def validate_architecture(self):
        vocab_size = self.text_config.vocab_size
        if self.image_token_index is not None and not 0 <= self.image_token_index < vocab_size:
            raise ValueError(
                f"image_token_index ({self.image_token_index}) must be a valid id of the language model's "
                f"vocabulary (text_config.vocab_size={vocab_size}): its rows are read by the embedding lookup."
            )
        if self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {self.num_query_tokens}.")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        # transformers falls back to an empty dict, i.e. the default (Vicuna-7B-sized) config, when config.json is
        # missing; building that model would allocate tens of GB before any weight is found to be wrong.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            raise OSError(
                f"{pretrained_model_name_or_path} has no config.json (or an empty one); an InstructBLIP checkpoint "
                "needs it, and no default configuration is assumed. Save the model with save_pretrained."
            )
        return config_dict, kwargs

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "InstructBlipConfig":
        """Full-size config of a released model: `"vicuna7b"`, `"vicuna13b"`, `"flant5xl"` or `"flant5xxl"`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["InstructBlipConfig", "InstructBlipQFormerConfig", "InstructBlipVisionConfig", "PRESETS"]
