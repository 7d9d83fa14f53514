"""Numerical parity with transformers' built-in InstructBLIP (the oracle) on identical weights, and model behaviour."""

import functools
import logging

import pytest
import torch
import transformers

import tiny
from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration


KINDS = ["llama", "t5"]


def with_oracle(kind, attn_implementation="sdpa"):
    """Our model and transformers' built-in one carrying the same weights.

    transformers' port uses eps 1e-6 in the final vision LayerNorm (LAVIS: 1e-5), so ours is set to match it here.
    """
    kwargs = tiny.config_kwargs(kind)
    ours = tiny.model(kind, vision_config={**kwargs["vision_config"], "post_layernorm_eps": 1e-6})
    oracle = transformers.InstructBlipForConditionalGeneration(transformers.InstructBlipConfig(**kwargs))
    if kind == "t5":
        tiny.untie_lm_head(oracle)
    oracle.load_state_dict(ours.state_dict(), strict=True)
    ours.set_attn_implementation(attn_implementation)
    oracle.set_attn_implementation(attn_implementation)
    return ours, oracle.eval()


def batch(kind, texts=("what is in the image?", "describe it"), seed=0):
    processor = tiny.processor(kind)
    images = [tiny.image(seed + i) for i in range(len(texts))]
    return processor(images=images, text=list(texts), padding=True, return_tensors="pt")


