# Copyright 2026 The hf_instructblip authors. Licensed under the Apache License, Version 2.0.
"""InstructBLIP: vision tower → instruction-aware Q-Former → projection → language model.

Read top to bottom, this file follows the paper's figure:

    pixel_values (B, 3, H, W)                       video: (B, T, 3, H, W), folded to (B*T, 3, H, W)
      → InstructBlipVisionModel                     (B, 1 + P, Cv)      EVA ViT, final LayerNorm outside the blocks
      → InstructBlipQFormerModel                    (B, Nq + L, Cq)     [learned queries ; instruction tokens]
      → first Nq outputs, language_projection       (B, Nq, Clm)        video: (B, T*Nq, Clm)
      → replace the `<image>` placeholders in the LLM's input embeddings → language model (decoder-only or
        encoder-decoder, built from `config.text_config` with the Auto classes).

The state-dict layout equals `transformers`' `InstructBlipForConditionalGeneration`, so official checkpoints load
unchanged. This file ships to the Hub (`trust_remote_code`): it imports only `transformers`, `torch` and the
configuration file next to it.
"""

import copy
import glob
import os
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Unpack

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging, torch_compilable_check
from transformers.utils.output_capturing import OutputRecorder, capture_outputs, maybe_install_capturing_hooks

from .configuration_instructblip import InstructBlipConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig


logger = logging.get_logger(__name__)


@dataclass
class InstructBlipImageFeaturesOutput(BaseModelOutputWithPooling):
    """Output of [`InstructBlipForConditionalGeneration.get_image_features`].

    Args:
        pooler_output (`torch.FloatTensor` of shape `(batch_size, frames * num_query_tokens, text_hidden_size)`):
            the projected query outputs: the language model's visual tokens, which replace the `<image>` placeholders.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size * frames, 1 + patches, vision_hidden_size)`):
            the vision tower's output, which the Q-Former cross-attends to.
        hidden_states, attentions: the vision tower's, when asked for (`output_hidden_states` / `output_attentions`).
        vision_outputs (`BaseModelOutputWithPooling`): everything the vision tower returned.
        qformer_outputs (`BaseModelOutputWithCrossAttentions`): everything the Q-Former returned, with its
            self-attention (`attentions`) and cross-attention (`cross_attentions`) maps when asked for.
    """

    vision_outputs: BaseModelOutputWithPooling | None = None
    qformer_outputs: BaseModelOutputWithCrossAttentions | None = None


@dataclass
class InstructBlipOutput(ModelOutput):
    """Output of [`InstructBlipForConditionalGeneration.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` are given): the language model's
            cross-entropy over the target tokens.
        logits (`torch.FloatTensor` of shape `(batch_size, target_length, vocab_size)`): language model logits,
            over every input position for a decoder-only LLM, over the decoder positions for an encoder-decoder.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, target_length, text_hidden_size)`): the
            language model's final (normalised) hidden states at the positions of `logits`, the decoder's for an
            encoder-decoder. For Vicuna/LLaMA and Flan-T5 this is exactly what the LM head reads, so trainers with a
            fused LM head (TRL's `SFTTrainer`) compute the loss from it instead of from the logits.
        image_features (`torch.FloatTensor` of shape `(batch_size, frames * num_query_tokens, text_hidden_size)`):
            the projected query outputs that replaced the `<image>` placeholders.
        image_outputs ([`InstructBlipImageFeaturesOutput`]): what `get_image_features` returned.
        vision_outputs (`BaseModelOutputWithPooling`), qformer_outputs (`BaseModelOutputWithCrossAttentions`): the
            two towers' outputs (also in `image_outputs`), with their hidden states and attention maps when asked.
        language_model_outputs (`ModelOutput`): everything the language model returned (cache, hidden states...).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    image_outputs: InstructBlipImageFeaturesOutput | None = None
    vision_outputs: BaseModelOutputWithPooling | None = None
    qformer_outputs: BaseModelOutputWithCrossAttentions | None = None
    language_model_outputs: ModelOutput | None = None


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention. query/key/value: (B, heads, S, head_dim); returns (B, S_query, heads, head_dim)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def attention_function(config):
    """The attention backend the config asks for (`"sdpa"` by default), or the eager one above."""
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, C) → (B, heads, S, C // heads)."""
    batch_size, seq_len, _ = x.shape
    return x.view(batch_size, seq_len, num_heads, -1).transpose(1, 2)


