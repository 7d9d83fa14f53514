"""Batched generation: the answer text alone, and the same answers at any batch size."""

import pytest
import torch

import tiny
from hf_instructblip.evaluation.generation import generate_answers


INSTRUCTIONS = ["what is it?", "question: what colour is the ball on the left? short answer:", "hi", "a photo of"]


@pytest.mark.parametrize("kind", ["llama", "t5"])
@pytest.mark.parametrize("visual", ["image", "video"])
def test_batched_answers_equal_one_by_one(kind, visual):
    model, processor = tiny.model(kind), tiny.processor(kind)
    if visual == "image":
        examples = [tiny.image(seed) for seed in range(4)]
    else:
        examples = [[tiny.image(10 * seed + frame) for frame in range(2)] for seed in range(4)]
    settings = dict(max_new_tokens=6, num_beams=2, length_penalty=0.0)
    one_by_one = generate_answers(model, processor, examples, INSTRUCTIONS, batch_size=1, **settings)
    batched = generate_answers(model, processor, examples, INSTRUCTIONS, batch_size=3, **settings)
    assert batched == one_by_one
    assert any(answer for answer in batched)  # the tiny models do say something


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_answer_is_the_generated_text_alone(kind):
    model, processor = tiny.model(kind), tiny.processor(kind)
    image = tiny.image(3)
    inputs = processor(images=image, text=INSTRUCTIONS[1], return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt = inputs["input_ids"]
    if sequences.shape[1] > prompt.shape[1] and torch.equal(sequences[:, : prompt.shape[1]], prompt):
        sequences = sequences[:, prompt.shape[1] :]  # a generate() that echoes the prompt (transformers' convention)
    expected = processor.batch_decode(sequences, skip_special_tokens=True)[0].strip()
    assert generate_answers(model, processor, [image], [INSTRUCTIONS[1]], max_new_tokens=5, do_sample=False) == [
        expected
    ]


def test_qformer_instructions_reach_the_qformer_only():
    model, processor = tiny.model("t5"), tiny.processor("t5")
    images, settings = [tiny.image(0), tiny.image(1)], dict(max_new_tokens=4, do_sample=False)
    default = generate_answers(model, processor, images, INSTRUCTIONS[:2], **settings)
    assert generate_answers(model, processor, images, INSTRUCTIONS[:2], qformer_instructions=INSTRUCTIONS[:2],
                            **settings) == default
    seen = []
    model.qformer.register_forward_hook(lambda module, args, output: seen.append(args[2]))  # qformer_input_ids
    generate_answers(model, processor, images, INSTRUCTIONS[:2], qformer_instructions=["x", "y"], **settings)
    assert seen[0].tolist() == processor.qformer_tokenizer(["x", "y"])["input_ids"]


def test_bad_arguments_are_refused():
    model, processor = tiny.model("t5"), tiny.processor("t5")
    with pytest.raises(ValueError, match="2 images or videos but 1 instructions"):
        generate_answers(model, processor, [tiny.image(0), tiny.image(1)], ["a"])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        generate_answers(model, processor, [tiny.image(0)], ["a"], batch_size=0)
    with pytest.raises(ValueError, match="mixes images and videos"):
        generate_answers(model, processor, [tiny.image(0), [tiny.image(1)]], ["a", "b"])
