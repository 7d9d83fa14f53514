"""LAVIS → hf_instructblip conversion, end to end on tiny LAVIS-format checkpoints (offline)."""

import errno
import filecmp
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch
import torch.nn.functional as F
from lavis_format import LavisDims, eva_vit_file, trimmed_checkpoint, visual_encoder_weights
from safetensors.torch import load_file, save_file
from transformers import (
    AutoTokenizer,
    BertConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_instructblip import InstructBlipForConditionalGeneration, InstructBlipProcessor
from hf_instructblip.conversion import ConversionError, convert_lavis_checkpoint
from hf_instructblip.conversion.writing import sha256

REPO = Path(__file__).resolve().parents[1]
BERT_VOCAB = len(tiny.bert_tokenizer(decoder_token=False))  # without "[DEC]", as bert-base-uncased
DIMS = LavisDims(
    vision_width=176,  # two EVA heads of width 88
    vision_mlp=64,
    vit_file_blocks=3,
    image_size=12,
    patch_size=4,
    qformer_width=32,
    qformer_mlp=48,
    qformer_layers=3,
    qformer_vocab=BERT_VOCAB + 1,  # + "[DEC]"
    qformer_positions=64,
    query_tokens=4,
    llm_width=32,
)


# ---------------------------------------------------------------------------------------------- inputs on disk


def save_qformer_tokenizer(directory: Path) -> Path:
    """Stands in for bert-base-uncased: a WordPiece tokenizer and the BERT config giving the head count."""
    tiny.bert_tokenizer(decoder_token=False).save_pretrained(directory)
    BertConfig(
        vocab_size=BERT_VOCAB,
        hidden_size=DIMS.qformer_width,
        num_hidden_layers=DIMS.qformer_layers,
        num_attention_heads=4,
        intermediate_size=DIMS.qformer_mlp,
    ).save_pretrained(directory)
    return directory


def save_vicuna(directory: Path) -> LlamaForCausalLM:
    """Vicuna v1.1 in miniature: LLaMA tokenizer without a pad token (<unk>=0, <s>=1, </s>=2), sharded weights."""
    tokenizer = tiny.llama_tokenizer(pad_token=None, padding_side="right")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=DIMS.llm_width,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, max_shard_size="30KB")
    tokenizer.save_pretrained(directory)
    return model


