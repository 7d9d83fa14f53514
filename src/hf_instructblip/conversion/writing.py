"""Streaming output: sharded safetensors written one tensor at a time, and the model card.

Every shard's layout is planned from shapes alone, so its header is written first and each tensor is loaded,
cast, written and freed in turn. The only weights resident throughout are the ones already in memory (vision
tower and Q-Former); the LLM passes through one tensor at a time and is never held twice.
"""

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard, split_torch_state_dict_into_shards

from ..model_card import model_card

from .loading import SAFETENSORS_DTYPE_NAMES


@dataclass(frozen=True)
class LazyTensor:
    """A tensor to write: its shape and dtype now, its values on `load()`. `source` names where it comes from."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]
    source: str

    @classmethod
    def of(cls, tensor: torch.Tensor, source: str) -> "LazyTensor":
        return cls(tuple(tensor.shape), tensor.dtype, lambda: tensor, source)


def output_dtype(key: str, tensor: LazyTensor, dtype: torch.dtype, keep_in_fp32: set[str]) -> torch.dtype:
    """`dtype` for floating tensors, except in modules the model keeps in float32 (e.g. `query_tokens`)."""
    if not tensor.dtype.is_floating_point:
        return tensor.dtype
    return torch.float32 if keep_in_fp32 & set(key.split(".")) else dtype


def write_safetensors(path: Path, tensors: dict[str, LazyTensor], dtypes: dict[str, torch.dtype]) -> None:
    """A safetensors file written header first, then each tensor as it is loaded.

    `safetensors.torch.save_file` needs the whole shard in memory at once; this writer holds one tensor.
    """
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, tensor in tensors.items():
        size = torch.Size(tensor.shape).numel() * dtypes[key].itemsize
        header[key] = {
            "dtype": SAFETENSORS_DTYPE_NAMES[dtypes[key]],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for key, tensor in tensors.items():
            values = tensor.load().to(dtypes[key]).contiguous()
            if tuple(values.shape) != tensor.shape:
                raise RuntimeError(f"{key} loaded with shape {list(values.shape)}, planned {list(tensor.shape)}.")
            file.write(values.reshape(-1).view(torch.uint8).numpy().data)
            del values


def write_weights(
    output_dir: Path, tensors: dict[str, LazyTensor], dtypes: dict[str, torch.dtype], max_shard_size: int | str
) -> list[Path]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json`,
    laid out by `huggingface_hub`'s shard planner from shapes alone (meta tensors)."""
    planned = {key: torch.empty(tensor.shape, dtype=dtypes[key], device="meta") for key, tensor in tensors.items()}
    split = split_torch_state_dict_into_shards(planned, max_shard_size=max_shard_size)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name, keys in split.filename_to_tensors.items():
        write_safetensors(output_dir / name, {key: tensors[key] for key in keys}, dtypes)
    return [output_dir / name for name in split.filename_to_tensors]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def converted_model_card(
    sources: dict[str, list[Path]], llm: str, variant: str | None, notes: list[str], output_dir: Path, decoder_only: bool
) -> ModelCard:
    """README.md of the converted model: where every weight came from, with checksums; the LLM as `base_model`
    when it was given as a Hub repo. The license is left out: it is the LLM's and LAVIS's, which the converter
    cannot know."""
    rows = "\n".join(
        f"| {role} | `{path.name}` | `{sha256(path)}` |" for role, paths in sources.items() for path in paths
    )
    title = f"InstructBLIP ({variant})" if variant else "InstructBLIP"
    notes_text = "".join(f"- {note}\n" for note in notes)
    body = f"""# {title}, converted from LAVIS

Converted from Salesforce LAVIS weights with `python -m hf_instructblip.conversion` of the `hf_instructblip`
package. The language model is `{llm}`.

## Sources

| role | file | sha256 |
|---|---|---|
{rows}

## Conversion notes

{notes_text}"""
    return model_card(
        body,
        model_id=str(output_dir),
        decoder_only=decoder_only,
        base_model=None if Path(llm).exists() else llm,
        tags=["lavis", variant] if variant else ["lavis"],
    )
