"""Synthetic weights under the exact names Salesforce LAVIS saves (lavis-original.md §2.2-2.3), at any size.

Shared by the conversion tests (tiny sizes) and the conversion memory benchmark (real ViT-g / Q-Former sizes).
Every tensor is random, so a tensor found in the converted model proves where it came from.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LavisDims:
    vision_width: int = 1408
    vision_mlp: int = 6144
    vit_file_blocks: int = 40  # EVA-CLIP-g; LAVIS builds all but the last
    image_size: int = 224
    patch_size: int = 14
    qformer_width: int = 768
    qformer_mlp: int = 3072
    qformer_layers: int = 12
    qformer_vocab: int = 30523  # bert-base-uncased + "[DEC]"
    qformer_positions: int = 512
    query_tokens: int = 32
    llm_width: int = 4096


def _random(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype).normal_(0, 0.02)


def eva_block_weights(dims: LavisDims, block: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    width, mlp = dims.vision_width, dims.vision_mlp
    shapes = {
        "norm1.weight": (width,),
        "norm1.bias": (width,),
        "attn.q_bias": (width,),
        "attn.v_bias": (width,),
        "attn.qkv.weight": (3 * width, width),  # no qkv.bias: EVA learns q and v biases only
        "attn.proj.weight": (width, width),
        "attn.proj.bias": (width,),
        "norm2.weight": (width,),
        "norm2.bias": (width,),
        "mlp.fc1.weight": (mlp, width),
        "mlp.fc1.bias": (mlp,),
        "mlp.fc2.weight": (width, mlp),
        "mlp.fc2.bias": (width,),
    }
    return {f"blocks.{block}.{name}": _random(*shape, dtype=dtype) for name, shape in shapes.items()}


def eva_vit_file(dims: LavisDims, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A raw `eva_vit_g.pth` state dict: no prefix, all blocks, and the final `norm` LAVIS ignores."""
    width, grid = dims.vision_width, dims.image_size // dims.patch_size
    weights = {
        "cls_token": _random(1, 1, width, dtype=dtype),
        "pos_embed": _random(1, grid * grid + 1, width, dtype=dtype),
        "patch_embed.proj.weight": _random(width, 3, dims.patch_size, dims.patch_size, dtype=dtype),
        "patch_embed.proj.bias": _random(width, dtype=dtype),
        "norm.weight": _random(width, dtype=dtype),
        "norm.bias": _random(width, dtype=dtype),
    }
    for block in range(dims.vit_file_blocks):
        weights.update(eva_block_weights(dims, block, dtype))
    return weights


def visual_encoder_weights(dims: LavisDims) -> dict[str, torch.Tensor]:
    """`visual_encoder.*` as a LAVIS model with a trainable ViT saves it: the blocks LAVIS built, no `norm`."""
    weights = eva_vit_file(dims)
    return {
        f"visual_encoder.{key}": tensor
        for key, tensor in weights.items()
        if not key.startswith(("norm.", f"blocks.{dims.vit_file_blocks - 1}."))
    }


def _linear(prefix: str, out_features: int, in_features: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": _random(out_features, in_features, dtype=torch.float32),
        f"{prefix}.bias": _random(out_features, dtype=torch.float32),
    }


def _layer_norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + _random(width, dtype=torch.float32),
        f"{prefix}.bias": _random(width, dtype=torch.float32),
    }


def qformer_weights(dims: LavisDims) -> dict[str, torch.Tensor]:
    """`Qformer.bert.*` with InstructBLIP's text input (word/position embeddings and text FFN kept, no `cls`);
    cross-attention in every 2nd layer from layer 0; the persistent `position_ids` buffer LAVIS saves."""
    width, mlp = dims.qformer_width, dims.qformer_mlp
    embeddings = "Qformer.bert.embeddings"
    weights = {
        f"{embeddings}.position_ids": torch.arange(dims.qformer_positions).unsqueeze(0),
        f"{embeddings}.word_embeddings.weight": _random(dims.qformer_vocab, width, dtype=torch.float32),
        f"{embeddings}.position_embeddings.weight": _random(dims.qformer_positions, width, dtype=torch.float32),
        **_layer_norm(f"{embeddings}.LayerNorm", width),
    }
    for index in range(dims.qformer_layers):
        layer = f"Qformer.bert.encoder.layer.{index}"
        for name in ("query", "key", "value"):
            weights.update(_linear(f"{layer}.attention.self.{name}", width, width))
        weights.update(_linear(f"{layer}.attention.output.dense", width, width))
        weights.update(_layer_norm(f"{layer}.attention.output.LayerNorm", width))
        if index % 2 == 0:
            weights.update(_linear(f"{layer}.crossattention.self.query", width, width))
            weights.update(_linear(f"{layer}.crossattention.self.key", width, dims.vision_width))
            weights.update(_linear(f"{layer}.crossattention.self.value", width, dims.vision_width))
            weights.update(_linear(f"{layer}.crossattention.output.dense", width, width))
            weights.update(_layer_norm(f"{layer}.crossattention.output.LayerNorm", width))
        for suffix in ("", "_query"):
            weights.update(_linear(f"{layer}.intermediate{suffix}.dense", mlp, width))
            weights.update(_linear(f"{layer}.output{suffix}.dense", width, mlp))
            weights.update(_layer_norm(f"{layer}.output{suffix}.LayerNorm", width))
    return weights


def trimmed_checkpoint(dims: LavisDims, llm: str) -> dict[str, torch.Tensor]:
    """What LAVIS's runner saves for InstructBLIP with the ViT and LLM frozen: the trainable parameters
    (queries, `ln_vision`, Q-Former, projection) plus buffers. `llm` is `"vicuna"` or `"t5"`."""
    projection = "llm_proj" if llm == "vicuna" else "t5_proj"
    return {
        "query_tokens": _random(1, dims.query_tokens, dims.qformer_width, dtype=torch.float32),
        **_layer_norm("ln_vision", dims.vision_width),
        **qformer_weights(dims),
        **_linear(projection, dims.llm_width, dims.qformer_width),
    }
