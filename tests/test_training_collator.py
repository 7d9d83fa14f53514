"""The collator's LAVIS loss layout, against expectations assembled by hand from the tokenizers' pieces."""

import io

import datasets
import numpy as np
import PIL.Image
import pytest
import tiny
import torch

from hf_instructblip.training.collator import IGNORE_INDEX, InstructBlipDataCollator
from hf_instructblip.training.recipes import prepare_dataset

NQ = tiny.NUM_QUERY_TOKENS


def collator(processor, max_instruction_length=128, max_answer_length=256, **kwargs):
    return InstructBlipDataCollator(processor, max_instruction_length, max_answer_length, **kwargs)


def examples(*pairs):
    return [{"image": tiny.image(i), "text_input": q, "text_output": a} for i, (q, a) in enumerate(pairs)]


def pieces(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_decoder_only_layout():
    processor = tiny.processor("llama")
    tok = processor.tokenizer
    img, bos, eos, pad = processor.image_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    batch = collator(processor, decoder_only=True)(examples(("what is it?", "a cat"), ("hi?", "yes")))

    long_q, long_a = pieces(tok, "what is it?"), pieces(tok, "a cat")
    short_q, short_a = pieces(tok, "hi?"), pieces(tok, "yes")
    row0 = [img] * NQ + [bos] + long_q + long_a + [eos]
    row1 = [img] * NQ + [bos] + short_q + short_a + [eos]
    row1_padded = row1 + [pad] * (len(row0) - len(row1))
    assert batch["input_ids"].tolist() == [row0, row1_padded]
    assert batch["attention_mask"].tolist() == [[1] * len(row0), [1] * len(row1) + [0] * (len(row0) - len(row1))]
    ignore = IGNORE_INDEX
    assert batch["labels"].tolist() == [
        [ignore] * (NQ + 1 + len(long_q)) + long_a + [eos],
        [ignore] * (NQ + 1 + len(short_q)) + short_a + [eos] + [ignore] * (len(row0) - len(row1)),
    ]
    assert "decoder_attention_mask" not in batch


def test_encoder_decoder_layout():
    processor = tiny.processor("t5")
    tok = processor.tokenizer
    img, eos, pad = processor.image_token_id, tok.eos_token_id, tok.pad_token_id
    batch = collator(processor, decoder_only=False)(examples(("what is it?", "a cat"), ("hi?", "yes")))

    long_q, short_q = pieces(tok, "what is it?"), pieces(tok, "hi?")
    long_a, short_a = pieces(tok, "a cat") + [eos], pieces(tok, "yes") + [eos]
    width = NQ + len(long_q) + 1
    assert batch["input_ids"].tolist() == [
        [img] * NQ + long_q + [eos],
        [img] * NQ + short_q + [eos] + [pad] * (width - NQ - len(short_q) - 1),
    ]
    assert batch["labels"].tolist() == [long_a, short_a + [IGNORE_INDEX] * (len(long_a) - len(short_a))]
    assert batch["decoder_attention_mask"].tolist() == [[1] * len(long_a), [1] * len(short_a) + [0] * (len(long_a) - len(short_a))]


def test_qformer_gets_the_instruction_and_pixels_are_processed():
    processor = tiny.processor("llama")
    batch = collator(processor)(examples(("what is it?", "a cat"), ("hi?", "yes")))
    qtok = processor.qformer_tokenizer
    expected = qtok(["what is it?", "hi?"], padding="longest", return_tensors="pt")
    assert torch.equal(batch["qformer_input_ids"], expected["input_ids"])
    assert torch.equal(batch["qformer_attention_mask"], expected["attention_mask"])
    assert batch["pixel_values"].shape == (2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)


def test_truncation_keeps_the_end_of_the_instruction_and_the_start_of_the_answer(caplog):
    processor = tiny.processor("llama")
    tok = processor.tokenizer
    processor.qformer_max_length = 5
    truncating = collator(processor, max_instruction_length=5, max_answer_length=3)
    batch = truncating(examples(("abcdefgh", "xyzw")))
    row = batch["input_ids"][0].tolist()
    instruction = pieces(tok, "abcdefgh")
    assert row[NQ:] == [tok.bos_token_id] + instruction[-4:] + pieces(tok, "xyzw")[:2] + [tok.eos_token_id]
    qformer = batch["qformer_input_ids"][0].tolist()
    qtok = processor.qformer_tokenizer
    assert len(qformer) == 5 and qformer[0] == qtok.cls_token_id and qformer[-1] == qtok.sep_token_id
    assert truncating.truncated == {"instructions": 1, "qformer_instructions": 1, "answers": 1}
    assert "Truncating instructions longer than 5 tokens" in caplog.text


def test_unreadable_images_are_left_out():
    processor = tiny.processor("llama")
    batch_examples = examples(("a?", "b"), ("c?", "d"))
    batch_examples[0]["image"] = None
    batch = collator(processor)(batch_examples)
    assert batch["input_ids"].shape[0] == batch["pixel_values"].shape[0] == 1
    with pytest.raises(ValueError, match="Every example of this batch had an unreadable image"):
        collator(processor)([batch_examples[0]])


def test_loss_is_taken_on_answer_and_eos_only():
    model, processor = tiny.model("llama"), tiny.processor("llama")
    batch = collator(processor)(examples(("what is it?", "a cat"), ("hi?", "yes")))
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    shifted_logits, shifted_labels = logits[:, :-1], batch["labels"][:, 1:]
    answer = shifted_labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(shifted_logits[answer], shifted_labels[answer])
    torch.testing.assert_close(model(**batch).loss, expected)
    assert answer.sum() == len(pieces(processor.tokenizer, "a cat")) + len(pieces(processor.tokenizer, "yes")) + 2


def test_tokenizer_without_pad_token_is_refused():
    processor = tiny.processor("llama")
    processor.tokenizer.pad_token = None
    with pytest.raises(ValueError, match="needs a pad token"):
        collator(processor)


# --- one input path: what training builds is what the processor gives at inference --------------------------------


def encoded_images() -> dict[str, bytes]:
    """One file per image mode the processor accepts, in a format that stores the mode as is."""
    rgb = tiny.image(3, size=24)
    grey16 = np.random.default_rng(1).integers(0, 65536, (24, 24)).astype(np.uint16)  # 16-bit grey: mode I;16
    images = {mode: (rgb.convert(mode), "PNG") for mode in ("1", "L", "LA", "P", "RGB", "RGBA")}
    images.update({mode: (rgb.convert(mode), "TIFF") for mode in ("CMYK", "YCbCr", "I", "F", "PA", "LAB")})
    images["I;16"] = (PIL.Image.fromarray(grey16), "PNG")
    transparent = rgb.convert("P")
    transparent.info["transparency"] = 0
    images["P+transparency"] = (transparent, "PNG")
    encoded = {}
    for name, (image, file_format) in images.items():
        buffer = io.BytesIO()
        image.save(buffer, format=file_format)
        encoded[name] = buffer.getvalue()
    return encoded


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_training_inputs_equal_inference_inputs_for_every_image_mode(kind):
    encoded = encoded_images()
    assert {PIL.Image.open(io.BytesIO(data)).mode for data in encoded.values()} >= {"I;16", "CMYK", "P", "LA", "L"}
    processor = tiny.processor(kind)
    processor.qformer_max_length = 10  # not the default, and shorter than the longer instructions below
    instructions = [f"question {i}: what colour is the thing on the left?" if i % 2 else f"what is {i}?"
                    for i in range(len(encoded))]
    rows = {"image": [{"bytes": data, "path": None} for data in encoded.values()], "text_input": instructions,
            "text_output": ["red"] * len(encoded)}
    features = datasets.Features({"image": datasets.Image(), "text_input": datasets.Value("string"),
                                  "text_output": datasets.Value("string")})
    prepared = prepare_dataset(datasets.Dataset.from_dict(rows, features=features), "custom", name="modes")
    batch = collator(processor, decoder_only=kind == "llama")([prepared[i] for i in range(len(encoded))])

    for i, (mode, data) in enumerate(encoded.items()):
        inference = processor(images=PIL.Image.open(io.BytesIO(data)), text=instructions[i], return_tensors="pt")
        assert torch.equal(batch["pixel_values"][i], inference["pixel_values"][0]), mode
        qformer = batch["qformer_input_ids"][i][batch["qformer_attention_mask"][i].bool()]
        assert torch.equal(qformer, inference["qformer_input_ids"][0]), mode
        prompt = inference["input_ids"][0]
        assert torch.equal(batch["input_ids"][i, : len(prompt)], prompt), mode
        if kind == "llama":  # the prompt is not scored; what follows it is the answer
            assert (batch["labels"][i, : len(prompt)] == IGNORE_INDEX).all()
    assert len(inference["qformer_input_ids"][0]) == 10  # the last instruction was truncated by the processor


def test_a_long_instruction_is_truncated_as_the_processor_truncates_it_at_inference():
    processor = tiny.processor("llama")
    instruction = "describe every object you can see in this picture, then say which one is the largest?"
    batch = collator(processor, max_instruction_length=12)(examples((instruction, "a cat")))
    inference = processor(images=tiny.image(0), text=instruction, llm_max_length=12, return_tensors="pt")
    prompt = inference["input_ids"][0]
    assert len(prompt) == NQ + 12 and prompt[NQ] == processor.tokenizer.bos_token_id  # <s> kept, the start cut
    assert processor.tokenizer.decode(prompt[NQ + 1 :]).endswith("largest?")
    assert torch.equal(batch["input_ids"][0, : len(prompt)], prompt)
    with pytest.raises(ValueError, match="do not combine it with \\['padding'\\]"):
        processor(images=tiny.image(0), text=instruction, llm_max_length=12, padding=True)


def test_truncation_counts_add_up_over_dataloader_workers():
    processor = tiny.processor("llama")
    processor.qformer_max_length = 12
    counting = collator(processor, max_instruction_length=12, max_answer_length=4)
    long, short = "what colour is the thing on the left of it?", "what?"
    rows = examples(*[(long if i % 3 == 0 else short, "red square" if i % 4 == 0 else "red") for i in range(24)])
    loader = torch.utils.data.DataLoader(rows, batch_size=3, num_workers=2, collate_fn=counting)
    assert sum(len(batch["input_ids"]) for batch in loader) == 24
    assert counting.truncated == {"instructions": 8, "qformer_instructions": 8, "answers": 6}
