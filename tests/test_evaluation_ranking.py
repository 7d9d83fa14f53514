"""Ranked choice: equal to brute-force per-candidate forward passes, with each image encoded once."""

import pytest
import torch

import tiny
from hf_instructblip.evaluation.ranking import candidate_token_ids, score_candidates


INSTRUCTIONS = ["question: what is it? answer:", "is it red?", "options: (a) cat (b) dog. answer:"]
CANDIDATES = [["yes", "no", "a red ball"], ["true"], ["cat", "dog", "a dog", "two cats", "x"]]


def visuals(kind: str) -> list:
    if kind == "image":
        return [tiny.image(seed) for seed in range(len(INSTRUCTIONS))]
    return [[tiny.image(10 * seed + frame) for frame in range(3)] for seed in range(len(INSTRUCTIONS))]


def brute_force(model, processor, visual, instruction, candidates) -> list[float]:
    """One full forward pass per candidate over prompt + candidate tokens; the model's own mean loss × length."""
    key = "videos" if isinstance(visual, list) else "images"
    inputs = processor(**{key: [visual]}, text=[instruction], return_tensors="pt")
    scores = []
    for ids in candidate_token_ids(processor.tokenizer, candidates):
        target = torch.tensor([ids])
        if model.config.use_decoder_only_language_model:
            input_ids = torch.cat([inputs["input_ids"], target], dim=1)
            labels = torch.cat([torch.full_like(inputs["input_ids"], -100), target], dim=1)
            loss = model(**{**inputs, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)},
                         labels=labels).loss
        else:
            loss = model(**inputs, labels=target).loss
        scores.append(-loss.item() * len(ids))
    return scores


@pytest.mark.parametrize("kind", ["llama", "t5"])
@pytest.mark.parametrize("visual", ["image", "video"])
def test_scores_equal_brute_force_and_encode_each_image_once(kind, visual):
    model, processor = tiny.model(kind), tiny.processor(kind)
    examples = visuals(visual)
    encoded = []
    model.vision_model.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))

    # batch_size 2: two prompt passes, and candidate chunks that cut across examples.
    scores = score_candidates(model, processor, examples, INSTRUCTIONS, CANDIDATES, batch_size=2)

    frames = 3 if visual == "video" else 1
    assert encoded == [2 * frames, 1 * frames]  # every image (frame) through the vision tower exactly once
    with torch.no_grad():
        expected = [brute_force(model, processor, *example) for example in zip(examples, INSTRUCTIONS, CANDIDATES)]
    assert [len(s) for s in scores] == [len(c) for c in CANDIDATES]
    for got, want in zip(scores, expected):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=0)


def test_mean_divides_by_token_count_and_batch_size_does_not_matter():
    model, processor = tiny.model("llama"), tiny.processor("llama")
    examples = visuals("image")
    summed = score_candidates(model, processor, examples, INSTRUCTIONS, CANDIDATES, batch_size=1)
    mean = score_candidates(model, processor, examples, INSTRUCTIONS, CANDIDATES, batch_size=7, reduction="mean")
    for cands, sums, means in zip(CANDIDATES, summed, mean):
        lengths = [len(ids) for ids in candidate_token_ids(processor.tokenizer, cands)]
        torch.testing.assert_close(torch.tensor(means), torch.tensor(sums) / torch.tensor(lengths, dtype=torch.float),
                                   atol=1e-5, rtol=0)


def test_candidates_tokenized_as_lavis_targets():
    # Vicuna-style: the leading bos is dropped and no end token is added; Flan-T5-style: </s> is appended.
    llama, t5 = tiny.llama_tokenizer(), tiny.t5_tokenizer()
    assert candidate_token_ids(llama, ["yes"]) == [llama("yes", add_special_tokens=False)["input_ids"]]
    assert candidate_token_ids(t5, ["yes"]) == [t5("yes", add_special_tokens=False)["input_ids"] + [t5.eos_token_id]]


@pytest.mark.parametrize(
    "candidates, reduction, message",
    [([["yes"], []], "sum", r"candidates\[1\] must be a non-empty list"),
     ([["yes"], [""]], "sum", r"candidates\[1\] holds '', which has no tokens"),
     ([["yes"]], "sum", "2 examples but 1 candidate lists"),
     ([["yes"], ["no"]], "max", "reduction must be one of")],
)
def test_bad_candidates_are_refused(candidates, reduction, message):
    model, processor = tiny.model("llama"), tiny.processor("llama")
    with pytest.raises(ValueError, match=message):
        score_candidates(model, processor, visuals("image")[:2], INSTRUCTIONS[:2], candidates, reduction=reduction)
