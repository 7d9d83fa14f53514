"""The conventions third-party code relies on: output flags, PEFT task wrappers, saved dtype, generate's inputs."""

import json
import subprocess
import sys

import pytest
import torch

import tiny
from hf_instructblip import InstructBlipForConditionalGeneration


def batch(kind, with_labels=False):
    processor = tiny.processor(kind)
    texts = ["what is in the image?", "describe it"]
    inputs = processor(images=[tiny.image(0), tiny.image(1)], text=texts, padding=True, return_tensors="pt")
    if kind == "t5":
        inputs["decoder_input_ids"] = torch.tensor([[0, 5, 9, 7], [0, 11, 4, 6]])
        if with_labels:
            inputs["labels"] = torch.tensor([[5, 9, 7, 1], [11, 4, 6, 1]])
    elif with_labels:
        inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        inputs["labels"][:, : tiny.NUM_QUERY_TOKENS] = -100
    return inputs


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_forward_honours_return_dict_and_output_flags(kind):
    model = tiny.model(kind)
    model.set_attn_implementation("eager")  # SDPA computes no attention weights
    inputs = batch(kind, with_labels=True)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        unset = model(**inputs, output_hidden_states=None, output_attentions=None, return_dict=None)
        with_attentions = model(**inputs, output_attentions=True)
        without_hidden = model(**inputs, output_hidden_states=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    # None is what PEFT passes; TRL's fused LM head still needs the final hidden states.
    torch.testing.assert_close(unset.last_hidden_state, as_dict.last_hidden_state)
    assert without_hidden.last_hidden_state is None
    attentions = with_attentions.language_model_outputs
    attentions = attentions.attentions if kind == "llama" else attentions.decoder_attentions
    assert len(attentions) == 2 and as_dict.language_model_outputs.get("attentions") is None


@pytest.mark.parametrize("kind, task_type, targets", [("llama", "CAUSAL_LM", ["q_proj", "v_proj"]),
                                                      ("t5", "SEQ_2_SEQ_LM", ["q", "v"])])
def test_peft_task_wrappers_train_save_and_reload_with_the_same_logits(kind, task_type, targets, tmp_path):
    """PEFT's CAUSAL_LM / SEQ_2_SEQ_LM wrappers pass `return_dict`, `output_attentions` and
    `output_hidden_states=None` explicitly (TRL's `--use_peft` goes through them)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    model = get_peft_model(tiny.model(kind), LoraConfig(task_type=task_type, r=4, lora_alpha=8,
                                                        target_modules=targets))
    inputs = batch(kind, with_labels=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(3):
        outputs = model(**inputs)
        assert outputs.last_hidden_state is not None
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(outputs.loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny.model(kind), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=0)
        untrained = tiny.model(kind)(**inputs).logits
    assert not torch.allclose(untrained, expected)
    assert reloaded.generate(**batch(kind), max_new_tokens=2).shape[0] == 2


def test_bfloat16_model_saves_bfloat16_and_reloads_so_with_dtype_auto(tmp_path):
    model = InstructBlipForConditionalGeneration.from_pretrained(_saved(tmp_path / "fp32"), dtype=torch.bfloat16)
    assert model.query_tokens.dtype == torch.float32  # the first parameter, and the odd one out
    assert model.dtype == torch.bfloat16
    model.save_pretrained(tmp_path / "bf16")
    reloaded = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert reloaded.config.dtype == torch.bfloat16
    assert reloaded.language_model.dtype == reloaded.vision_model.dtype == torch.bfloat16
    assert reloaded.query_tokens.dtype == torch.float32


def test_construction_in_half_precision_keeps_the_queries_float32():
    config = tiny.model("llama").config
    for dtype in (torch.bfloat16, torch.float16):
        model = InstructBlipForConditionalGeneration._from_config(config, dtype=dtype)
        assert model.query_tokens.dtype == torch.float32
        assert model.language_projection.weight.dtype == model.language_model.dtype == dtype


def _saved(directory):
    tiny.model("llama").save_pretrained(directory)
    return directory


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_generate_takes_inputs_embeds(kind):
    """`inputs_embeds` replace the embedding lookup; the placeholders are found by their embedding when no
    `input_ids` are given, and the output is then the new tokens alone (the LLM's own convention)."""
    model = tiny.model(kind)
    inputs = batch(kind)
    inputs.pop("decoder_input_ids", None)
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    reference = model.generate(**inputs, **settings)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with_ids = model.generate(**inputs, inputs_embeds=embeds, **settings)
    inputs_embeds_only = {k: v for k, v in inputs.items() if k != "input_ids"}
    without_ids = model.generate(**inputs_embeds_only, inputs_embeds=embeds, **settings)
    assert torch.equal(with_ids, reference)
    new_tokens = reference[:, inputs["input_ids"].shape[1] :] if kind == "llama" else reference
    assert torch.equal(without_ids, new_tokens)


def test_towers_record_hidden_states_and_attention_maps_like_the_builtin():
    """Through transformers' output capture (`_can_record_outputs`): the vision tower's and the Q-Former's hidden
    states and attention maps, the Q-Former's cross-attention to the image apart from its self-attention."""
    from test_modeling import batch as parity_batch
    from test_modeling import with_oracle

    ours, oracle = with_oracle("llama", "eager")
    inputs = parity_batch("llama")
    towers = {k: inputs[k] for k in ("pixel_values", "qformer_input_ids", "qformer_attention_mask")}
    flags = dict(output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        mine, builtin = ours.get_image_features(**towers, **flags), oracle.get_image_features(**towers, **flags)
        as_tuple = ours.get_image_features(**towers, return_dict=False)
        plain = ours.get_image_features(**towers)
    torch.testing.assert_close(mine.pooler_output, builtin.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(as_tuple[1], mine.pooler_output)
    assert plain.vision_outputs.hidden_states is None and plain.qformer_outputs.cross_attentions is None
    vision, qformer = ours.config.vision_config, ours.config.qformer_config
    expected_counts = {
        ("vision_outputs", "hidden_states"): vision.num_hidden_layers + 1,
        ("vision_outputs", "attentions"): vision.num_hidden_layers,
        ("qformer_outputs", "hidden_states"): qformer.num_hidden_layers + 1,
        ("qformer_outputs", "cross_attentions"): 2,  # layers 0 and 2 of 3 cross-attend
        ("qformer_outputs", "attentions"): qformer.num_hidden_layers,
    }
    num_queries, num_patches = tiny.NUM_QUERY_TOKENS, ours.config.vision_config.num_positions
    for (tower, field), count in expected_counts.items():
        recorded = getattr(getattr(mine, tower), field)
        reference = getattr(getattr(builtin, tower), field)
        if field == "attentions" and tower == "qformer_outputs":
            # The built-in's layer-name filter also catches the cross-attention maps; the self-attention maps
            # are the square ones.
            reference = tuple(a for a in reference if a.shape[-1] == a.shape[-2])
        assert len(recorded) == len(reference) == count, (tower, field)
        for a, b in zip(recorded, reference):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert mine.qformer_outputs.cross_attentions[0].shape[-2:] == (num_queries, num_patches)
    with torch.no_grad():
        outputs = ours(**inputs, output_attentions=True)
    assert len(outputs.qformer_outputs.cross_attentions) == 2 and len(outputs.vision_outputs.attentions) == 2


def test_vision_model_alone_returns_a_model_output():
    model = tiny.model("llama").vision_model
    model.set_attn_implementation("eager")
    pixel_values = torch.randn(2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True, output_attentions=True)
        as_tuple = model(pixel_values, return_dict=False)
    assert isinstance(model.get_input_embeddings(), torch.nn.Module)
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0])
    torch.testing.assert_close(as_tuple[0], outputs.last_hidden_state)
    # The last recorded hidden state is the last block's output, before the final LayerNorm (as the built-in).
    torch.testing.assert_close(model.post_layernorm(outputs.hidden_states[-1]), outputs.last_hidden_state)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(2, 4, model.config.num_positions))


def test_static_cache_and_compiled_generation_are_token_identical_to_eager():
    from transformers import CompileConfig

    model = tiny.model("llama")
    inputs = batch("llama")
    settings = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    eager = model.generate(**inputs, **settings)
    assert torch.equal(model.generate(**inputs, cache_implementation="static", **settings), eager)
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told otherwise
    compiled = model.generate(**inputs, cache_implementation="static", compile_config=compile_config, **settings)
    assert hasattr(model.language_model, "_compiled_call")  # the decoding steps did run compiled
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_the_whole_forward_traces_as_one_graph(kind):
    """What `_can_compile_fullgraph` promises: no graph break (dynamo's trace, without inductor's slow codegen)."""
    assert InstructBlipForConditionalGeneration._can_compile_fullgraph
    model = tiny.model(kind)
    inputs = batch(kind, with_labels=True)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="eager")(**inputs)
        eager = model(**inputs)
    torch.testing.assert_close(compiled.logits, eager.logits)
    torch.testing.assert_close(compiled.loss, eager.loss)


