"""Encode each image once: `encode_images` + `image_embeds`, de-duplication of repeated images, static cache and
`torch.compile`; every fast path gives the plain path's tokens."""

import pytest
import torch

import tiny


KINDS = ["llama", "t5"]
GREEDY = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)


def vision_batch_sizes(model) -> list[int]:
    """Records the batch size of every vision tower call."""
    sizes = []
    model.vision_model.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    return sizes


def questions_about(images, kind="llama"):
    texts = ["what colour is it?", "how many shapes?", "describe the image.", "is it round?"][: len(images)]
    return tiny.processor(kind)(images=images, text=texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("kind", KINDS)
def test_image_embeds_give_the_pixel_values_results(kind):
    model = tiny.model(kind)
    inputs = questions_about([tiny.image(0), tiny.image(1)], kind)
    pixel_values = inputs.pop("pixel_values")
    image_embeds = model.encode_images(pixel_values)
    assert image_embeds.shape == (2, 1 + (tiny.IMAGE_SIZE // model.config.vision_config.patch_size) ** 2,
                                  model.config.vision_config.hidden_size)
    assert torch.equal(model.generate(**inputs, image_embeds=image_embeds, **GREEDY),
                       model.generate(**inputs, pixel_values=pixel_values, **GREEDY))
    decoder = {"decoder_input_ids": torch.zeros(2, 1, dtype=torch.long)} if kind == "t5" else {}
    with torch.no_grad():
        reused = model(**inputs, **decoder, image_embeds=image_embeds).logits
        plain = model(**inputs, **decoder, pixel_values=pixel_values).logits
    assert torch.equal(reused, plain)


def test_video_embeds_keep_one_row_per_frame():
    model = tiny.model("llama")
    frames = [tiny.image(i) for i in range(3)]
    video = tiny.processor("llama")(videos=[frames, frames[::-1]], text=["what happens?", "and now?"],
                                    padding=True, return_tensors="pt")
    pixel_values = video.pop("pixel_values")
    image_embeds = model.encode_images(pixel_values)
    assert image_embeds.shape[:2] == (2, 3)
    assert torch.equal(model.generate(**video, image_embeds=image_embeds, **GREEDY),
                       model.generate(**video, pixel_values=pixel_values, **GREEDY))


def test_one_image_many_turns_is_encoded_once():
    """The documented multi-turn pattern: encode once, ask one question after another."""
    model = tiny.model("llama")
    processor = tiny.processor("llama")
    image = tiny.image(0)
    calls = vision_batch_sizes(model)
    image_embeds = model.encode_images(processor(images=image, text="", return_tensors="pt")["pixel_values"])
    for question in ("what colour is it?", "how many shapes?"):
        inputs = processor(images=image, text=question, return_tensors="pt")
        expected = model.generate(**inputs, **GREEDY)
        inputs.pop("pixel_values")
        assert torch.equal(model.generate(**inputs, image_embeds=image_embeds, **GREEDY), expected)
    assert calls == [1, 1, 1]  # encode_images, then one per plain generate, none for the reuse


def test_pixel_values_and_image_embeds_together_are_an_error():
    model = tiny.model("llama")
    inputs = questions_about([tiny.image(0)])
    with pytest.raises(ValueError, match="either pixel_values or image_embeds"):
        model(**inputs, image_embeds=model.encode_images(inputs["pixel_values"]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_repeated_image_is_encoded_once_per_batch(kind):
    model = tiny.model(kind)
    calls = vision_batch_sizes(model)
    a, b = tiny.image(0), tiny.image(1)
    repeated = questions_about([a, b, a, a], kind)
    answers = model.generate(**repeated, **GREEDY)
    assert calls == [2]  # two distinct images among four rows
    calls.clear()
    for row in range(4):
        single = {key: value[row : row + 1] for key, value in repeated.items()}
        single_answer = model.generate(**single, **GREEDY)
        assert torch.equal(single_answer[:, -6:], answers[row : row + 1, -6:]), f"row {row} differs"
    assert calls == [1, 1, 1, 1]


def test_distinct_images_go_through_the_vision_tower_as_one_batch():
    model = tiny.model("llama")
    calls = vision_batch_sizes(model)
    model.generate(**questions_about([tiny.image(i) for i in range(3)]), **GREEDY)
    assert calls == [3]


def test_training_mode_does_not_de_duplicate():
    """Dropout would make two copies of one image differ; in training mode each row is encoded."""
    model = tiny.model("llama").train()
    calls = vision_batch_sizes(model)
    model.encode_images(questions_about([tiny.image(0)] * 3)["pixel_values"])
    assert calls == [3]


def test_static_cache_gives_the_dynamic_cache_tokens():
    model = tiny.model("llama")
    inputs = questions_about([tiny.image(0), tiny.image(1)])
    assert torch.equal(model.generate(**inputs, cache_implementation="static", **GREEDY),
                       model.generate(**inputs, **GREEDY))


def test_vision_and_qformer_compile_without_graph_breaks():
    """`fullgraph=True` fails on any graph break; the `eager` backend checks the capture without code generation."""
    model = tiny.model("llama")
    inputs = questions_about([tiny.image(0), tiny.image(1)])
    eager = model.get_image_features(inputs["pixel_values"], inputs["qformer_input_ids"],
                                     inputs["qformer_attention_mask"])
    torch._dynamo.reset()
    compiled = torch.compile(model.get_image_features, fullgraph=True, backend="eager")
    with torch.no_grad():
        features = compiled(inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"])
    torch.testing.assert_close(features.pooler_output, eager.pooler_output, rtol=0, atol=0)


def test_pipeline_with_one_image_and_several_questions_encodes_it_once(tmp_path):
    from transformers import pipeline

    tiny.model("llama").save_pretrained(tmp_path)
    tiny.processor("llama").save_pretrained(tmp_path)
    pipe = pipeline("image-text-to-text", model=str(tmp_path))
    calls = vision_batch_sizes(pipe.model)
    questions = ["what colour is it?", "how many shapes?", "is it round?"]
    answers = pipe(images=[tiny.image(0)] * 3, text=questions, max_new_tokens=4, return_full_text=False,
                   batch_size=3)
    assert calls == [1] and len(answers) == 3
