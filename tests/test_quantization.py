"""bitsandbytes 8/4-bit loading quantizes the language model only; runs where bitsandbytes has a backend (its CPU
backend included), skips elsewhere."""

import pytest
import torch

import tiny
from hf_instructblip import InstructBlipForConditionalGeneration

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes)")
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402


QUANTIZED_LINEAR = {"8bit": bnb.nn.Linear8bitLt, "4bit": bnb.nn.Linear4bit}
# bitsandbytes' CPU 4-bit kernel works in blocks of 64 inputs and 32 outputs: a wider LLM than the usual one.
TEXT_CONFIG = {**tiny.config_kwargs("llama")["text_config"], "hidden_size": 64, "intermediate_size": 128, "head_dim": 16}


def skip_unless_bitsandbytes_runs(bits, folder):
    """A plain LLaMA of the same shape through bitsandbytes, our code not involved: no backend here → skip."""
    LlamaForCausalLM(LlamaConfig(**TEXT_CONFIG)).save_pretrained(folder)
    try:
        llm = LlamaForCausalLM.from_pretrained(folder, quantization_config=BitsAndBytesConfig(**{f"load_in_{bits}": True}))
        llm(torch.tensor([[1, 2, 3]]))
    except Exception as error:  # whatever the missing backend raises
        pytest.skip(f"bitsandbytes cannot run {bits} on this machine: {type(error).__name__}: {error}")


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_only_the_language_model_is_quantized(tmp_path, bits):
    skip_unless_bitsandbytes_runs(bits, tmp_path / "llama")
    tiny.model("llama", text_config=TEXT_CONFIG).save_pretrained(tmp_path / "instructblip")
    config = BitsAndBytesConfig(**{f"load_in_{bits}": True})
    quantized = InstructBlipForConditionalGeneration.from_pretrained(
        tmp_path / "instructblip", quantization_config=config, dtype=torch.bfloat16
    )
    assert config.llm_int8_skip_modules is None  # the caller's config is not modified
    layers = dict(quantized.named_modules())
    assert isinstance(layers["language_model.model.layers.0.self_attn.q_proj"], QUANTIZED_LINEAR[bits])
    assert not isinstance(layers["language_model.lm_head"], QUANTIZED_LINEAR[bits])
    for prefix in ("vision_model.", "qformer.", "language_projection"):
        linears = [module for name, module in layers.items() if name.startswith(prefix)
                   and isinstance(module, torch.nn.Linear)]
        assert linears and not any(isinstance(module, QUANTIZED_LINEAR[bits]) for module in linears), prefix
        assert all(module.weight.dtype == torch.bfloat16 for module in linears), prefix
    inputs = tiny.processor("llama")(images=tiny.image(0), text="what is it?", return_tensors="pt")
    output_ids = quantized.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output_ids.shape == (1, inputs["input_ids"].shape[1] + 3)  # the prompt, then the answer
