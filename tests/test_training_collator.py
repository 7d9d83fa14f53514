"""The collator's LAVIS loss layout, against expectations assembled by hand from the tokenizers' pieces."""

import pytest
import tiny
import torch

from hf_instructblip.training.collator import IGNORE_INDEX, InstructBlipDataCollator, truncate_left

NQ = tiny.NUM_QUERY_TOKENS


def examples(*pairs):
    return [{"image": tiny.image(i), "text_input": q, "text_output": a} for i, (q, a) in enumerate(pairs)]


def pieces(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_decoder_only_layout():
    processor = tiny.processor("llama")
    tok = processor.tokenizer
    img, bos, eos, pad = processor.image_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    batch = InstructBlipDataCollator(processor, decoder_only=True)(examples(("what is it?", "a cat"), ("hi?", "yes")))

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
    batch = InstructBlipDataCollator(processor, decoder_only=False)(examples(("what is it?", "a cat"), ("hi?", "yes")))

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
    batch = InstructBlipDataCollator(processor)(examples(("what is it?", "a cat"), ("hi?", "yes")))
    qtok = processor.qformer_tokenizer
    expected = qtok(["what is it?", "hi?"], padding="longest", return_tensors="pt")
    assert torch.equal(batch["qformer_input_ids"], expected["input_ids"])
    assert torch.equal(batch["qformer_attention_mask"], expected["attention_mask"])
    assert batch["pixel_values"].shape == (2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)


def test_truncation_keeps_the_end_of_the_instruction_and_the_start_of_the_answer(caplog):
    processor = tiny.processor("llama")
    tok = processor.tokenizer
    collator = InstructBlipDataCollator(processor, max_instruction_length=5, max_answer_length=3)
    batch = collator(examples(("abcdefgh", "xyzw")))
    row = batch["input_ids"][0].tolist()
    instruction = pieces(tok, "abcdefgh")
    assert row[NQ:] == [tok.bos_token_id] + instruction[-4:] + pieces(tok, "xyzw")[:2] + [tok.eos_token_id]
    qformer = batch["qformer_input_ids"][0].tolist()
    qtok = processor.qformer_tokenizer
    assert len(qformer) == 5 and qformer[0] == qtok.cls_token_id and qformer[-1] == qtok.sep_token_id
    assert collator.truncated == {"instructions": 1, "qformer_instructions": 1, "answers": 1}
    assert "Truncating instructions longer than 5 tokens" in caplog.text


def test_truncate_left_keeps_leading_special_tokens():
    assert truncate_left([1, 5, 6, 7, 2], [1, 0, 0, 0, 1], 4) == [1, 6, 7, 2]
    assert truncate_left([5, 6, 7, 1], [0, 0, 0, 1], 2) == [7, 1]
    assert truncate_left([1, 5], [1, 0], 4) == [1, 5]


def test_unreadable_images_are_left_out():
    processor = tiny.processor("llama")
    batch_examples = examples(("a?", "b"), ("c?", "d"))
    batch_examples[0]["image"] = None
    batch = InstructBlipDataCollator(processor)(batch_examples)
    assert batch["input_ids"].shape[0] == batch["pixel_values"].shape[0] == 1
    with pytest.raises(ValueError, match="Every example of this batch had an unreadable image"):
        InstructBlipDataCollator(processor)([batch_examples[0]])


def test_loss_is_taken_on_answer_and_eos_only():
    model, processor = tiny.model("llama"), tiny.processor("llama")
    batch = InstructBlipDataCollator(processor)(examples(("what is it?", "a cat"), ("hi?", "yes")))
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
        InstructBlipDataCollator(processor)
