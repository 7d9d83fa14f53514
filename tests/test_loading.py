"""Loading never guesses: a damaged or incomplete checkpoint folder is refused by name, before the model is built."""

import shutil
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file

from hf_instructblip import InstructBlipForConditionalGeneration, InstructBlipProcessor


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved")
    tiny.model().save_pretrained(folder)
    tiny.processor().save_pretrained(folder)
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])  # a JSON file cut short


MODEL, PROCESSOR = InstructBlipForConditionalGeneration, InstructBlipProcessor
DAMAGE = {  # what is damaged → (file, how, which loader must refuse it, the error)
    "no config.json": ("config.json", Path.unlink, MODEL, "has no config.json"),
    "truncated weights": ("model.safetensors", truncate, MODEL, r"model.safetensors is truncated or corrupt"),
    "truncated .bin weights": ("pytorch_model.bin", truncate, MODEL, r"pytorch_model.bin is truncated"),
    "corrupt tokenizer": ("tokenizer.json", corrupt, PROCESSOR, r"tokenizer.json \(LLM tokenizer\) is corrupt"),
    "corrupt Q-Former tokenizer": (
        "qformer_tokenizer/tokenizer.json", corrupt, PROCESSOR, r"tokenizer.json \(Q-Former tokenizer\) is corrupt"
    ),
    "no tokenizer": ("tokenizer.json", Path.unlink, PROCESSOR, r"The LLM tokenizer is missing: .* holds none of"),
    "no Q-Former tokenizer": (
        "qformer_tokenizer/tokenizer.json", Path.unlink, PROCESSOR, r"Q-Former tokenizer is missing: "
    ),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_folder_is_refused_by_name_before_anything_is_built(saved, tmp_path, monkeypatch, case):
    name, damage, loader, message = DAMAGE[case]
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    if name == "pytorch_model.bin":  # the older weight format, still found on the Hub
        torch.save(load_file(folder / "model.safetensors"), folder / name)
        (folder / "model.safetensors").unlink()
    damage(folder / name)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the damaged file was found")

    monkeypatch.setattr(MODEL, "__init__", no_model)
    with pytest.raises(OSError, match=message):
        loader.from_pretrained(folder)


def test_an_intact_folder_loads(saved):
    model = InstructBlipForConditionalGeneration.from_pretrained(saved)
    processor = InstructBlipProcessor.from_pretrained(saved)
    assert torch.equal(model.query_tokens, tiny.model().query_tokens)
    assert processor.qformer_tokenizer.convert_tokens_to_ids("[DEC]") == len(tiny.bert_tokenizer()) - 1
