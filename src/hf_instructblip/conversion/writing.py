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


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Keys grouped in order into shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    shards, current, current_bytes = [], [], 0
    for key, size in sizes.items():
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(key)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def write_safetensors(path: Path, tensors: dict[str, LazyTensor], dtypes: dict[str, torch.dtype]) -> None:
    """A safetensors file written header first, then each tensor as it is loaded."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, tensor in tensors.items():
        size = _nbytes(tensor.shape, dtypes[key])
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
    output_dir: Path, tensors: dict[str, LazyTensor], dtypes: dict[str, torch.dtype], max_shard_bytes: int
) -> list[Path]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json`."""
    sizes = {key: _nbytes(tensor.shape, dtypes[key]) for key, tensor in tensors.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        weight_map = {key: name for name, keys in zip(names, shards) for key in keys}
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name, keys in zip(names, shards):
        write_safetensors(output_dir / name, {key: tensors[key] for key in keys}, dtypes)
    return [output_dir / name for name in names]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def model_card(sources: dict[str, list[Path]], llm: str, variant: str | None, notes: list[str]) -> str:
    """README.md of the converted model: where every weight came from, with checksums."""
    rows = "\n".join(
        f"| {role} | `{path.name}` | `{sha256(path)}` |" for role, paths in sources.items() for path in paths
    )
    title = f"InstructBLIP ({variant})" if variant else "InstructBLIP"
    notes_text = "".join(f"- {note}\n" for note in notes)
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- instructblip
- hf_instructblip
---

# {title}, converted from LAVIS

Converted from Salesforce LAVIS weights with `conversion/convert_lavis_to_hf.py` of the `hf_instructblip`
package. The language model is `{llm}`.

## Sources

| role | file | sha256 |
|---|---|---|
{rows}

## Conversion notes

{notes_text}
## Usage

```python
from hf_instructblip import InstructBlipForConditionalGeneration, InstructBlipProcessor

model = InstructBlipForConditionalGeneration.from_pretrained(MODEL_DIR)
processor = InstructBlipProcessor.from_pretrained(MODEL_DIR)
inputs = processor(images=image, text="What is unusual about this image?", return_tensors="pt")
output_ids = model.generate(**inputs)  # LAVIS's defaults: beam search (5 beams), repetition penalty 1.5
if model.config.use_decoder_only_language_model:  # the prompt, then the answer
    output_ids = output_ids[:, inputs["input_ids"].shape[1]:]
print(processor.batch_decode(output_ids, skip_special_tokens=True))  # the answer alone
```

Without the package installed, load with `AutoModelForImageTextToText.from_pretrained(MODEL_DIR,
trust_remote_code=True)` and `AutoProcessor.from_pretrained(MODEL_DIR, trust_remote_code=True)`.
"""