class InstructBlipPreTrainedModel(PreTrainedModel):
    config_class = InstructBlipConfig
    config: InstructBlipConfig
    base_model_prefix = ""
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _no_split_modules = ["InstructBlipVisionEncoderLayer", "InstructBlipQFormerLayer", "InstructBlipVisionEmbeddings"]
    # Checkpoints written by older transformers versions saved this (now derived) buffer.
    _keys_to_ignore_on_load_unexpected = [r"qformer\.embeddings\.position_ids"]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the bulk of the weights, which `save_pretrained` records as `config.dtype`.

        `PreTrainedModel.dtype` is the first parameter's, here the float32 queries: a bfloat16 model would be saved
        as float32 and `from_pretrained(..., dtype="auto")` would reload all of it in float32.
        """
        numel_by_dtype = Counter()
        for parameter in self.parameters():
            if parameter.is_floating_point():
                numel_by_dtype[parameter.dtype] += parameter.numel()
        return numel_by_dtype.most_common(1)[0][0]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, InstructBlipVisionEmbeddings):
            init.trunc_normal_(module.position_embedding, mean=0.0, std=self.config.initializer_range)
            init.trunc_normal_(module.class_embedding, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, InstructBlipForConditionalGeneration):
            # LAVIS draws the queries from N(0, 0.02); all-zero queries would all be normalised to the same
            # LayerNorm bias and give huge first gradients.
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)


# --------------------------------------------------------------------------------------------------------------------
# Vision tower: EVA ViT (pre-norm blocks, fused qkv), then the final LayerNorm that LAVIS calls `ln_vision`.
# --------------------------------------------------------------------------------------------------------------------


class InstructBlipVisionEmbeddings(nn.Module):
    def __init__(self, config: InstructBlipVisionConfig):
        super().__init__()
        self.image_size = config.image_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_positions, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 1 + P, C): class token first, then the patches in raster order."""
        if pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values have spatial size {tuple(pixel_values.shape[-2:])}, but the vision tower was built "
                f"for {self.image_size}x{self.image_size} images; resize them with the model's processor."
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, C, h, w)
        patches = patches.flatten(2).transpose(1, 2)  # (B, P, C)
        class_token = self.class_embedding.expand(patches.shape[0], -1, -1).to(patches.dtype)
        return torch.cat([class_token, patches], dim=1) + self.position_embedding.to(patches.dtype)