def save_flan_t5(directory: Path) -> T5ForConditionalGeneration:
    """Flan-T5 in miniature: gated GELU, an lm_head of its own, spare vocabulary rows (32128 vs 32100 tokens), and a
    weight file that also lists the encoder/decoder copies of `shared` and an unused tensor, as older Hub files do."""
    tokenizer = tiny.t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer) + 4,
        d_model=DIMS.llm_width,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    config.save_pretrained(directory)
    weights = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    # Old T5 files carry a relative-attention bias that T5ForConditionalGeneration ignores on load.
    weights["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    save_file(weights, directory / "model.safetensors")
    tokenizer.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input file, and the tensors written into them, for both LLM families."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("inputs")
    paths = {name: root / name for name in ("bert", "vicuna", "flan_t5")}
    for path in paths.values():
        path.mkdir()
    data = {
        "qformer_tokenizer": str(save_qformer_tokenizer(paths["bert"])),
        "vicuna_dir": paths["vicuna"],
        "vicuna": save_vicuna(paths["vicuna"]),
        "t5_dir": paths["flan_t5"],
        "t5": save_flan_t5(paths["flan_t5"]),
        "vit": eva_vit_file(DIMS, dtype=torch.float16),  # eva_vit_g.pth is half precision
        "vicuna_trimmed": trimmed_checkpoint(DIMS, "vicuna"),
    }
    inv_freq = torch.rand(4)  # LAVIS-LLaMA's persistent rotary buffer, saved per layer
    data["vicuna_trimmed"].update(
        {f"llm_model.model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq for i in range(2)}
    )
    torch.save(data["vit"], root / "eva_vit_g.pth")
    torch.save({"model": data["vicuna_trimmed"]}, root / "vicuna_trimmed.pth")
    data["vit_path"], data["vicuna_trimmed_path"] = root / "eva_vit_g.pth", root / "vicuna_trimmed.pth"

    # A fine-tuned T5 model with a trainable ViT, saved as a raw state dict from a DDP-wrapped model.
    shared = data["t5"].shared.weight.detach()
    full = {**visual_encoder_weights(DIMS), **trimmed_checkpoint(DIMS, "t5")}
    # LAVIS casts Flan-T5 to bfloat16; the runner saves the state-dict aliases of the frozen shared embedding.
    full["t5_model.encoder.embed_tokens.weight"] = shared.bfloat16()
    full["t5_model.decoder.embed_tokens.weight"] = shared.bfloat16()
    torch.save({f"module.{key}": tensor for key, tensor in full.items()}, root / "t5_full.pth")
    data["t5_full"], data["t5_full_path"] = full, root / "t5_full.pth"
    return data


def convert(inputs, output: Path, family: str = "vicuna", **overrides) -> Path:
    """The Vicuna inputs (trimmed checkpoint + EVA file) or the T5 ones (full checkpoint), with `overrides`."""
    arguments = {
        "lavis_checkpoint": inputs["vicuna_trimmed_path"] if family == "vicuna" else inputs["t5_full_path"],
        "llm": str(inputs[f"{family}_dir"]),
        "output_dir": output,
        "vit_checkpoint": inputs["vit_path"] if family == "vicuna" else None,
        "qformer_tokenizer": inputs["qformer_tokenizer"],
    }
    return convert_lavis_checkpoint(**{**arguments, **overrides})


@pytest.fixture(scope="module")
def vicuna_converted(inputs, tmp_path_factory):
    output = convert(inputs, tmp_path_factory.mktemp("vicuna_out"), max_shard_size="100KB")
    return output, InstructBlipForConditionalGeneration.from_pretrained(output).eval()


@pytest.fixture(scope="module")
def t5_converted(inputs, tmp_path_factory):
    output = convert(inputs, tmp_path_factory.mktemp("t5_out"), family="t5")
    return output, InstructBlipForConditionalGeneration.from_pretrained(output).eval()


# ------------------------------------------------------------------------------- expected placement of tensors

# lavis-original.md §2.4, written out independently of the converter.
VISION_PARAMETERS = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def qformer_name(lavis_key: str) -> str:
    key = lavis_key.replace("Qformer.bert.embeddings.LayerNorm.", "qformer.embeddings.layernorm.")
    key = key.replace("Qformer.bert.", "qformer.")
    return key.replace(".attention.self.", ".attention.attention.").replace(
        ".crossattention.self.", ".crossattention.attention."
    )


def assert_vision_tower(state: dict, eva: dict, ln_vision: dict, num_layers: int) -> None:
    """`eva`: EVA-file names without prefix. Checks embeddings, every block, fused q/v bias and ln_vision."""
    assert torch.equal(state["vision_model.embeddings.class_embedding"], eva["cls_token"].float())
    assert torch.equal(state["vision_model.embeddings.position_embedding"], eva["pos_embed"].float())
    assert torch.equal(state["vision_model.embeddings.patch_embedding.weight"], eva["patch_embed.proj.weight"].float())
    for block in range(num_layers):
        layer = f"vision_model.encoder.layers.{block}"
        for lavis_name, hf_name in VISION_PARAMETERS.items():
            assert torch.equal(state[f"{layer}.{hf_name}.weight"], eva[f"blocks.{block}.{lavis_name}.weight"].float())
            if lavis_name != "attn.qkv":
                assert torch.equal(state[f"{layer}.{hf_name}.bias"], eva[f"blocks.{block}.{lavis_name}.bias"].float())
        q_bias, k_bias, v_bias = state[f"{layer}.self_attn.qkv.bias"].chunk(3)
        assert torch.equal(q_bias, eva[f"blocks.{block}.attn.q_bias"].float())
        assert torch.equal(k_bias, torch.zeros_like(k_bias))
        assert torch.equal(v_bias, eva[f"blocks.{block}.attn.v_bias"].float())
    assert not any(key.startswith(f"vision_model.encoder.layers.{num_layers}.") for key in state)
    assert torch.equal(state["vision_model.post_layernorm.weight"], ln_vision["weight"])
    assert torch.equal(state["vision_model.post_layernorm.bias"], ln_vision["bias"])


def assert_qformer_and_projection(state: dict, lavis: dict, projection: str) -> None:
    qformer_keys = [key for key in lavis if key.startswith("Qformer.") and not key.endswith("position_ids")]
    for key in qformer_keys:
        assert torch.equal(state[qformer_name(key)], lavis[key]), key
    assert len([key for key in state if key.startswith("qformer.")]) == len(qformer_keys)
    assert torch.equal(state["query_tokens"], lavis["query_tokens"])
    assert torch.equal(state["language_projection.weight"], lavis[f"{projection}.weight"])
    assert torch.equal(state["language_projection.bias"], lavis[f"{projection}.bias"])


# ------------------------------------------------------------------------------------------------------ Vicuna


def test_vicuna_weights_land_where_lavis_uses_them(inputs, vicuna_converted):
    _, model = vicuna_converted
    state = model.state_dict()
    lavis = inputs["vicuna_trimmed"]
    ln_vision = {"weight": lavis["ln_vision.weight"], "bias": lavis["ln_vision.bias"]}
    # The EVA file has 3 blocks and `norm`: LAVIS builds 2 blocks and never uses `norm`.
    assert model.config.vision_config.num_hidden_layers == DIMS.vit_file_blocks - 1
    assert_vision_tower(state, inputs["vit"], ln_vision, DIMS.vit_file_blocks - 1)
    assert_qformer_and_projection(state, lavis, "llm_proj")

    assert_vicuna(state, inputs["vicuna"].state_dict())


def assert_vicuna(state: dict, vicuna_state: dict) -> None:
    """The LLM's tensors under `language_model.`, embeddings grown by two mean rows ([PAD], <image>)."""
    for key, tensor in vicuna_state.items():
        converted = state[f"language_model.{key}"]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            assert converted.shape[0] == tensor.shape[0] + 2
            assert torch.equal(converted[: tensor.shape[0]], tensor)
            torch.testing.assert_close(converted[tensor.shape[0] :], tensor.mean(0).expand(2, -1))
        else:
            assert torch.equal(converted, tensor), key
    assert len([key for key in state if key.startswith("language_model.")]) == len(vicuna_state)


def test_llm_weights_in_pytorch_bin_format(inputs, tmp_path):
    """Vicuna v1.1's Hub repos hold pytorch_model*.bin shards rather than safetensors."""
    llm_dir = tmp_path / "vicuna_bin"
    inputs["vicuna"].config.save_pretrained(llm_dir)
    AutoTokenizer.from_pretrained(inputs["vicuna_dir"]).save_pretrained(llm_dir)
    torch.save(inputs["vicuna"].state_dict(), llm_dir / "pytorch_model.bin")
    output = convert(inputs, tmp_path / "out", llm=str(llm_dir))
    state = InstructBlipForConditionalGeneration.from_pretrained(output).state_dict()
    assert_vicuna(state, inputs["vicuna"].state_dict())


def test_vicuna_config_tokenizers_and_generation_defaults(inputs, vicuna_converted):
    output, model = vicuna_converted
    config = model.config
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_attention_heads, vision.intermediate_size) == (176, 2, 64)
    assert (vision.image_size, vision.patch_size) == (DIMS.image_size, DIMS.patch_size)
    assert (vision.post_layernorm_eps, vision.layer_norm_eps) == (1e-5, 1e-6)  # ln_vision is a plain nn.LayerNorm
    qformer = config.qformer_config
    assert (qformer.num_attention_heads, qformer.num_hidden_layers, qformer.cross_attention_frequency) == (4, 3, 2)
    assert (qformer.vocab_size, qformer.encoder_hidden_size) == (DIMS.qformer_vocab, 176)

    processor = InstructBlipProcessor.from_pretrained(output)
    tokenizer, vicuna_size = processor.tokenizer, inputs["vicuna"].config.vocab_size
    assert tokenizer("a cat").input_ids[0] == 2  # bos = "</s>", as every LAVIS Vicuna prompt starts
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("</s>",) * 3
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("[PAD]", vicuna_size)  # 32000 for Vicuna
    assert processor.image_token_id == config.image_token_index == vicuna_size + 1
    assert config.text_config.vocab_size == len(tokenizer) == vicuna_size + 2
    assert (tokenizer.truncation_side, tokenizer.padding_side) == ("left", "left")
    assert config.text_config.pad_token_id == vicuna_size
    qformer_tokenizer = processor.qformer_tokenizer
    assert qformer_tokenizer.convert_tokens_to_ids("[DEC]") == BERT_VOCAB  # 30522 for bert-base-uncased
    assert qformer_tokenizer.truncation_side == "left"
    assert processor.image_processor.size == {"height": DIMS.image_size, "width": DIMS.image_size}

    generation = GenerationConfig.from_pretrained(output)
    assert (generation.num_beams, generation.max_new_tokens, generation.min_length) == (5, 256, 1)
    assert (generation.top_p, generation.repetition_penalty, generation.length_penalty) == (0.9, 1.5, 1.0)
    assert (generation.eos_token_id, generation.pad_token_id) == (2, vicuna_size)


def test_output_is_sharded_and_the_card_names_the_sources(inputs, vicuna_converted):
    output, _ = vicuna_converted
    shards = sorted(output.glob("model-*.safetensors"))
    assert len(shards) > 1 and (output / "model.safetensors.index.json").is_file()
    for shard in shards:  # at most 100KB of tensors, unless a single tensor is larger
        tensors = load_file(shard)
        assert len(tensors) == 1 or sum(t.numel() * t.itemsize for t in tensors.values()) <= 100_000
    card = (output / "README.md").read_text()
    for path in (inputs["vicuna_trimmed_path"], inputs["vit_path"], *inputs["vicuna_dir"].glob("*.safetensors")):
        assert f"`{path.name}` | `{sha256(path)}`" in card


def lavis_vision_forward(
    eva: dict, ln_vision: dict, pixel_values: torch.Tensor, num_layers: int, ln_eps: float = 1e-5
) -> torch.Tensor:
    """EVA ViT + ln_vision as LAVIS computes them (eva_vit.py, blip2.py), in plain torch."""
    eva = {key: tensor.float() for key, tensor in eva.items()}
    patch_size, width = eva["patch_embed.proj.weight"].shape[-1], eva["cls_token"].shape[-1]
    heads = width // 88
    x = F.conv2d(pixel_values, eva["patch_embed.proj.weight"], eva["patch_embed.proj.bias"], stride=patch_size)
    x = x.flatten(2).transpose(1, 2)  # (B, patches, width)
    x = torch.cat([eva["cls_token"].expand(x.shape[0], -1, -1), x], 1) + eva["pos_embed"]
    batch, tokens, _ = x.shape
    for i in range(num_layers):
        block = {key.removeprefix(f"blocks.{i}."): t for key, t in eva.items() if key.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (width,), block["norm1.weight"], block["norm1.bias"], eps=1e-6)
        qkv_bias = torch.cat([block["attn.q_bias"], torch.zeros_like(block["attn.v_bias"]), block["attn.v_bias"]])
        qkv = (
            F.linear(h, block["attn.qkv.weight"], qkv_bias).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0] * (width // heads) ** -0.5, qkv[1], qkv[2]  # (B, heads, tokens, head width)
        attention = (q @ k.transpose(-2, -1)).softmax(-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + F.linear(h, block["attn.proj.weight"], block["attn.proj.bias"])
        h = F.layer_norm(x, (width,), block["norm2.weight"], block["norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, block["mlp.fc1.weight"], block["mlp.fc1.bias"])),
            block["mlp.fc2.weight"],
            block["mlp.fc2.bias"],
        )
        x = x + h
    return F.layer_norm(x, (width,), ln_vision["weight"], ln_vision["bias"], eps=ln_eps)


def test_vision_tower_computes_what_lavis_computes(inputs, vicuna_converted):
    _, model = vicuna_converted
    lavis = inputs["vicuna_trimmed"]
    ln_vision = {"weight": lavis["ln_vision.weight"], "bias": lavis["ln_vision.bias"]}
    pixel_values = torch.randn(2, 3, DIMS.image_size, DIMS.image_size)
    expected = lavis_vision_forward(inputs["vit"], ln_vision, pixel_values, DIMS.vit_file_blocks - 1)
    with torch.no_grad():
        features = model.vision_model(pixel_values)
    features = getattr(features, "last_hidden_state", features)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    # The check is sharp enough to see the final LayerNorm's eps (transformers' port uses 1e-6 there).
    other_eps = lavis_vision_forward(inputs["vit"], ln_vision, pixel_values, DIMS.vit_file_blocks - 1, ln_eps=1e-6)
    assert not torch.allclose(features, other_eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("converted", ["vicuna_converted", "t5_converted"])
def test_converted_model_generates_with_lavis_defaults(converted, request):
    output, model = request.getfixturevalue(converted)
    processor = InstructBlipProcessor.from_pretrained(output)
    inputs = processor(images=tiny.image(), text="what is in the image?", return_tensors="pt")
    assert model.generation_config.num_beams == 5  # read from the converted generation_config.json
    with torch.no_grad():
        output_ids = model.generate(**inputs, max_new_tokens=3)
    prompt_length = inputs["input_ids"].shape[1] if model.config.use_decoder_only_language_model else 0
    # A decoder-only LLM returns the prompt first; T5 adds its decoder start token.
    assert output_ids.shape[0] == 1 and 1 <= output_ids.shape[1] - prompt_length <= 4


# ---------------------------------------------------------------------------------------------------- Flan-T5


def test_t5_full_checkpoint_weights(inputs, t5_converted):
    _, model = t5_converted
    state = model.state_dict()
    full = inputs["t5_full"]
    eva = {key.removeprefix("visual_encoder."): t for key, t in full.items() if key.startswith("visual_encoder.")}
    ln_vision = {"weight": full["ln_vision.weight"], "bias": full["ln_vision.bias"]}
    assert_vision_tower(state, eva, ln_vision, DIMS.vit_file_blocks - 1)
    assert_qformer_and_projection(state, full, "t5_proj")
    t5 = inputs["t5"]
    for key, tensor in t5.state_dict().items():
        assert torch.equal(state[f"language_model.{key}"], tensor), key
    # Flan-T5 does not tie lm_head to shared; T5Config ties by default, so the converted model must not.
    assert not torch.equal(state["language_model.lm_head.weight"], state["language_model.shared.weight"])


def test_t5_config_keeps_exact_gelu_and_tokens(inputs, t5_converted):
    output, model = t5_converted
    text = model.config.text_config
    assert (text.dense_act_fn, text.is_gated_act) == ("gelu_python", True)  # LAVIS's exact GELU, not gelu_new
    assert text.vocab_size == inputs["t5"].config.vocab_size  # <image> fits in the spare rows
    processor = InstructBlipProcessor.from_pretrained(output)
    assert processor.tokenizer.truncation_side == "left"
    assert processor.image_token_id == len(AutoTokenizer.from_pretrained(inputs["t5_dir"]))
    assert GenerationConfig.from_pretrained(output).decoder_start_token_id == 0


def test_t5_embedding_copies_are_checked(inputs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        convert(inputs, tmp_path / "same", family="t5")
    assert "differs" not in caplog.text
    full = dict(inputs["t5_full"])
    full["t5_model.encoder.embed_tokens.weight"] = full["t5_model.encoder.embed_tokens.weight"] + 1
    torch.save({"model": full}, tmp_path / "other_llm.pth")
    with caplog.at_level(logging.WARNING):
        output = convert(inputs, tmp_path / "other", family="t5", lavis_checkpoint=tmp_path / "other_llm.pth")
    assert "t5_model.encoder.embed_tokens.weight differs from the LLM's shared.weight" in caplog.text
    model = InstructBlipForConditionalGeneration.from_pretrained(output)
    assert torch.equal(model.language_model.shared.weight, inputs["t5"].shared.weight)


# ------------------------------------------------------------------------------------------------ error paths


def save_modified(inputs, path: Path, change) -> Path:
    weights = dict(inputs["vicuna_trimmed"])
    change(weights)
    torch.save({"model": weights}, path)
    return path


def test_missing_key_is_an_error(inputs, tmp_path):
    key = "Qformer.bert.encoder.layer.1.output_query.dense.bias"
    checkpoint = save_modified(inputs, tmp_path / "c.pth", lambda weights: weights.pop(key))
    with pytest.raises(
        ConversionError,
        match=r"missing \(1\):\n  qformer.encoder.layer.1.output_query.dense.bias \(LAVIS: Qformer.bert.encoder",
    ):
        convert(inputs, tmp_path / "out", lavis_checkpoint=checkpoint)
    assert not (tmp_path / "out").exists()


def test_unexpected_key_is_an_error(inputs, tmp_path):
    checkpoint = save_modified(inputs, tmp_path / "c.pth", lambda weights: weights.update(Qformer_cls=torch.zeros(2)))
    with pytest.raises(ConversionError, match=r"unexpected \(1\):\n  Qformer_cls"):
        convert(inputs, tmp_path / "out", lavis_checkpoint=checkpoint)


def test_shape_mismatch_is_an_error(inputs, tmp_path):
    def widen_projection(weights):
        weights["llm_proj.weight"] = torch.zeros(DIMS.llm_width + 1, DIMS.qformer_width)
        weights["llm_proj.bias"] = torch.zeros(DIMS.llm_width + 1)

    checkpoint = save_modified(inputs, tmp_path / "c.pth", widen_projection)
    with pytest.raises(
        ConversionError,
        match=r"language_projection.weight \(from llm_proj.weight\): checkpoint \[33, 32\] vs model \[32, 32\]",
    ):
        convert(inputs, tmp_path / "out", lavis_checkpoint=checkpoint)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_needs_code_is_refused(inputs, tmp_path):
    marker = tmp_path / "executed"
    torch.save({"model": inputs["vicuna_trimmed"], "payload": _RunsCode(marker)}, tmp_path / "malicious.pth")
    with pytest.raises(ConversionError, match="Refusing to load .*malicious.pth: it is a pickle that needs code"):
        convert(inputs, tmp_path / "out", lavis_checkpoint=tmp_path / "malicious.pth")
    assert not marker.exists()


def test_vision_layers_selects_blocks_of_the_vit_file(inputs, tmp_path):
    model = InstructBlipForConditionalGeneration.from_pretrained(convert(inputs, tmp_path / "out", vision_layers=1))
    assert model.config.vision_config.num_hidden_layers == 1
    lavis = inputs["vicuna_trimmed"]
    ln_vision = {"weight": lavis["ln_vision.weight"], "bias": lavis["ln_vision.bias"]}
    assert_vision_tower(model.state_dict(), inputs["vit"], ln_vision, num_layers=1)


def test_vision_layers_beyond_the_file_is_an_error(inputs, tmp_path):
    with pytest.raises(ConversionError, match="--vision-layers 4: the ViT checkpoint has 3 blocks"):
        convert(inputs, tmp_path / "out", vision_layers=4)


def test_qformer_heads_need_a_bert_config(inputs, tmp_path):
    tiny.bert_tokenizer(decoder_token=False).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConversionError, match="No BERT config found for the Q-Former tokenizer"):
        convert(inputs, tmp_path / "out", qformer_tokenizer=str(tmp_path / "bert"))


def test_variant_with_other_shapes_is_an_error(inputs, tmp_path):
    with pytest.raises(ConversionError, match=r"released vicuna7b model: vision width: 176 \(expected 1408\)"):
        convert(inputs, tmp_path / "out", variant="vicuna7b")


# ------------------------------------------------------------------------- CLI, Hub and remote code (subprocess)


def run_python(arguments: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *arguments], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_cli_reads_the_llm_from_the_hub_and_pushes_the_result(inputs, tmp_path):
    from fakehub import FakeHub
    from huggingface_hub import HfApi

    with FakeHub(root=str(tmp_path / "hub"), token="hf_test", force_regular=True) as hub:
        api = HfApi(endpoint=hub.url, token="hf_test")
        api.create_repo("lmsys/tiny-vicuna")
        api.upload_folder(folder_path=str(inputs["vicuna_dir"]), repo_id="lmsys/tiny-vicuna")
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": "hf_test",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        # fmt: off
        run_python([
            "-m", "hf_instructblip.conversion",
            "--lavis-checkpoint", str(inputs["vicuna_trimmed_path"]), "--vit-checkpoint", str(inputs["vit_path"]),
            "--llm", "lmsys/tiny-vicuna", "--qformer-tokenizer", inputs["qformer_tokenizer"],
            "--dtype", "bfloat16", "--output", str(tmp_path / "out"), "--push-to-hub", "testorg/converted",
        ], env, tmp_path)
        # fmt: on
        uploaded = set(api.list_repo_files("testorg/converted")) - {".gitattributes"}
    written = {str(path.relative_to(tmp_path / "out")) for path in (tmp_path / "out").rglob("*") if path.is_file()}
    assert uploaded == written
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "README.md",
        "modeling_instructblip.py",
    } <= written
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert weights["language_model.lm_head.weight"].dtype == torch.bfloat16
    assert weights["query_tokens"].dtype == torch.float32  # kept in float32, as the model class asks


def test_converted_directory_loads_as_remote_code(vicuna_converted, tmp_path):
    """Where hf_instructblip is not installed, the code copied next to the weights is used."""
    output, model = vicuna_converted
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        f"model = AutoModelForImageTextToText.from_pretrained({str(output)!r}, trust_remote_code=True)\n"
        f"AutoProcessor.from_pretrained({str(output)!r}, trust_remote_code=True)\n"
        "assert 'hf_instructblip' not in sys.modules\n"
        "torch.save(model.state_dict()['vision_model.post_layernorm.weight'], sys.argv[1])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    run_python(["-c", script, str(tmp_path / "weight.pt")], env, tmp_path)
    assert torch.equal(torch.load(tmp_path / "weight.pt"), model.vision_model.post_layernorm.weight)


# ------------------------------------------------------------------ faults: damaged inputs, existing output, kills


def copy_vicuna(inputs, directory: Path) -> Path:
    shutil.copytree(inputs["vicuna_dir"], directory)
    return directory


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def damage_llm_shard(inputs, tmp_path):
    llm = copy_vicuna(inputs, tmp_path / "llm")
    truncate(sorted(llm.glob("model-*.safetensors"))[-1])
    return {"llm": str(llm)}, r"model-0000\d-of-0000\d.safetensors is truncated or corrupt \(.*file not fully covered"


def corrupt_llm_header(inputs, tmp_path):
    llm = copy_vicuna(inputs, tmp_path / "llm")
    shard = sorted(llm.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:8] + b"\xff" * 40 + shard.read_bytes()[48:])
    return {"llm": str(llm)}, r"model-00001-of-0000\d.safetensors is truncated or corrupt"


def index_lists_another_tensor(inputs, tmp_path):
    llm = copy_vicuna(inputs, tmp_path / "llm")
    index = json.loads((llm / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key + ".renamed"] = index["weight_map"].pop(key)
    (llm / "model.safetensors.index.json").write_text(json.dumps(index))
    return {"llm": str(llm)}, rf"does not hold what model.safetensors.index.json lists for it: missing \['{key}.renamed"


def truncate_lavis_checkpoint(inputs, tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    shutil.copy(inputs["vicuna_trimmed_path"], checkpoint)
    truncate(checkpoint)
    return {"lavis_checkpoint": checkpoint}, r"checkpoint.pth is truncated or corrupt"


def truncate_llm_bin(inputs, tmp_path):
    llm = tmp_path / "llm_bin"
    inputs["vicuna"].config.save_pretrained(llm)
    AutoTokenizer.from_pretrained(inputs["vicuna_dir"]).save_pretrained(llm)
    torch.save(inputs["vicuna"].state_dict(), llm / "pytorch_model.bin")
    truncate(llm / "pytorch_model.bin", keep=0.9)
    return {"llm": str(llm)}, r"pytorch_model.bin is truncated or corrupt"


def t5_checkpoint_with_vicuna(inputs, tmp_path):
    return {"lavis_checkpoint": inputs["t5_full_path"], "vit_checkpoint": None}, (
        r"The LAVIS checkpoint is a Flan-T5 model \(t5_proj.\*\) but --llm .*vicuna is a decoder-only LLM"
    )


@pytest.mark.parametrize(
    "damage",
    [
        damage_llm_shard,
        corrupt_llm_header,
        index_lists_another_tensor,
        truncate_lavis_checkpoint,
        truncate_llm_bin,
        t5_checkpoint_with_vicuna,
    ],
)
def test_damaged_inputs_are_named_and_nothing_is_written(inputs, tmp_path, damage):
    overrides, message = damage(inputs, tmp_path)
    with pytest.raises(ConversionError, match=message):
        convert(inputs, tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("size, message", [("5XB", "not in a valid format"), (0, "must be positive")])
def test_a_bad_shard_size_is_refused_before_reading_anything(inputs, tmp_path, size, message):
    with pytest.raises(ConversionError, match=f"--max-shard-size.*{message}"):
        convert(inputs, tmp_path / "out", max_shard_size=size, lavis_checkpoint=tmp_path / "not read.pth")


def test_existing_output_is_refused_unless_overwrite_which_replaces_it_whole(inputs, tmp_path):
    output = tmp_path / "out"
    convert(inputs, output)  # one model.safetensors
    with pytest.raises(ConversionError, match=r"--output .*out exists and is not empty; pass --overwrite"):
        convert(inputs, output, max_shard_size="100KB")
    convert(inputs, output, max_shard_size="100KB", overwrite=True)
    # The stale single file would win over the new shards when loading; it is gone with the old folder.
    assert not (output / "model.safetensors").exists() and (output / "model.safetensors.index.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    converted = InstructBlipForConditionalGeneration.from_pretrained(output)
    assert_vicuna(converted.state_dict(), inputs["vicuna"].state_dict())


def cli_arguments(inputs, output: Path) -> list[str]:
    # fmt: off
    return [
        "--lavis-checkpoint", str(inputs["vicuna_trimmed_path"]), "--vit-checkpoint", str(inputs["vit_path"]),
        "--llm", str(inputs["vicuna_dir"]), "--qformer-tokenizer", inputs["qformer_tokenizer"],
        "--max-shard-size", "100KB", "--output", str(output),
    ]
    # fmt: on


@pytest.mark.parametrize("point", ["mid-shard", "before-config", "between-renames"])
def test_a_killed_conversion_leaves_no_folder_that_loads_and_a_rerun_completes(inputs, tmp_path, point):
    output, old = tmp_path / "out", tmp_path / "old"
    convert(inputs, old, family="vicuna")  # an earlier conversion that --overwrite is replacing
    shutil.copytree(old, output)
    killed = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "killed_conversion.py"), point,
         *cli_arguments(inputs, output), "--overwrite"],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # Either the old output is still whole, or (killed between the two renames) no output exists.
    if output.exists():
        assert filecmp.dircmp(output, old).diff_files == [] and set(os.listdir(output)) == set(os.listdir(old))
    partial = tmp_path / "out.partial"
    assert not (partial / "config.json").exists() or point == "between-renames"
    with pytest.raises(OSError):
        InstructBlipForConditionalGeneration.from_pretrained(partial if point != "between-renames" else output)

    convert(inputs, output, max_shard_size="100KB", overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old", "out"]
    converted = InstructBlipForConditionalGeneration.from_pretrained(output)
    assert_vicuna(converted.state_dict(), inputs["vicuna"].state_dict())


def test_cli_error_is_one_line_with_exit_status_1(inputs, tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    shutil.copy(inputs["vicuna_trimmed_path"], checkpoint)
    truncate(checkpoint)
    arguments = cli_arguments(inputs, tmp_path / "out")
    arguments[1] = str(checkpoint)
    result = subprocess.run(
        [sys.executable, "-m", "hf_instructblip.conversion", *arguments],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "checkpoint.pth is truncated or corrupt" in result.stderr


def test_a_full_disk_is_named_and_leaves_nothing(inputs, tmp_path, monkeypatch):
    from hf_instructblip.conversion import convert as convert_module

    def write_then_fill_up(output_dir, *args):
        (output_dir / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(convert_module, "write_weights", write_then_fill_up)
    with pytest.raises(ConversionError, match=r"Writing the converted model into .*out.partial failed: .*No space left"):
        convert(inputs, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("converted", ["vicuna_converted", "t5_converted"])
def test_model_card_has_hub_metadata_and_a_usage_snippet_that_runs(converted, request):
    from huggingface_hub import ModelCard

    output, model = request.getfixturevalue(converted)
    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert {"instructblip", "hf_instructblip", "lavis"} <= set(card.data.tags)
    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout  # the last line, printing the answer, ran
