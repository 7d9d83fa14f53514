"""The Hugging Face ecosystem: Auto classes, save/load, official checkpoints, remote code, pipeline, the Hub."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

import tiny
from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    """A tiny Vicuna-style checkpoint saved with its processor, as `save_pretrained` writes it."""
    directory = tmp_path_factory.mktemp("llama")
    model, processor = tiny.model("llama"), tiny.processor("llama")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, model, processor


def answers(model, processor, images, texts, **generate_kwargs):
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    output_ids = model.generate(**inputs, **generate_kwargs)
    if model.config.use_decoder_only_language_model:  # the prompt, then the answer
        output_ids = output_ids[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(output_ids, skip_special_tokens=True)


def test_auto_classes_resolve_to_this_package(saved_llama):
    directory, model, _ = saved_llama
    assert isinstance(AutoConfig.from_pretrained(directory), InstructBlipConfig)
    for auto_class in (AutoModel, AutoModelForImageTextToText, transformers.AutoModelForVisualQuestionAnswering):
        loaded, info = auto_class.from_pretrained(directory, output_loading_info=True)
        assert type(loaded) is InstructBlipForConditionalGeneration
        assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(AutoProcessor.from_pretrained(directory)) is InstructBlipProcessor


def test_save_and_load_round_trip_is_exact(saved_llama):
    directory, model, processor = saved_llama
    reloaded = InstructBlipForConditionalGeneration.from_pretrained(directory)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    images, texts = [tiny.image(0), tiny.image(1)], ["what is it?", "hi"]
    assert answers(reloaded, processor, images, texts, max_new_tokens=5) == answers(
        model, processor, images, texts, max_new_tokens=5
    )


def test_saved_folder_carries_code_and_auto_map(saved_llama):
    directory, _, _ = saved_llama
    files = {path.name for path in directory.iterdir()}
    assert {"configuration_instructblip.py", "modeling_instructblip.py", "processing_instructblip.py"} <= files
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_instructblip.InstructBlipConfig",
        "AutoModel": "modeling_instructblip.InstructBlipForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_instructblip.InstructBlipForConditionalGeneration",
    }
    processor_config = json.loads((directory / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_instructblip.InstructBlipProcessor"}


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_loads_an_official_transformers_checkpoint(kind, tmp_path):
    """A checkpoint written by transformers' own InstructBLIP (model_type "instructblip") loads key for key."""
    torch.manual_seed(0)
    official = transformers.InstructBlipForConditionalGeneration(
        transformers.InstructBlipConfig(**tiny.config_kwargs(kind))
    ).eval()
    if kind == "t5":
        tiny.untie_lm_head(official)  # Flan-T5: lm_head is not `shared`
        torch.nn.init.normal_(official.language_model.lm_head.weight, std=0.5)
    official.save_pretrained(tmp_path)
    ours, info = InstructBlipForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    for name, tensor in official.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    assert ours.vision_model.post_layernorm.eps == 1e-5  # LAVIS's value, not the port's 1e-6 (documented)
    ours.vision_model.post_layernorm.eps = 1e-6
    inputs = tiny.processor(kind)(images=tiny.image(0), text="what is it?", return_tensors="pt")
    if kind == "t5":
        inputs["decoder_input_ids"] = torch.tensor([[0, 7]])
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, official(**inputs).logits, rtol=0, atol=1e-5)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys

    class Blocker:  # this process must work without the package
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_instructblip":
                raise ImportError("hf_instructblip is deliberately not importable here")

    sys.meta_path.insert(0, Blocker())
    import torch
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    directory, reference = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        model = auto_class.from_pretrained(directory, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    inputs = processor(images=reference["image"], text="what is it?", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference["logits"])
    output_ids = model.generate(**inputs, max_new_tokens=5)[:, inputs["input_ids"].shape[1]:]
    answer = processor.batch_decode(output_ids, skip_special_tokens=True)[0]
    pipe = pipeline("image-text-to-text", model=directory, trust_remote_code=True)
    out = pipe(images=reference["image"], text="what is it?", max_new_tokens=5, return_full_text=False)
    assert out[0]["generated_text"].strip() == answer, (out, answer)
    assert "hf_instructblip" not in sys.modules
    print("REMOTE CODE OK")
    """
)


def test_trust_remote_code_loads_where_the_package_is_not_installed(saved_llama, tmp_path):
    directory, model, processor = saved_llama
    image = tiny.image(5)
    with torch.no_grad():
        logits = model(**processor(images=image, text="what is it?", return_tensors="pt")).logits
    torch.save({"image": torch.tensor(list(image.tobytes())), "logits": logits}, tmp_path / "reference.pt")
    script = REMOTE_CODE_SCRIPT.replace(
        'reference["image"]', 'PIL.Image.frombytes("RGB", (40, 40), bytes(reference["image"].tolist()))'
    ).replace("import torch\n", "import PIL.Image\nimport torch\n", 1)
    result = subprocess.run(
        [sys.executable, "-c", script, str(directory), str(tmp_path / "reference.pt")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE CODE OK" in result.stdout


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_pipeline_answers_exactly(kind, tmp_path):
    model, processor = tiny.model(kind), tiny.processor(kind)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = pipeline("image-text-to-text", model=str(tmp_path))
    images, texts = [tiny.image(0), tiny.image(1)], ["what is it?", "how many shapes?"]
    expected = answers(model, processor, images, texts, max_new_tokens=6)
    # The pipeline cuts the decoded prompt off the decoded output; for a decoder-only LLM the answer keeps the space
    # that separates it from the prompt (as with every LLaMA-based model in transformers).
    separator = " " if kind == "llama" else ""
    batched = pipe(images=images, text=texts, max_new_tokens=6, return_full_text=False, batch_size=2)
    assert [out["generated_text"] for out in batched] == [separator + answer for answer in expected]
    full = pipe(images=images[0], text=texts[0], max_new_tokens=6)
    assert full[0]["generated_text"] == texts[0] + separator + expected[0]
    chat = [{"role": "user", "content": [{"type": "image", "image": images[1]}, {"type": "text", "text": texts[1]}]}]
    reply = pipe(text=chat, max_new_tokens=6)[0]["generated_text"][-1]
    assert reply == {"role": "assistant", "content": separator + expected[1]}


def test_push_to_hub_and_load_by_repo_id(saved_llama):
    """`AutoModel.from_pretrained("org/instructblip-vicuna7b")` against a Hub (a local fake one here)."""
    _, model, processor = saved_llama
    repo_id = "org/instructblip-vicuna7b"
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)
    loaded, info = AutoModel.from_pretrained(repo_id, output_loading_info=True)
    assert type(loaded) is InstructBlipForConditionalGeneration and not any(info.values())
    hub_processor = AutoProcessor.from_pretrained(repo_id)
    images, texts = [tiny.image(2)], ["what is it?"]
    assert answers(loaded, hub_processor, images, texts, max_new_tokens=4) == answers(
        model, processor, images, texts, max_new_tokens=4
    )
    pipe = pipeline("image-text-to-text", model=repo_id)
    answer = pipe(images=images[0], text=texts[0], max_new_tokens=4, return_full_text=False)[0]["generated_text"]
    assert answer == " " + answers(model, processor, images, texts, max_new_tokens=4)[0]
