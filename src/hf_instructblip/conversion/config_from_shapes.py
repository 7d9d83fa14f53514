"""The model configuration read off the converted tensors' shapes, so that a checkpoint of any size converts.

Shapes fix every dimension but the attention head counts: EVA ViT-g uses heads of width 88, and the Q-Former
takes its heads from the BERT config that ships with its tokenizer (bert-base-uncased: 12). Both can be overridden.
"""

import math
import re

import torch
from transformers import PreTrainedConfig

from .errors import ConversionError

EVA_HEAD_WIDTH = 88

# Q-Former settings that shapes cannot show; they come from the BERT config shipped with the Q-Former tokenizer.
BERT_SETTINGS = (
    "num_attention_heads",
    "hidden_act",
    "layer_norm_eps",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def _shape(state_dict: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ConversionError(f"Cannot infer the model configuration: the checkpoint has no {key}.")
    return tuple(state_dict[key].shape)


def _layer_ids(state_dict: dict[str, torch.Tensor], prefix: str) -> set[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return {int(match[1]) for key in state_dict if (match := pattern.match(key))}


def _count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    ids = _layer_ids(state_dict, prefix)
    if not ids or ids != set(range(len(ids))):
        raise ConversionError(f"Layers under {prefix}* are not numbered 0..N-1: {sorted(ids)}")
    return len(ids)


def infer_vision_config(state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None) -> dict:
    """EVA ViT settings from HF-named tensors; the image size follows from the position embedding."""
    hidden_size = _shape(state_dict, "vision_model.embeddings.class_embedding")[-1]
    patch_size = _shape(state_dict, "vision_model.embeddings.patch_embedding.weight")[-1]
    num_patches = _shape(state_dict, "vision_model.embeddings.position_embedding")[1] - 1  # minus the class token
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ConversionError(f"The vision position embedding has {num_patches} patch rows, not a square grid.")
    if num_attention_heads is None:
        if hidden_size % EVA_HEAD_WIDTH:
            raise ConversionError(
                f"Vision width {hidden_size} is not a multiple of EVA's head width {EVA_HEAD_WIDTH}; "
                f"give the number of vision attention heads explicitly."
            )
        num_attention_heads = hidden_size // EVA_HEAD_WIDTH
    return {
        "hidden_size": hidden_size,
        "intermediate_size": _shape(state_dict, "vision_model.encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": _count_layers(state_dict, "vision_model.encoder.layers."),
        "num_attention_heads": num_attention_heads,
        "image_size": grid * patch_size,
        "patch_size": patch_size,
    }


def _cross_attention_frequency(state_dict: dict[str, torch.Tensor], num_layers: int) -> int:
    """The period of the layers that cross-attend to the image (LAVIS: every 2nd, starting at layer 0)."""
    cross_layers = _layer_ids(
        {k: v for k, v in state_dict.items() if ".crossattention." in k}, "qformer.encoder.layer."
    )
    later = sorted(cross_layers - {0})
    frequency = later[0] if later else num_layers  # a lone cross-attention layer 0 repeats beyond the last layer
    if 0 not in cross_layers or cross_layers != set(range(0, num_layers, frequency)):
        raise ConversionError(
            f"Q-Former cross-attention layers {sorted(cross_layers)} are not every k-th layer from layer 0."
        )
    return frequency


def infer_qformer_config(state_dict: dict[str, torch.Tensor], bert_settings: dict) -> dict:
    """Q-Former settings from HF-named tensors, plus `bert_settings` (see `BERT_SETTINGS`) for what shapes hide."""
    vocab_size, hidden_size = _shape(state_dict, "qformer.embeddings.word_embeddings.weight")
    num_layers = _count_layers(state_dict, "qformer.encoder.layer.")
    missing = [name for name in BERT_SETTINGS if name not in bert_settings]
    if missing:
        raise ConversionError(f"Q-Former settings {missing} are unknown: no BERT config and no override gives them.")
    return {
        **bert_settings,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "intermediate_size": _shape(state_dict, "qformer.encoder.layer.0.intermediate_query.dense.weight")[0],
        "max_position_embeddings": _shape(state_dict, "qformer.embeddings.position_embeddings.weight")[0],
        "cross_attention_frequency": _cross_attention_frequency(state_dict, num_layers),
    }


def bert_settings_from_config(config: PreTrainedConfig) -> dict:
    return {name: getattr(config, name) for name in BERT_SETTINGS if hasattr(config, name)}


def num_query_tokens(state_dict: dict[str, torch.Tensor]) -> int:
    return _shape(state_dict, "query_tokens")[1]