def test_flex_attention_gives_the_logits_of_sdpa():
    """Every attention of the towers and of a LLaMA LLM through flex_attention (compiled by torch on CPU), with
    padding in the Q-Former's and in the LLM's inputs. (transformers' T5 fails under flex_attention on CPU.)"""
    model = tiny.model("llama")
    inputs = batch("llama")
    assert (inputs["qformer_attention_mask"] == 0).any() and (inputs["attention_mask"] == 0).any()
    with torch.no_grad():
        reference = model(**inputs).logits
        model.set_attn_implementation("flex_attention")
        assert model.qformer.config._attn_implementation == "flex_attention"
        flex = model(**inputs).logits
    torch.testing.assert_close(flex, reference, rtol=1e-5, atol=1e-5)


def test_trl_sft_command_line_trains_this_model_from_a_folder(tmp_path):
    """`trl sft --model_name_or_path DIR --trust_remote_code` on a saved checkpoint and a local image dataset.

    TRL resolves `config.architectures[0]` in `transformers` first; the saved name must not be transformers' own
    InstructBLIP class, or TRL trains the built-in model instead of this one (and fails on its outputs).
    """
    import datasets

    model, processor = tiny.model("llama"), tiny.processor("llama")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["architectures"] == [
        "HfInstructBlipForConditionalGeneration"
    ]
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    rows = datasets.Dataset.from_dict({"images": [[tiny.image(i)] for i in range(8)], "messages": [user + answer] * 8})
    rows.cast_column("images", datasets.Sequence(datasets.Image())).to_parquet(tmp_path / "data" / "train.parquet")
    command = [
        sys.executable, "-m", "trl.cli.main", "sft", "--model_name_or_path", str(tmp_path / "model"),
        "--trust_remote_code", "--dataset_name", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--use_cpu",
        "--bf16", "False", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    trained = json.loads((tmp_path / "out" / "config.json").read_text())
    assert trained["model_type"] == "hf_instructblip"  # this package's model, loaded through its remote code
    reloaded = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert not torch.equal(reloaded.query_tokens, model.query_tokens)
