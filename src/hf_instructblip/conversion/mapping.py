"""LAVIS parameter names → hf_instructblip parameter names, and the strict check of the result.

The target layout is that of `transformers`' InstructBLIP (`vision_model`, `query_tokens`, `qformer`,
`language_projection`, `language_model`), so one mapping serves both.
"""

import re

import torch

from .errors import ConversionError
from .families import FAMILIES, LlmFamily

# LAVIS saves buffers that the HF modules recompute (Q-Former `position_ids`, LLaMA rotary `inv_freq`).
IGNORED_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")

# (LAVIS prefix, HF prefix): the first matching prefix of a key is replaced.
_IMAGE_SIDE_RENAMES = (
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
    ("visual_encoder.blocks.", "vision_model.encoder.layers."),
    ("ln_vision.", "vision_model.post_layernorm."),
    ("Qformer.bert.embeddings.LayerNorm.", "qformer.embeddings.layernorm."),
    ("Qformer.bert.", "qformer."),
    ("query_tokens", "query_tokens"),
)
PREFIX_RENAMES = (
    *_IMAGE_SIDE_RENAMES,
    *((family.projection_prefix, "language_projection.") for family in FAMILIES),
    *((family.llm_prefix, "language_model.") for family in FAMILIES),
)

# (LAVIS infix, HF infix) inside vision blocks and Q-Former layers; LLM keys are HF names already.
INFIX_RENAMES = (
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    (".attn.qkv.", ".self_attn.qkv."),
    (".attn.proj.", ".self_attn.projection."),
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
)

_EVA_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def drop_ignored_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor for key, tensor in state_dict.items() if not key.endswith(IGNORED_SUFFIXES)}


def select_eva_blocks(vit_state_dict: dict[str, torch.Tensor], num_layers: int | None) -> dict[str, torch.Tensor]:
    """The part of a raw EVA-CLIP ViT file that LAVIS builds, under LAVIS's `visual_encoder.` prefix.

    LAVIS instantiates all blocks but the last of EVA-CLIP-g and no final `norm` (`ln_vision` plays that role), and
    loads the file non-strictly, so the last block and `norm.*` are ignored. A file without `norm.*` is taken to
    hold exactly the blocks to use. `num_layers` overrides the count.
    """
    block_ids = {int(match[1]) for key in vit_state_dict if (match := _EVA_BLOCK.match(key))}
    if block_ids != set(range(len(block_ids))):
        raise ConversionError(f"ViT checkpoint: block indices are not 0..N-1: {sorted(block_ids)}")
    has_final_norm = any(key.startswith("norm.") for key in vit_state_dict)
    if num_layers is None:
        num_layers = len(block_ids) - 1 if has_final_norm else len(block_ids)
    if not 0 < num_layers <= len(block_ids):
        raise ConversionError(f"--vision-layers {num_layers}: the ViT checkpoint has {len(block_ids)} blocks.")

    def used(key: str) -> bool:
        match = _EVA_BLOCK.match(key)
        return not key.startswith("norm.") and (match is None or int(match[1]) < num_layers)

    return {f"visual_encoder.{key}": tensor for key, tensor in vit_state_dict.items() if used(key)}


def fuse_qv_biases(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EVA attention learns query and value biases only: `attn.q_bias` and `attn.v_bias` become the bias of the
    fused qkv projection, `cat(q_bias, zeros, v_bias)`, exactly what EVA's forward builds on every call."""
    fused = dict(state_dict)
    for q_key in [key for key in state_dict if key.endswith(".attn.q_bias")]:
        block = q_key.removesuffix(".q_bias")
        v_key = f"{block}.v_bias"
        if v_key not in state_dict:
            raise ConversionError(f"{q_key} has no matching {v_key}.")
        q_bias, v_bias = fused.pop(q_key), fused.pop(v_key)
        fused[f"{block}.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
    orphans = sorted(key for key in fused if key.endswith(".attn.v_bias"))
    if orphans:
        raise ConversionError(f"Value biases without query biases: {orphans}")
    return fused


def rename_key(lavis_key: str) -> str:
    """The HF name of a LAVIS parameter; a key no rule knows is returned unchanged (the strict check reports it)."""
    for lavis_prefix, hf_prefix in PREFIX_RENAMES:
        if lavis_key.startswith(lavis_prefix):
            key = hf_prefix + lavis_key.removeprefix(lavis_prefix)
            break
    else:
        return lavis_key
    if key.startswith(("vision_model.", "qformer.")):
        for lavis_infix, hf_infix in INFIX_RENAMES:
            key = key.replace(lavis_infix, hf_infix)
    return key


def lavis_name(key: str, family: LlmFamily) -> str:
    """Where the converter looks for the tensor `key` (an HF name): its LAVIS name, or the LLM's own files."""
    if key.startswith("language_model."):
        return f"{key.removeprefix('language_model.')} of the --llm weights"
    if key.endswith(".self_attn.qkv.bias"):  # fused from EVA's q and v biases
        block = lavis_name(key.removesuffix("bias") + "weight", family).removesuffix("qkv.weight")
        return f"{block}q_bias + {block}v_bias"
    renames = [*_IMAGE_SIDE_RENAMES, (family.projection_prefix, "language_projection.")]
    for lavis_prefix, hf_prefix in sorted(renames, key=lambda pair: -len(pair[1])):
        if key.startswith(hf_prefix):
            lavis_key = lavis_prefix + key.removeprefix(hf_prefix)
            for lavis_infix, hf_infix in INFIX_RENAMES:
                lavis_key = lavis_key.replace(hf_infix, lavis_infix)
            return lavis_key
    return key


def rename_state_dict(lavis_state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """HF-named tensors, and for each HF name the LAVIS name it came from (for error messages)."""
    fused = fuse_qv_biases(lavis_state_dict)
    renamed, origins = {}, {}
    for lavis_key, tensor in fused.items():
        key = rename_key(lavis_key)
        if key in renamed:
            raise ConversionError(f"{origins[key]} and {lavis_key} both map to {key}.")
        renamed[key], origins[key] = tensor, lavis_key
    return renamed, origins


def check_state_dict(
    shapes: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    optional: set[str],
    origins: dict[str, str],
    family: LlmFamily,
    inputs: str,
) -> None:
    """Raise unless `shapes` names exactly the `expected` tensors (those in `optional` may be absent) with equal
    shapes. The error names the `inputs` and lists every offending key under its new name and where it came from
    (`origins`: the LAVIS name or LLM file of each tensor given) or, for a missing one, where it was looked for."""

    def named(key: str) -> str:
        return f"{key} (from {origins[key]})" if origins[key] != key else f"{key} (no conversion rule renames it)"

    missing = sorted(f"{key} (LAVIS: {lavis_name(key, family)})" for key in expected.keys() - shapes.keys() - optional)
    unexpected = sorted(named(key) for key in shapes.keys() - expected.keys())
    mismatched = sorted(
        f"{named(key)}: checkpoint {list(shapes[key])} vs model {list(expected[key])}"
        for key in shapes.keys() & expected.keys()
        if tuple(shapes[key]) != tuple(expected[key])
    )
    problems = [
        f"{title} ({len(keys)}):\n  " + "\n  ".join(keys)
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        raise ConversionError(f"The weights of {inputs} do not match the model:\n" + "\n".join(problems))