def assert_logits_close(ours, oracle):
    tolerance = 5e-6 * max(1.0, oracle.abs().max().item())
    assert (ours - oracle).abs().max().item() <= tolerance


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers_builtin(kind, attn_implementation):
    ours, oracle = with_oracle(kind, attn_implementation)
    inputs = batch(kind)
    if kind == "t5":
        inputs["decoder_input_ids"] = torch.tensor([[0, 5, 9, 7], [0, 11, 4, 6]])
    with torch.no_grad():
        assert_logits_close(ours(**inputs).logits, oracle(**inputs).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_matches_transformers_builtin(kind):
    ours, oracle = with_oracle(kind)
    inputs = batch(kind)
    if kind == "llama":
        labels = inputs["input_ids"].clone()
        labels[:, : tiny.NUM_QUERY_TOKENS + 3] = -100
        labels[inputs["attention_mask"] == 0] = -100
    else:
        labels = torch.tensor([[5, 9, 7, 1], [11, 4, 1, -100]])
    with torch.no_grad():
        ours_loss = ours(**inputs, labels=labels).loss
        oracle_loss = oracle(**inputs, labels=labels).loss
    torch.testing.assert_close(ours_loss, oracle_loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_last_hidden_state_is_what_the_lm_head_reads(kind):
    model = tiny.model(kind)
    inputs = batch(kind)
    if kind == "t5":
        inputs["decoder_input_ids"] = torch.tensor([[0, 5, 9, 7], [0, 11, 4, 6]])
    with torch.no_grad():
        outputs = model(**inputs)
        hidden = outputs.last_hidden_state
        if kind == "t5":  # a tied T5 config rescales before its head; Flan-T5's is untied and does not
            hidden = hidden * model.config.text_config.d_model**-0.5
        logits = model.get_output_embeddings()(hidden)
    assert outputs.last_hidden_state.shape[:2] == outputs.logits.shape[:2]
    torch.testing.assert_close(logits, outputs.logits, rtol=0, atol=1e-6)
    assert model(**inputs, output_hidden_states=False).last_hidden_state is None


@pytest.mark.parametrize("decoding", [dict(num_beams=1), dict(num_beams=3, num_return_sequences=2)])
@pytest.mark.parametrize("kind", KINDS)
def test_generation_matches_transformers_builtin(kind, decoding):
    ours, oracle = with_oracle(kind)
    inputs = batch(kind)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, **decoding)
    assert torch.equal(ours.generate(**inputs, **settings), oracle.generate(**inputs, **settings))
    dict_settings = dict(settings, return_dict_in_generate=True, output_scores=True)
    ours_dict, oracle_dict = ours.generate(**inputs, **dict_settings), oracle.generate(**inputs, **dict_settings)
    assert torch.equal(ours_dict.sequences, oracle_dict.sequences)
    assert len(ours_dict.scores) == len(oracle_dict.scores) == 6


@pytest.mark.parametrize("kind", KINDS)
def test_generic_vlm_snippet_slices_exactly_the_answer(kind):
    """transformers' task-guide idiom: decoder-only output = the prompt, then the new tokens."""
    model = tiny.model(kind)
    processor = tiny.processor(kind)
    inputs = batch(kind)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    generated_ids = model.generate(**inputs, **settings)
    # The same decoding run on the embeddings alone gives the new tokens alone (the LLM's own convention).
    embeds_only = model.generate(
        pixel_values=inputs["pixel_values"],
        qformer_input_ids=inputs["qformer_input_ids"],
        qformer_attention_mask=inputs["qformer_attention_mask"],
        inputs_embeds=model.get_input_embeddings()(inputs["input_ids"]),
        attention_mask=inputs["attention_mask"],
        **settings,
    )
    if kind == "llama":
        assert torch.equal(generated_ids[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
        answer_ids = generated_ids[:, inputs["input_ids"].shape[1] :]
    else:  # an encoder-decoder returns its decoder sequence: start token, then the answer
        answer_ids = generated_ids
    assert answer_ids.shape[1] == 6 + (kind == "t5")
    assert torch.equal(answer_ids, embeds_only)
    answers = processor.batch_decode(answer_ids, skip_special_tokens=True)
    assert all(answers) and processor.post_process_image_text_to_text(answer_ids) == answers


def test_repetition_penalty_sees_only_generated_tokens_as_in_lavis():
    """LAVIS hands the LLM embeddings only, so the penalty ignores the prompt; the built-in penalises the prompt."""
    ours, oracle = with_oracle("llama")
    inputs = batch("llama")
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, repetition_penalty=50.0)
    prompt_length = inputs["input_ids"].shape[1]
    answers = ours.generate(**inputs, **settings)[:, prompt_length:]
    prompt_tokens = set(inputs["input_ids"].flatten().tolist())
    oracle_answers = oracle.generate(**inputs, **settings)[:, prompt_length:]
    assert not prompt_tokens & set(oracle_answers.flatten().tolist())  # the built-in avoids every prompt token
    assert not torch.equal(answers, oracle_answers)
    manual = ours.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)[:, prompt_length:]
    assert torch.equal(answers[:, :1], manual[:, :1])  # the first token has nothing to penalise yet


@pytest.mark.parametrize("kind", KINDS)
def test_batched_generation_equals_one_by_one(kind):
    model = tiny.model(kind)
    processor = tiny.processor(kind)
    texts = ["what colour is the big shape on the left?", "how many?", "describe the image in detail."]
    images = [tiny.image(i) for i in range(len(texts))]
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    batched = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert (batched["attention_mask"] == 0).any(), "the prompts must differ in length for this test"
    batched_answers = model.generate(**batched, **settings)[:, -8:]
    for i, (image, text) in enumerate(zip(images, texts)):
        single = processor(images=image, text=text, return_tensors="pt")
        single_output = model.generate(**single, **settings)
        assert torch.equal(single_output[0, -8:], batched_answers[i]), f"row {i} differs"


def test_default_prompt_when_no_text_is_given():
    """Without input_ids the LLM starts from the placeholders and BOS, as LAVIS does for an empty prompt."""
    model = tiny.model("llama")
    pixel_values = tiny.processor("llama")(images=[tiny.image(0), tiny.image(1)], return_tensors="pt")["pixel_values"]
    prompt_ids = [model.config.image_token_index] * tiny.NUM_QUERY_TOKENS + [model.config.text_config.bos_token_id]
    explicit = model.generate(pixel_values=pixel_values, input_ids=torch.tensor([prompt_ids] * 2), max_new_tokens=3)
    assert torch.equal(model.generate(pixel_values=pixel_values, max_new_tokens=3), explicit)


@pytest.mark.parametrize("kind", KINDS)
def test_video_frames_are_encoded_one_by_one_and_concatenated(kind):
    model = tiny.model(kind)
    processor = tiny.processor(kind)
    frames = [tiny.image(i) for i in range(3)]
    video = processor(videos=[frames], text="what happens?", return_tensors="pt")
    assert video["pixel_values"].shape == (1, 3, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    assert (video["input_ids"][0] == model.config.image_token_index).sum() == 3 * tiny.NUM_QUERY_TOKENS
    with torch.no_grad():
        video_features = model.get_image_features(
            video["pixel_values"], video["qformer_input_ids"], video["qformer_attention_mask"]
        ).pooler_output
        per_frame = [
            model.get_image_features(
                video["pixel_values"][:, t], video["qformer_input_ids"], video["qformer_attention_mask"]
            ).pooler_output
            for t in range(3)
        ]
        torch.testing.assert_close(video_features, torch.cat(per_frame, dim=1))
        decoder = {"decoder_input_ids": torch.tensor([[0]])} if kind == "t5" else {}
        assert model(**video, **decoder).logits.shape[0] == 1
    assert model.generate(**video, max_new_tokens=2).shape[0] == 1


def test_instruction_changes_the_visual_features():
    """The twist of InstructBLIP: the Q-Former reads the instruction, so the image features depend on it."""
    model = tiny.model("llama")
    processor = tiny.processor("llama")
    inputs = [processor(images=tiny.image(0), text=text, return_tensors="pt") for text in ("what colour?", "count")]
    with torch.no_grad():
        features = [model.get_image_features(x["pixel_values"], x["qformer_input_ids"]).pooler_output for x in inputs]
        no_instruction = model.get_image_features(inputs[0]["pixel_values"]).pooler_output
    assert not torch.allclose(features[0], features[1])
    assert not torch.allclose(features[0], no_instruction)


def test_padding_in_the_qformer_instruction_is_ignored():
    model = tiny.model("llama")
    processor = tiny.processor("llama")
    short = processor(images=tiny.image(0), text="hi", return_tensors="pt")
    padded = processor(images=[tiny.image(0)] * 2, text=["hi", "a much longer instruction"], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        alone = model.get_image_features(short["pixel_values"], short["qformer_input_ids"]).pooler_output
        in_batch = model.get_image_features(
            padded["pixel_values"], padded["qformer_input_ids"], padded["qformer_attention_mask"]
        ).pooler_output
    torch.testing.assert_close(alone[0], in_batch[0], rtol=1e-5, atol=1e-6)


def test_final_vision_layernorm_uses_lavis_epsilon_by_default():
    model = tiny.model("llama")
    assert model.vision_model.post_layernorm.eps == 1e-5
    assert all(layer.layer_norm1.eps == 1e-6 for layer in model.vision_model.encoder.layers)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    inputs = batch(kind)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    if kind == "t5":
        labels = torch.tensor([[5, 9, 7, 1], [11, 4, 1, -100]])
    gradients = []
    for checkpointing in (False, True):
        model = tiny.model(kind).train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**inputs, labels=labels).loss.backward()
        gradients.append(torch.cat([model.query_tokens.grad.flatten(), model.qformer.embeddings.layernorm.weight.grad]))
    torch.testing.assert_close(gradients[0], gradients[1])


def test_wrong_number_of_image_placeholders_is_an_error():
    model = tiny.model("llama")
    inputs = batch("llama")
    inputs["input_ids"][1, 0] = 10  # row 1 now has one placeholder too few
    with pytest.raises(ValueError, match=r"exactly 4 <image> placeholders.*\[4, 3\]"):
        model(**inputs)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch("llama")["input_ids"])


def test_wrong_image_size_is_an_error():
    model = tiny.model("llama")
    inputs = batch("llama")
    inputs["pixel_values"] = torch.zeros(2, 3, 24, 24)
    with pytest.raises(ValueError, match=r"spatial size \(24, 24\).*30x30"):
        model(**inputs)


def test_flan_t5_in_float16_warns(caplog):
    model = tiny.model("t5").to(torch.float16)
    inputs = batch("t5")
    with caplog.at_level(logging.WARNING, logger="hf_instructblip.modeling_instructblip"):
        model._warn_if_fp16_t5()
    assert "float16" in caplog.text and "bfloat16" in caplog.text


def test_query_tokens_stay_float32_when_the_model_is_loaded_in_bfloat16(tmp_path):
    tiny.model("llama").save_pretrained(tmp_path)
    model = InstructBlipForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.query_tokens.dtype == torch.float32
    assert model.language_projection.weight.dtype == torch.bfloat16
    inputs = batch("llama")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    assert model.generate(**inputs, max_new_tokens=2).shape[0] == 2


def test_presets_have_the_released_dimensions_on_the_meta_device():
    """Parameter counts of the full-size models, instantiated without memory."""
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(InstructBlipConfig.from_preset("vicuna7b"))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # LAVIS counts 985,894,528: no key bias in its qkv and the final LayerNorm outside the tower.
    assert count(model.vision_model) == 985_952_256
    assert count(model.qformer) == 185_660_160
    trainable = (
        count(model.qformer) + model.query_tokens.numel() + count(model.vision_model.post_layernorm)
        + count(model.language_projection)
    )
    # 185,660,160 + 32x768 queries + 2x1408 LayerNorm + (768x4096 + 4096) projection: the paper's "188M".
    assert trainable == 188_837_376
    assert model.language_projection.out_features == 4096
    for name, width in [("vicuna13b", 5120), ("flant5xl", 2048), ("flant5xxl", 4096)]:
        config = InstructBlipConfig.from_preset(name)
        assert config.text_config.hidden_size == width
        assert config.use_decoder_only_language_model == name.startswith("vicuna")


# ------------------------------------------------------------------------------ inputs validated at the boundary


def _replace(**changes):
    return lambda inputs: {**inputs, **{name: change(inputs) for name, change in changes.items()}}


BAD_MODEL_INPUTS = {  # change to the processor's batch of 2 → the error
    "pixel batch size": (_replace(pixel_values=lambda x: x["pixel_values"][:1]), r"disagree on the batch size"),
    "mask batch size": (_replace(attention_mask=lambda x: x["attention_mask"][:1]), r"disagree on the batch size"),
    "Q-Former ids batch size": (
        _replace(qformer_input_ids=lambda x: x["qformer_input_ids"][:1]), r"disagree on the batch size"
    ),
    "short attention mask": (
        _replace(attention_mask=lambda x: x["attention_mask"][:, 1:]), r"attention_mask must have the shape of its ids"
    ),
    "short Q-Former mask": (
        _replace(qformer_attention_mask=lambda x: x["qformer_attention_mask"][:, 1:]),
        r"qformer_attention_mask must have the shape of its ids",
    ),
    "float ids": (_replace(input_ids=lambda x: x["input_ids"].float()), r"input_ids must hold integer token ids"),
    "float Q-Former ids": (
        _replace(qformer_input_ids=lambda x: x["qformer_input_ids"].float()), r"qformer_input_ids must hold integer"
    ),
    "ids outside the vocabulary": (
        _replace(input_ids=lambda x: x["input_ids"] + 1000), r"input_ids hold ids outside the vocabulary"
    ),
    "1-channel pixels": (
        _replace(pixel_values=lambda x: x["pixel_values"][:, :1]), r"pixel_values must be \(batch, 3, height, width\)"
    ),
    "NaN pixels": (_replace(pixel_values=lambda x: x["pixel_values"] * float("nan")), r"NaN or infinite"),
    "inf pixels": (_replace(pixel_values=lambda x: x["pixel_values"] + float("inf")), r"NaN or infinite"),
    "uint8 pixels": (
        _replace(pixel_values=lambda x: x["pixel_values"].to(torch.uint8)), r"pixel_values must be normalized floats"
    ),
    "empty batch": (lambda x: {name: value[:0] for name, value in x.items()}, r"The batch is empty"),
    "video of 0 frames": (_replace(pixel_values=lambda x: x["pixel_values"][:, None][:, :0]), r"have no frames"),
    "placeholders without pixels": (
        lambda x: {name: value for name, value in x.items() if name != "pixel_values"},
        r"input_ids hold <image> placeholders but no pixel_values",
    ),
    "Q-Former text longer than its positions": (
        _replace(
            qformer_input_ids=lambda x: x["qformer_input_ids"][:, :1].repeat(1, 513),
            qformer_attention_mask=lambda x: torch.ones(2, 513, dtype=torch.long),
        ),
        r"qformer_input_ids has 513 positions; the model reads at most 512",
    ),
}


@pytest.mark.parametrize("case", BAD_MODEL_INPUTS)
def test_forward_and_generate_refuse_the_same_bad_inputs(case):
    change, message = BAD_MODEL_INPUTS[case]
    model, inputs = tiny.model("llama"), change(dict(batch("llama")))
    for run in (model, functools.partial(model.generate, max_new_tokens=2)):
        with pytest.raises(ValueError, match=message) as error:
            run(**inputs)
        assert "(got pixel_values (" in str(error.value) or "pixel_values" not in inputs  # the shapes are named


def test_labels_of_another_batch_size_are_refused_by_both_llm_kinds():
    for kind in KINDS:
        inputs = dict(batch(kind))
        labels = inputs["input_ids"][:1].clone()
        with pytest.raises(ValueError, match="disagree on the batch size"):
            tiny.model(kind)(**inputs, labels=labels)


def test_a_prompt_longer_than_the_llm_context_is_refused_and_the_processor_truncates_it_from_the_left():
    kwargs = tiny.config_kwargs("llama")
    model = tiny.model("llama", text_config={**kwargs["text_config"], "max_position_embeddings": 24})
    processor = tiny.processor("llama")
    text = "a question that is far too long for this language model?"
    inputs = processor(images=tiny.image(0), text=text, return_tensors="pt")
    for run in (model, functools.partial(model.generate, max_new_tokens=2)):
        with pytest.raises(ValueError, match=r"input_ids has \d+ positions; the model reads at most 24.*llm_max_length"):
            run(**inputs)
    # LAVIS's answer: keep the end of the instruction, which carries the question.
    truncated = processor(images=tiny.image(0), text=text, llm_max_length=16, return_tensors="pt")
    assert truncated["input_ids"].shape[1] == tiny.NUM_QUERY_TOKENS + 16
    model.generate(**truncated, max_new_tokens=2)