class InstructBlipVisionAttention(nn.Module):
    def __init__(self, config: InstructBlipVisionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.scaling = (config.hidden_size // config.num_attention_heads) ** -0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.projection = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S, C) → (B, S, C), and the attention weights (B, heads, S, S) where the backend computes them."""
        batch_size, seq_len, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, S, head_dim)
        attended, weights = attention_function(self.config)(
            self,
            query,
            key,
            value,
            attention_mask=None,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
        )
        return self.projection(attended.reshape(batch_size, seq_len, width)), weights


class InstructBlipVisionMLP(nn.Module):
    def __init__(self, config: InstructBlipVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class InstructBlipVisionEncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: InstructBlipVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = InstructBlipVisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = InstructBlipVisionMLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attended, _ = self.self_attn(self.layer_norm1(hidden_states))
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class InstructBlipVisionEncoder(nn.Module):
    def __init__(self, config: InstructBlipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(InstructBlipVisionEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class InstructBlipVisionModel(InstructBlipPreTrainedModel):
    """EVA ViT image encoder: `pixel_values` (B, 3, H, W) → image embeddings (B, 1 + P, Cv).

    `output_hidden_states=True` records the embeddings and every block's output (before the final LayerNorm, as
    the blocks produce them); `output_attentions=True` every block's attention maps (eager attention only).
    """

    config_class = InstructBlipVisionConfig
    config: InstructBlipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _can_record_outputs = {"hidden_states": InstructBlipVisionEncoderLayer, "attentions": InstructBlipVisionAttention}

    def __init__(self, config: InstructBlipVisionConfig):
        super().__init__(config)
        self.embeddings = InstructBlipVisionEmbeddings(config)
        self.encoder = InstructBlipVisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.post_layernorm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`pixel_values` (B, 3, H, W) → `last_hidden_state` (B, 1 + P, Cv) after the final LayerNorm, and its
        class token as `pooler_output` (B, Cv). Takes `output_hidden_states`, `output_attentions`, `return_dict`."""
        image_embeds = self.post_layernorm(self.encoder(self.embeddings(pixel_values)))
        return BaseModelOutputWithPooling(last_hidden_state=image_embeds, pooler_output=image_embeds[:, 0])


# --------------------------------------------------------------------------------------------------------------------
# Q-Former: BERT over [learned queries ; instruction tokens]. Self-attention mixes both, so the queries read the
# instruction; only the query slice cross-attends to the image, and queries and text have separate feed-forwards.
# --------------------------------------------------------------------------------------------------------------------


class InstructBlipQFormerEmbeddings(nn.Module):
    def __init__(self, config: InstructBlipQFormerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, query_embeds: torch.Tensor, input_ids: torch.LongTensor | None) -> torch.Tensor:
        """queries (B, Nq, C) and instruction ids (B, L) → (B, Nq + L, C).

        Text positions count from 0 and the queries get none: they are a set, not a sequence. The queries still
        pass through the embedding LayerNorm, as in LAVIS.
        """
        embeddings = query_embeds.to(self.layernorm.weight.dtype)
        if input_ids is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            text = self.word_embeddings(input_ids) + self.position_embeddings(positions)
            embeddings = torch.cat([embeddings, text], dim=1)
        return self.dropout(self.layernorm(embeddings))


class InstructBlipQFormerMultiHeadAttention(nn.Module):
    """BERT attention: self-attention when `key_value_width` is the hidden size, cross-attention to the image else."""

    def __init__(self, config: InstructBlipQFormerConfig, key_value_width: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.scaling = (config.hidden_size // config.num_attention_heads) ** -0.5
        self.is_causal = False
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(key_value_width, config.hidden_size)
        self.value = nn.Linear(key_value_width, config.hidden_size)

    def forward(self, hidden_states, key_value_states, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S, C) attending to (B, S_kv, C_kv) → (B, S, C), and the weights (B, heads, S, S_kv) where computed."""
        attended, weights = attention_function(self.config)(
            self,
            split_heads(self.query(hidden_states), self.num_heads),
            split_heads(self.key(key_value_states), self.num_heads),
            split_heads(self.value(key_value_states), self.num_heads),
            attention_mask=attention_mask,
            scaling=self.scaling,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
        )
        return attended.flatten(2), weights  # (B, S, C)


class InstructBlipQFormerOutput(nn.Module):
    """BERT's post-sublayer block: LayerNorm(dropout(dense(h)) + residual)."""

    def __init__(self, config: InstructBlipQFormerConfig, input_width: int):
        super().__init__()
        self.dense = nn.Linear(input_width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class InstructBlipQFormerAttention(nn.Module):
    def __init__(self, config: InstructBlipQFormerConfig, key_value_width: int):
        super().__init__()
        self.attention = InstructBlipQFormerMultiHeadAttention(config, key_value_width)
        self.output = InstructBlipQFormerOutput(config, config.hidden_size)

    def forward(self, hidden_states, key_value_states, attention_mask=None) -> torch.Tensor:
        attended, _ = self.attention(hidden_states, key_value_states, attention_mask)
        return self.output(attended, hidden_states)


class InstructBlipQFormerIntermediate(nn.Module):
    def __init__(self, config: InstructBlipQFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states))


class InstructBlipQFormerLayer(GradientCheckpointingLayer):
    def __init__(self, config: InstructBlipQFormerConfig, layer_idx: int):
        super().__init__()
        self.attention = InstructBlipQFormerAttention(config, config.hidden_size)
        if layer_idx % config.cross_attention_frequency == 0:
            self.crossattention = InstructBlipQFormerAttention(config, config.encoder_hidden_size)
        self.intermediate_query = InstructBlipQFormerIntermediate(config)
        self.output_query = InstructBlipQFormerOutput(config, config.intermediate_size)
        self.intermediate = InstructBlipQFormerIntermediate(config)
        self.output = InstructBlipQFormerOutput(config, config.intermediate_size)

    def forward(self, hidden_states, attention_mask, image_embeds, num_queries: int) -> torch.Tensor:
        """hidden_states (B, Nq + L, C), attention_mask over the Nq + L positions as the backend takes it (or
        None), image_embeds (B, 1 + P, Cv)."""
        hidden_states = self.attention(hidden_states, hidden_states, attention_mask)
        queries, text = hidden_states[:, :num_queries], hidden_states[:, num_queries:]
        if hasattr(self, "crossattention"):
            queries = self.crossattention(queries, image_embeds)
        queries = self.output_query(self.intermediate_query(queries), queries)
        if text.shape[1] == 0:
            return queries
        text = self.output(self.intermediate(text), text)
        return torch.cat([queries, text], dim=1)


class InstructBlipQFormerEncoder(nn.Module):
    def __init__(self, config: InstructBlipQFormerConfig):
        super().__init__()
        self.layer = nn.ModuleList(InstructBlipQFormerLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(self, hidden_states, attention_mask, image_embeds, num_queries: int) -> torch.Tensor:
        for layer in self.layer:
            # Positional hidden states: the gradient-checkpointing wrapper only re-feeds positional tensors.
            hidden_states = layer(hidden_states, attention_mask, image_embeds, num_queries)
        return hidden_states


class InstructBlipQFormerModel(InstructBlipPreTrainedModel):
    """The Query Transformer: queries (B, Nq, C) + instruction (B, L) + image (B, 1 + P, Cv) → (B, Nq + L, C).

    `output_hidden_states=True` records the embeddings and every layer's output; `output_attentions=True` every
    layer's self-attention maps (over queries and instruction) and, in `cross_attentions`, the queries' attention
    maps over the image patches (eager attention only).
    """

    config_class = InstructBlipQFormerConfig
    config: InstructBlipQFormerConfig
    _can_record_outputs = {
        "hidden_states": InstructBlipQFormerLayer,
        "attentions": OutputRecorder(InstructBlipQFormerMultiHeadAttention, index=1, layer_name="attention.attention"),
        "cross_attentions": OutputRecorder(
            InstructBlipQFormerMultiHeadAttention, index=1, layer_name="crossattention.attention"
        ),
    }

    def __init__(self, config: InstructBlipQFormerConfig):
        super().__init__(config)
        self.embeddings = InstructBlipQFormerEmbeddings(config)
        self.encoder = InstructBlipQFormerEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module):
        self.embeddings.word_embeddings = value

    @capture_outputs
    def forward(
        self,
        query_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithCrossAttentions:
        """`last_hidden_state` (B, Nq + L, C): the query outputs first. Takes `output_hidden_states`,
        `output_attentions` (self- and cross-attention maps) and `return_dict`."""
        hidden_states = self.embeddings(query_embeds, input_ids)
        batch_size, num_queries = query_embeds.shape[:2]
        padding = None
        if input_ids is not None and attention_mask is not None:
            keep = torch.cat([attention_mask.new_ones(batch_size, num_queries), attention_mask], dim=1)  # (B, Nq + L)
            # In the form the attention backend takes (additive, boolean or flex's block mask).
            padding = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=keep)
        image_embeds = image_embeds.to(hidden_states.dtype)
        return BaseModelOutputWithCrossAttentions(
            last_hidden_state=self.encoder(hidden_states, padding, image_embeds, num_queries)
        )


# --------------------------------------------------------------------------------------------------------------------
# The full model.
# --------------------------------------------------------------------------------------------------------------------


class InstructBlipForConditionalGeneration(InstructBlipPreTrainedModel, GenerationMixin):
    """InstructBLIP with its language model head: image + instruction → text.

    One class serves decoder-only LLMs (Vicuna/LLaMA, with `input_ids` = placeholders + prompt) and encoder-decoder
    LLMs (Flan-T5, where the placeholders + prompt feed the encoder), and images as well as videos.
    """

    # LAVIS keeps the learned queries in float32 (they are tiny and feed a LayerNorm); also under bfloat16.
    _keep_in_fp32_modules_strict = ["query_tokens"]

    def __init__(self, config: InstructBlipConfig):
        super().__init__(config)
        self.vision_model = InstructBlipVisionModel._from_config(config.vision_config)
        # float32 even when built under a half-precision default (`_from_config(config, dtype=torch.bfloat16)`).
        self.query_tokens = nn.Parameter(
            torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size, dtype=torch.float32)
        )
        self.qformer = InstructBlipQFormerModel._from_config(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        language_model_class = AutoModelForCausalLM if config.use_decoder_only_language_model else AutoModelForSeq2SeqLM
        self.language_model = language_model_class.from_config(config.text_config)
        # `forward` always asks the LLM for its hidden states (`last_hidden_state`); transformers installs the
        # hooks that record them lazily, under a lock that `torch.compile(fullgraph=True)` cannot trace.
        maybe_install_capturing_hooks(self.language_model)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.language_model.set_output_embeddings(new_embeddings)

    def get_encoder(self, modality=None):
        return self.language_model.get_encoder() if modality is None else super().get_encoder(modality=modality)

    def get_decoder(self):
        return self.language_model.get_decoder()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # A class carries a single `_auto_class`; users also load with `AutoModel`, so name this class for it too.
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{__name__.rsplit('.', 1)[-1]}.{type(self).__name__}",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, quantization_config=None, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a local folder with truncated or corrupt weight files by
        name before anything is allocated (a folder without config.json is refused by the config).

        A bitsandbytes `quantization_config` without `llm_int8_skip_modules` quantizes the language model only, its
        head excepted as transformers does: the vision tower, Q-Former and projection are small next to a 7B LLM
        and keep the dtype they are loaded in.
        """
        folder = glob.escape(os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or ""))
        for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
            try:
                with safe_open(path, framework="pt"):  # checks every tensor's bytes against the header
                    pass
            except SafetensorError as error:
                raise OSError(f"{path} is truncated or corrupt ({error}); save or download it again.") from error
        for path in sorted(glob.glob(os.path.join(folder, "*.bin"))):
            with open(path, "rb") as file:  # a zip-format torch file whose end (the zip directory) is missing
                if file.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path):
                    raise OSError(f"{path} is truncated (its zip directory is missing); save or download it again.")
        if getattr(quantization_config, "llm_int8_skip_modules", False) is None:
            quantization_config = copy.deepcopy(quantization_config)
            quantization_config.llm_int8_skip_modules = [
                "vision_model", "qformer", "language_projection", "language_model.lm_head"
            ]
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def encode_images(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The vision tower's output (after its final LayerNorm), to reuse for any number of instructions.

        It does not depend on the instruction, so several questions about one image (dialogue turns, VQA sets,
        ranked choice) need it once: pass it to `forward`/`generate` as `image_embeds` instead of `pixel_values`.
        Equal images within `pixel_values` are encoded once.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)` or
                `(batch_size, frames, 3, height, width)`): the processor's `pixel_values`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, 1 + num_patches, vision_hidden_size)`, or
            `(batch_size, frames, 1 + num_patches, vision_hidden_size)` for videos (each frame is encoded alone).
        """
        if pixel_values.ndim not in (4, 5):
            raise ValueError(
                "pixel_values must have shape (batch, 3, height, width) for images or (batch, frames, 3, height, "
                f"width) for videos, got {tuple(pixel_values.shape)}."
            )
        image_embeds = self._encode_distinct(pixel_values.flatten(0, -4))  # (B*T, 1 + P, Cv)
        return image_embeds.unflatten(0, pixel_values.shape[:-3])

    def _encode_distinct(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The vision tower over (N, 3, H, W), once per distinct image: a batch of questions about one image holds
        it N times. Not while compiling (the distinct count is data-dependent) or in training mode (dropout)."""
        if pixel_values.shape[0] == 1 or self.vision_model.training or torch.compiler.is_compiling():
            return self.vision_model(pixel_values).last_hidden_state
        distinct, inverse = torch.unique(pixel_values.flatten(1), dim=0, return_inverse=True)
        if distinct.shape[0] == pixel_values.shape[0]:
            return self.vision_model(pixel_values).last_hidden_state
        return self.vision_model(distinct.view(-1, *pixel_values.shape[1:])).last_hidden_state[inverse]

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> InstructBlipImageFeaturesOutput:
        """Instruction-aware visual tokens for the language model.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)` or
                `(batch_size, frames, 3, height, width)`): images, or video frames (each frame is encoded alone).
            qformer_input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): the instruction
                in the Q-Former's vocabulary. Without it the queries see only the image (BLIP-2 behaviour).
            qformer_attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*).
            image_embeds (`torch.FloatTensor`, *optional*): [`encode_images`]' output, instead of `pixel_values`.
            kwargs: `output_hidden_states`, `output_attentions` (both towers record theirs) and `return_dict`.

        Returns:
            [`InstructBlipImageFeaturesOutput`]: `pooler_output` holds the visual tokens, of shape
            `(batch_size, frames * num_query_tokens, text_hidden_size)`.
        """
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass either pixel_values or image_embeds (from model.encode_images), not both.")
        # 1. The frozen image encoder; its output does not depend on the instruction.
        config = self.vision_model.config
        flags = ("output_hidden_states", "output_attentions")
        record = any(kwargs.get(flag, getattr(config, flag, False)) for flag in flags)
        if image_embeds is None and record:
            # Recording every image's hidden states and attention maps: each image through the tower.
            vision_outputs = self.vision_model(pixel_values.flatten(0, -4), return_dict=True, **kwargs)
            image_embeds = vision_outputs.last_hidden_state.unflatten(0, pixel_values.shape[:-3])
        else:
            image_embeds = self.encode_images(pixel_values) if image_embeds is None else image_embeds
            encoded = image_embeds.flatten(0, -3)
            vision_outputs = BaseModelOutputWithPooling(last_hidden_state=encoded, pooler_output=encoded[:, 0])
        batch_size = image_embeds.shape[0]
        frames = image_embeds.shape[1] if image_embeds.ndim == 4 else 1
        image_embeds = image_embeds.flatten(0, -3)  # (B*T, 1 + P, Cv)
        if frames > 1:
            # Every frame reads the same instruction.
            if qformer_input_ids is not None:
                qformer_input_ids = qformer_input_ids.repeat_interleave(frames, dim=0)
            if qformer_attention_mask is not None:
                qformer_attention_mask = qformer_attention_mask.repeat_interleave(frames, dim=0)
        if qformer_input_ids is not None and qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)

        # 2. The learned queries read the instruction (self-attention) and the image (cross-attention).
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        qformer_outputs = self.qformer(
            queries, image_embeds, qformer_input_ids, qformer_attention_mask, return_dict=True, **kwargs
        )
        query_outputs = qformer_outputs.last_hidden_state[:, : self.config.num_query_tokens]  # (B*T, Nq, Cq)
        # 3. Projected into the LLM's embedding space: one visual token per query and frame.
        features = self.language_projection(query_outputs.to(self.language_projection.weight.dtype))
        features = features.reshape(batch_size, frames * self.config.num_query_tokens, -1)  # (B, T*Nq, Clm)
        return InstructBlipImageFeaturesOutput(
            last_hidden_state=image_embeds,
            pooler_output=features,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            vision_outputs=vision_outputs,
            qformer_outputs=qformer_outputs,
        )

    def _placeholder_mask(self, input_ids, inputs_embeds) -> torch.BoolTensor:
        """(B, S): where the `<image>` placeholders are, read from `input_ids`, or without them found as the rows
        of `inputs_embeds` that equal the placeholder's embedding."""
        if input_ids is not None:
            return input_ids == self.config.image_token_index
        placeholder_id = torch.tensor(self.config.image_token_index, device=inputs_embeds.device)
        placeholder = self.get_input_embeddings()(placeholder_id).to(inputs_embeds.dtype)
        return (inputs_embeds == placeholder).all(dim=-1)

    def _embed_prompt(self, input_ids, image_features, inputs_embeds=None) -> torch.Tensor:
        """Language-model input embeddings with the `<image>` placeholders replaced by the image features.

        Every row must hold exactly as many placeholders as there are image features; anything else would shift
        features across rows, so it is an error.
        """
        if input_ids is None and inputs_embeds is None:
            raise ValueError("Pass input_ids (or inputs_embeds): they carry the prompt and the <image> placeholders.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        placeholders = self._placeholder_mask(input_ids, inputs_embeds)
        per_row = placeholders.sum(dim=1)
        expected = 0 if image_features is None else image_features.shape[1]
        image_token = self.config.image_token_index
        if image_features is None:
            message = f"input_ids contain <image> placeholders (id {image_token}) but no pixel_values or image_embeds."
        else:
            message = (
                f"Each row of input_ids must contain exactly {expected} <image> placeholders (id {image_token}): "
                f"num_query_tokens={self.config.num_query_tokens} per image or video frame; found "
                "{found}. Build the inputs with the model's processor."
            )
        # A check torch.compile traces (fullgraph) instead of a data-dependent branch.
        torch_compilable_check((per_row == expected).all(), lambda: message.format(found=per_row.tolist()))
        if image_features is None:
            return inputs_embeds
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(placeholders.unsqueeze(-1).expand_as(inputs_embeds), image_features)

    def _warn_if_fp16_t5(self):
        if not self.config.use_decoder_only_language_model and self.language_model.dtype == torch.float16:
            logger.warning_once(
                "The Flan-T5 language model runs in float16, where it is known to overflow into NaN or repeated "
                "garbage tokens; load it with dtype=torch.bfloat16 or torch.float32."
            )

    def _check_inputs(self, **inputs: torch.Tensor | None) -> None:
        """Refuse inputs that would fail deep inside torch or silently give wrong results, naming the argument,
        the shapes and the fix. `forward` and `generate` both call it first, so they refuse the same inputs."""
        given = {name: value for name, value in inputs.items() if value is not None}
        pixel_values, input_ids = given.get("pixel_values"), given.get("input_ids")

        def refuse(problem: str, fix: str):
            shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in given.items())
            raise ValueError(f"{problem} (got {shapes}). {fix}")

        if len({value.shape[0] for value in given.values()}) > 1:
            refuse("The inputs disagree on the batch size", "Give every input one row per example.")
        if any(value.shape[0] == 0 for value in given.values()):
            refuse("The batch is empty", "Pass at least one example.")
        prompt = input_ids if input_ids is not None else given.get("inputs_embeds")
        aligned = {"attention_mask": prompt, "qformer_attention_mask": given.get("qformer_input_ids")}
        if self.config.use_decoder_only_language_model:
            aligned["labels"] = input_ids  # decoder-only labels are not shifted
        for name, ids in aligned.items():
            if name in given and ids is not None and given[name].shape[:2] != ids.shape[:2]:
                refuse(f"{name} must have the shape of its ids", "Build the inputs with the processor.")
        vocabularies = {"input_ids": self.config.text_config, "qformer_input_ids": self.config.qformer_config}
        for name, config in vocabularies.items():
            ids = given.get(name)
            if ids is not None and (ids.is_floating_point() or ids.dtype == torch.bool):
                refuse(f"{name} must hold integer token ids, not {ids.dtype}", "Pass torch.long ids.")
            if ids is not None and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < config.vocab_size:
                refuse(f"{name} hold ids outside the vocabulary [0, {config.vocab_size})", "Use the model's tokenizers.")
            # Over-long text is an error, never silently cut: the processor truncates from the left, as LAVIS.
            ids = prompt if name == "input_ids" else ids
            limit = getattr(config, "max_position_embeddings", None)
            if ids is not None and limit is not None and ids.shape[1] > limit:
                refuse(
                    f"{name} has {ids.shape[1]} positions; the model reads at most {limit}",
                    "Shorten the instruction, or truncate it from the left as LAVIS does (the processor's "
                    "llm_max_length, qformer_max_length).",
                )
        if pixel_values is None:
            placeholders = input_ids is not None and (input_ids == self.config.image_token_index).any()
            if placeholders and "image_embeds" not in given:
                refuse("input_ids hold <image> placeholders but no pixel_values were given", "Pass pixel_values.")
            return
        if pixel_values.ndim not in (4, 5) or pixel_values.shape[-3] != 3:
            refuse("pixel_values must be (batch, 3, height, width) or (batch, frames, 3, height, width)",
                   "Build them with the processor, which makes every image RGB.")
        if pixel_values.ndim == 5 and pixel_values.shape[1] == 0:
            refuse("The videos in pixel_values have no frames", "Pass at least one frame per video.")
        if not pixel_values.is_floating_point():
            refuse(f"pixel_values must be normalized floats, not {pixel_values.dtype}",
                   "Build them with the processor (it rescales and normalizes the pixels).")
        if not torch.isfinite(pixel_values).all():
            refuse("pixel_values hold NaN or infinite values", "Check the images and their preprocessing.")

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        image_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> InstructBlipOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)` or
                `(batch_size, frames, 3, height, width)`): the processor's `pixel_values`.
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): the LLM prompt with
                `num_query_tokens` `<image>` placeholders per image or frame (the processor puts them first). For
                an encoder-decoder LLM this is the encoder input.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*).
            qformer_input_ids, qformer_attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`):
                the instruction in the Q-Former's vocabulary.
            inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, text_hidden_size)`,
                *optional*): replaces the embedding lookup of `input_ids`. The placeholders are read from
                `input_ids` when given, else found as the rows equal to the `<image>` token's embedding.
            labels (`torch.LongTensor`, *optional*): decoder-only: shape `(batch_size, sequence_length)`, aligned
                with `input_ids` and not shifted (the LLM shifts), -100 where no loss is taken (placeholders,
                instruction, padding). Encoder-decoder: the decoder targets, shape `(batch_size, target_length)`.
            decoder_input_ids, decoder_attention_mask (`torch.LongTensor`, *optional*): encoder-decoder only.
            image_embeds (`torch.FloatTensor`, *optional*): [`encode_images`]' output for these rows, instead of
                `pixel_values`: the vision tower is skipped, the Q-Former still reads each row's instruction.
            output_hidden_states (`bool`, *optional*): `False` skips the language model's hidden states, and with
                them `last_hidden_state`; `None` (the default, also what PEFT passes) and `True` keep them, because
                trainers with a fused LM head (TRL) need `last_hidden_state`. Under autograd every layer's output is
                kept for the backward pass anyway, so they cost memory only without gradients. `True` also records
                the vision tower's and the Q-Former's (in `vision_outputs` / `qformer_outputs`).
            return_dict (`bool`, *optional*): `False` returns a tuple of the non-`None` fields.
            kwargs: passed to the language model (`output_attentions`, `num_items_in_batch`, `use_cache`, ...);
                `output_attentions=True` also records the towers' attention maps, the Q-Former's cross-attention
                to the image included.
        """
        if not torch.compiler.is_compiling():  # data-dependent checks; a compiled graph keeps the placeholder check
            self._check_inputs(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                qformer_input_ids=qformer_input_ids, qformer_attention_mask=qformer_attention_mask,
                inputs_embeds=inputs_embeds, labels=labels, image_embeds=image_embeds,
            )
        self._warn_if_fp16_t5()
        image_outputs = InstructBlipImageFeaturesOutput()
        if pixel_values is not None or image_embeds is not None:
            image_outputs = self.get_image_features(
                pixel_values,
                qformer_input_ids,
                qformer_attention_mask,
                image_embeds=image_embeds,
                output_attentions=kwargs.get("output_attentions"),
                output_hidden_states=output_hidden_states,
            )
        inputs_embeds = self._embed_prompt(input_ids, image_outputs.pooler_output, inputs_embeds)

        decoder_only = self.config.use_decoder_only_language_model
        if not decoder_only:
            kwargs.update(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=labels,
            output_hidden_states=output_hidden_states is not False,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.hidden_states if decoder_only else outputs.decoder_hidden_states
        return InstructBlipOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            last_hidden_state=None if hidden_states is None else hidden_states[-1],
            image_features=image_outputs.pooler_output,
            image_outputs=image_outputs if pixel_values is not None or image_embeds is not None else None,
            vision_outputs=image_outputs.vision_outputs,
            qformer_outputs=image_outputs.qformer_outputs,
            language_model_outputs=outputs,
        )

    def _default_prompt_ids(self, batch_size: int, frames: int, device) -> torch.LongTensor:
        """Placeholders + the LLM's start token, as LAVIS builds for an empty prompt: bos for a decoder-only LLM,
        eos for T5 (its tokenizer turns "" into a lone `</s>`)."""
        text_config = self.config.text_config
        start = text_config.bos_token_id if self.config.use_decoder_only_language_model else text_config.eos_token_id
        ids = [self.config.image_token_index] * (frames * self.config.num_query_tokens)
        ids += [start] if isinstance(start, int) else []
        return torch.tensor([ids], device=device).expand(batch_size, -1)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        generation_config=None,
        image_embeds: torch.FloatTensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate text about the image(s); takes the processor's outputs plus any standard generation argument.

        The image features replace the `<image>` placeholders, then the language model's own `generate()` runs on
        the embeddings, so every decoding strategy, `GenerationConfig` and logits processor of `transformers`
        applies. Without `generation_config` the model's own (`generation_config.json`) is used. `image_embeds`
        ([`encode_images`]' output) can replace `pixel_values`, as in `forward`.

        The LLM receives only the embeddings, as in LAVIS, so logits processors (the repetition penalty) see the
        generated tokens alone, never the prompt.

        Returns:
            `torch.LongTensor` (or a `GenerateOutput` with `return_dict_in_generate=True`), by `transformers`'
            convention: for a decoder-only LLM, `input_ids` followed by the new tokens (the answer is
            `output[:, input_ids.shape[1]:]`; given `inputs_embeds` alone, the new tokens alone); for an
            encoder-decoder LLM, the decoder sequence (its start token, then the answer).
        """
        self._check_inputs(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
            qformer_input_ids=qformer_input_ids, qformer_attention_mask=qformer_attention_mask,
            image_embeds=image_embeds,
        )
        # The checkpoint's generation_config.json is loaded into this model; the LLM generates, so it must see it.
        self.language_model.generation_config = self.generation_config
        if pixel_values is None and image_embeds is None:
            return self.language_model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                generation_config=generation_config,
                **generate_kwargs,
            )
        self._warn_if_fp16_t5()
        image_features = self.get_image_features(
            pixel_values, qformer_input_ids, qformer_attention_mask, image_embeds=image_embeds
        ).pooler_output
        if input_ids is None and inputs_embeds is None:
            frames = image_features.shape[1] // self.config.num_query_tokens
            input_ids = self._default_prompt_ids(image_features.shape[0], frames, image_features.device)
        inputs_embeds = self._embed_prompt(input_ids, image_features, inputs_embeds)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        with warnings.catch_warnings():
            # transformers warns that embeddings-only generation penalises only new tokens: that is the intent.
            warnings.filterwarnings("ignore", message=".*apply the penalty only to newly generated tokens.*")
            output = self.language_model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                generation_config=generation_config,
                **generate_kwargs,
            )
        if self.config.use_decoder_only_language_model and input_ids is not None:
            output = _prepend_prompt(output, input_ids)
        return output


# The name config.json gives the class (`architectures`): unlike the class's own name, it is not also a class of
# `transformers`, so tools that look the architecture up there first (TRL) fall back to the `auto_map`.
HfInstructBlipForConditionalGeneration = InstructBlipForConditionalGeneration


def _prepend_prompt(output, input_ids: torch.LongTensor):
    """Put the prompt in front of embeddings-only generated sequences, one copy per returned sequence."""
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    prompts = input_ids.to(sequences.device).repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
    sequences = torch.cat([prompts, sequences], dim=1)
    if isinstance(output, torch.Tensor):
        return sequences
    output.sequences = sequences
    return output


__all__ = [
    "HfInstructBlipForConditionalGeneration",
    "InstructBlipForConditionalGeneration",
    "InstructBlipOutput",
    "InstructBlipPreTrainedModel",
    "InstructBlipQFormerModel",
    "InstructBlipVisionModel",
]
