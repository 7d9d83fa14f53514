"""Reading checkpoints without executing code and without holding whole files in memory.

LAVIS `.pth` files are pickles. They are opened with `torch.load(weights_only=True)`, which refuses any pickle that
needs code to rebuild; zip-format files are also memory-mapped, so a tensor costs memory only once it is read.
Safetensors LLM shards are read one tensor at a time with plain file reads (see `SafetensorsFile`).
"""

import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import ConversionError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict in a LAVIS checkpoint (`{"model": state_dict}` or a raw state dict) or an EVA ViT file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint {path} does not exist.")
    checkpoint = _torch_load(path)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise ConversionError(f"{path} holds a {type(state_dict).__name__}, expected a state dict.")
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{path}: these entries of the state dict are not tensors: {not_tensors}")
    return strip_module_prefix(state_dict)


def _is_zip_format(path: Path) -> bool:
    """Whether `path` is a torch >= 1.6 (zip-format) checkpoint; raises if it is one that was cut short."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        if file.read(4) == b"PK\x03\x04":
            raise ConversionError(
                f"{path} is truncated or corrupt: it starts like a torch checkpoint (zip format) but its end, the zip "
                "directory, is missing. Download or copy it again."
            )
    return False


def _torch_load(path: Path):
    is_zip = _is_zip_format(path)
    try:
        # mmap needs the zip format of torch >= 1.6; older (legacy) files are read into memory.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        if not str(error).startswith("Weights only load failed"):
            raise ConversionError(f"{path} is corrupt, not a torch checkpoint: {error}") from error
        raise ConversionError(
            f"Refusing to load {path}: it is a pickle that needs code to be rebuilt (torch.load(weights_only=True) "
            f"failed), and running it could execute arbitrary code. Load it yourself in a trusted environment and "
            f"re-save only its tensors with torch.save(state_dict, path).\nDetails: {str(error).splitlines()[0]}"
        ) from error
    except Exception as error:  # noqa: BLE001 - torch reports damaged files as OSError, RuntimeError, IndexError...
        raise ConversionError(f"{path} is truncated or corrupt: torch.load failed with {error!r}.") from error


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that DistributedDataParallel adds when a wrapped model is saved."""
    return {key.removeprefix("module."): tensor for key, tensor in state_dict.items()}


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_DTYPE_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


class SafetensorsFile:
    """One `.safetensors` file, read tensor by tensor.

    `safetensors.safe_open` memory-maps the file, and every page it touched stays resident until the handle is
    closed, so streaming a 10 GB shard through it costs 10 GB of RSS. Here each `read` copies just one tensor;
    `safe_open` only validates the file when it is opened.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            with safe_open(path, framework="pt"):  # checks every tensor's byte range and the file size
                pass
        except SafetensorError as error:
            raise ConversionError(f"{path} is truncated or corrupt ({error}). Download or copy it again.") from error
        with open(path, "rb") as file:
            (header_size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(header_size))
        header.pop("__metadata__", None)
        unknown = {entry["dtype"] for entry in header.values()} - _SAFETENSORS_DTYPES.keys()
        if unknown:
            raise ConversionError(f"{path} stores tensors of unsupported dtypes {sorted(unknown)}.")
        self._data_start = 8 + header_size
        self._entries = header

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return _SAFETENSORS_DTYPES[self._entries[key]["dtype"]]

    def read(self, key: str) -> torch.Tensor:
        begin, end = self._entries[key]["data_offsets"]
        if begin == end:
            return torch.empty(self.shape(key), dtype=self.dtype(key))
        buffer = bytearray(end - begin)
        with open(self.path, "rb") as file:
            file.seek(self._data_start + begin)
            read = file.readinto(buffer)
        if read != end - begin:
            raise ConversionError(f"{self.path} was truncated while converting: {key} is incomplete.")
        return torch.frombuffer(buffer, dtype=self.dtype(key)).reshape(self.shape(key))


class TorchFile:
    """One `pytorch_model*.bin` file (same interface as `SafetensorsFile`), memory-mapped anew for each tensor.

    A mapping kept open would keep every page read so far resident, as with `safe_open`; re-reading the small
    pickled index costs tens of milliseconds per tensor, against seconds to write the tensor.
    """

    def __init__(self, path: Path):
        if not _is_zip_format(path):
            raise ConversionError(f"{path} uses torch's legacy (pre-1.6) format; re-save it with torch.save.")
        self.path = path
        self._entries = {key: (tuple(tensor.shape), tensor.dtype) for key, tensor in load_state_dict(path).items()}

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key][1]

    def read(self, key: str) -> torch.Tensor:
        return load_state_dict(self.path)[key].clone()  # the copy outlives the mapping, which closes here


WeightFile = SafetensorsFile | TorchFile

# Hugging Face weight layouts in order of preference: (index of a sharded checkpoint, single file).
_WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def open_llm_weights(llm_dir: Path) -> list[WeightFile]:
    """The weight files of a Hugging Face model directory, sharded or not, safetensors preferred."""
    for index_name, single_name in _WEIGHT_LAYOUTS:
        if (llm_dir / index_name).is_file():
            return _open_indexed(llm_dir / index_name)
        if (llm_dir / single_name).is_file():
            return [_open_weight_file(llm_dir / single_name)]
    expected = ", ".join(name for layout in _WEIGHT_LAYOUTS for name in layout)
    raise ConversionError(f"LLM directory {llm_dir} holds none of the weight files {expected}.")


def _open_indexed(index_path: Path) -> list[WeightFile]:
    """The shards an index names, each checked to hold exactly the tensors the index assigns to it."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConversionError(f"{index_path} is corrupt: no readable weight_map ({error!r}).") from error
    listed = {}
    for key, name in weight_map.items():
        listed.setdefault(name, set()).add(key)
    files = [_open_weight_file(index_path.parent / name) for name in listed]  # shard order: first use in the index
    for file in files:
        held = set(file.names())
        if held != listed[file.path.name]:
            absent, extra = sorted(listed[file.path.name] - held), sorted(held - listed[file.path.name])
            raise ConversionError(
                f"{file.path} does not hold what {index_path.name} lists for it: missing {absent[:5]}, "
                f"not listed {extra[:5]}."
            )
    return files


def _open_weight_file(path: Path) -> WeightFile:
    if not path.is_file():
        raise ConversionError(f"LLM weight file {path} is listed in its directory's index but missing.")
    return SafetensorsFile(path) if path.suffix == ".safetensors" else TorchFile(path)


# What a conversion needs from a Hub repo of the LLM: configs, tokenizer files and one weight format.
_LLM_METADATA_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja"]


def resolve_llm(path_or_repo: str) -> Path:
    """A local model directory, or the snapshot of a Hub repo with its tokenizer and one format of weights."""
    local = Path(path_or_repo)
    if local.is_dir():
        return local
    from huggingface_hub import list_repo_files, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        files = list_repo_files(path_or_repo)
    except (HfHubHTTPError, HFValidationError, OSError) as error:
        raise ConversionError(f"--llm {path_or_repo!r} is neither a local directory nor a Hub repo: {error}") from error
    # Download only one weight format: released repos often carry both .bin and .safetensors (and TF/Flax).
    weights = ["*.safetensors"] if any(name.endswith(".safetensors") for name in files) else ["*.bin"]
    return Path(snapshot_download(path_or_repo, allow_patterns=_LLM_METADATA_PATTERNS + weights))
