"""InstructBlipProcessor: layout of the inputs, truncation, chat, video, and every kind of bad input."""

import io
import socket
import threading

import numpy as np
import PIL.Image
import pytest
import torch
import transformers

import tiny
from hf_instructblip import InstructBlipProcessor


def test_layout_placeholders_then_prompt_and_the_instruction_twice():
    processor = tiny.processor("llama")
    inputs = processor(images=[tiny.image(0), tiny.image(1)], text=["what is it?", "hi"], padding=True,
                       return_tensors="pt")
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask", "qformer_input_ids", "qformer_attention_mask"}
    assert inputs["pixel_values"].shape == (2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    image_id, bos, pad = processor.image_token_id, processor.tokenizer.bos_token_id, processor.tokenizer.pad_token_id
    short = inputs["input_ids"][1].tolist()
    # Left padding sits between the placeholders and the prompt, as LAVIS concatenates queries and padded prompt.
    n_text = len(processor.tokenizer("hi")["input_ids"])
    n_pad = inputs["input_ids"].shape[1] - tiny.NUM_QUERY_TOKENS - n_text
    assert short == [image_id] * 4 + [pad] * n_pad + [bos] + processor.tokenizer("hi", add_special_tokens=False)["input_ids"]
    assert inputs["attention_mask"][1].tolist() == [1] * 4 + [0] * n_pad + [1] * n_text
    qformer = processor.qformer_tokenizer("what is it?")["input_ids"]
    assert inputs["qformer_input_ids"][0, : len(qformer)].tolist() == qformer


def test_matches_transformers_builtin_processor_on_the_same_tokenizers():
    ours = tiny.processor("llama")
    builtin = transformers.InstructBlipProcessor(tiny.image_processor(), tiny.llama_tokenizer(), tiny.bert_tokenizer(),
                                                 num_query_tokens=tiny.NUM_QUERY_TOKENS)
    kwargs = dict(images=[tiny.image(0), tiny.image(1)], text=["what is it?", "hi"], padding=True, return_tensors="pt")
    expected, got = builtin(**kwargs), ours(**kwargs)
    for key in ("pixel_values", "input_ids", "attention_mask"):
        torch.testing.assert_close(got[key], expected[key], msg=key)
    # The built-in pads the Q-Former text on the LLM tokenizer's (left) side, which shifts the text's absolute
    # positions; LAVIS pads it on the right, and so does this processor.
    assert got["qformer_attention_mask"][1].tolist() == sorted(got["qformer_attention_mask"][1].tolist(), reverse=True)
    assert expected["qformer_attention_mask"][1, 0] == 0


def test_pixel_values_follow_the_blip_eval_transform():
    """Resize to the square size with PIL bicubic, scale to [0, 1], CLIP mean/std: LAVIS's blip_image_eval."""
    image = tiny.image(3, size=57)
    pixel_values = tiny.processor("llama")(images=image, return_tensors="pt")["pixel_values"][0]
    resized = np.asarray(image.resize((tiny.IMAGE_SIZE, tiny.IMAGE_SIZE), PIL.Image.BICUBIC), dtype=np.float64) / 255
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = torch.tensor(((resized - mean) / std).transpose(2, 0, 1), dtype=torch.float32)
    torch.testing.assert_close(pixel_values, expected, atol=1e-5, rtol=0)


def test_qformer_text_is_truncated_from_the_left_with_a_warning(caplog):
    processor = tiny.processor("llama")
    processor.qformer_max_length = 8
    with caplog.at_level("WARNING"):
        inputs = processor(images=tiny.image(0), text="abcdefghij klm?")
    ids = inputs["qformer_input_ids"][0]
    tokenizer = processor.qformer_tokenizer
    assert len(ids) == 8 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[1:-1]).replace(" ", "").endswith("klm?")  # the end of the instruction survives
    assert "longer than qformer_max_length=8" in caplog.text
    assert len(inputs["input_ids"][0]) > 8  # the LLM prompt is not truncated


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_chat_messages_tokenize_like_the_instruction(kind):
    processor = tiny.processor(kind)
    bos = "<s> " if kind == "llama" else ""  # the template carries the LLM's bos, as TRL's collators expect
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == bos + "what is it?"
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": tiny.image(0)}, {"type": "text", "text": "hi"}]}],
        tokenize=True, return_dict=True, return_tensors="pt",
    )
    expected = processor(images=tiny.image(0), text="hi", return_tensors="pt")
    for key in expected:
        torch.testing.assert_close(inputs[key], expected[key])


def test_chat_answer_reaches_the_llm_with_eos_but_never_the_qformer():
    processor = tiny.processor("llama")
    exchange = [
        {"role": "user", "content": [{"type": "image", "image": tiny.image(0)}, {"type": "text", "text": "hue?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "dark red"}]},
    ]
    assert processor.apply_chat_template(exchange, tokenize=False) == "<s> hue? dark red</s>"
    inputs = processor.apply_chat_template(exchange, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True, processor_kwargs={"add_special_tokens": False})
    expected = processor(images=tiny.image(0), text="hue? dark red</s>", qformer_text="hue?")
    assert inputs["input_ids"] == expected["input_ids"]
    assert inputs["qformer_input_ids"] == processor(images=tiny.image(0), text="hue?")["qformer_input_ids"]
    answer = processor.tokenizer("dark red", add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    masked = [t for t, m in zip(inputs["input_ids"][0], inputs["assistant_masks"][0]) if m]
    assert masked == answer


def test_qformer_text_must_match_text():
    processor = tiny.processor("llama")
    with pytest.raises(ValueError, match="2 texts but 1 qformer_text"):
        processor(images=[tiny.image(0)] * 2, text=["a", "b"], qformer_text=["a"])
    with pytest.raises(ValueError, match="qformer_text is given without text"):
        processor(images=tiny.image(0), qformer_text="a")


def test_save_and_load_round_trip(tmp_path):
    processor = tiny.processor("t5")
    processor.save_pretrained(tmp_path)
    reloaded = InstructBlipProcessor.from_pretrained(tmp_path)
    assert reloaded.num_query_tokens == tiny.NUM_QUERY_TOKENS
    assert reloaded.image_token_id == processor.image_token_id
    kwargs = dict(images=[tiny.image(0)], text=["what is it?"], return_tensors="pt")
    for key, value in processor(**kwargs).items():
        torch.testing.assert_close(reloaded(**kwargs)[key], value)


def test_loads_a_processor_saved_by_transformers(tmp_path):
    builtin = transformers.InstructBlipProcessor(tiny.image_processor(), tiny.llama_tokenizer(), tiny.bert_tokenizer(),
                                                 num_query_tokens=tiny.NUM_QUERY_TOKENS)
    builtin.save_pretrained(tmp_path)
    ours = InstructBlipProcessor.from_pretrained(tmp_path)
    assert ours.num_query_tokens == tiny.NUM_QUERY_TOKENS
    torch.testing.assert_close(ours(images=tiny.image(0), text="hi", return_tensors="pt")["input_ids"],
                               builtin(images=tiny.image(0), text="hi", return_tensors="pt")["input_ids"])


def encoded(image: PIL.Image.Image, format="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_every_pil_mode_becomes_rgb(mode):
    rgb = tiny.image(0)
    if mode == "I;16":
        image = PIL.Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    else:
        image = rgb.convert(mode)
    pixel_values = tiny.processor("llama")(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    if mode == "I;16":  # 16-bit grey is rescaled, not clipped: the same picture as its 8-bit grey version
        grey = tiny.processor("llama")(images=rgb.convert("L"), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixel_values, grey, atol=1e-2, rtol=0)


def test_encoded_bytes_and_paths_are_decoded(tmp_path):
    image = tiny.image(0)
    path = tmp_path / "x.png"
    image.save(path)
    processor = tiny.processor("llama")
    expected = processor(images=image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor(images=encoded(image), return_tensors="pt")["pixel_values"], expected)
    torch.testing.assert_close(processor(images=str(path), return_tensors="pt")["pixel_values"], expected)


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"definitely not an image", r"images\[1\] could not be decoded"),
        (encoded(tiny.image(0), "JPEG")[:300], r"images\[1\] could not be decoded"),
        (PIL.Image.new("RGB", (0, 5)), r"images\[1\] is empty \(0x5 pixels\)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), r"images\[1\] must be a non-empty"),
        (3.5, r"images\[1\] must be a PIL image"),
    ],
    ids=["garbage-bytes", "truncated-jpeg", "zero-size-pil", "zero-size-array", "wrong-type"],
)
def test_bad_images_get_a_clear_error_naming_the_input(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny.processor("llama")(images=[tiny.image(0), bad], text=["a", "b"])


def test_decompression_bombs_are_refused(monkeypatch):
    data = encoded(PIL.Image.new("RGB", (64, 64)))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px is > 2x the limit: a "bomb"
    with pytest.raises(ValueError, match=r"images\[0\] is refused as a possible decompression bomb"):
        tiny.processor("llama")(images=data)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 3000)  # between 1x and 2x PIL only warns; refused as well
    with pytest.raises(ValueError, match="decompression bomb"):
        tiny.processor("llama")(images=data)


def test_image_and_text_counts_must_match():
    with pytest.raises(ValueError, match="Got 2 images but 3 texts"):
        tiny.processor("llama")(images=[tiny.image(0), tiny.image(1)], text=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"one image per instruction; the samples hold \[1, 2\]"):
        tiny.processor("llama")(images=[[tiny.image(0)], [tiny.image(1), tiny.image(2)]], text=["a", "b"])


def test_videos_need_equal_frame_counts():
    frames = [tiny.image(i) for i in range(3)]
    with pytest.raises(ValueError, match=r"same, non-zero number of frames; got lengths \[2, 3\]"):
        tiny.processor("llama")(videos=[frames, frames[:2]], text=["a", "b"])
    with pytest.raises(ValueError, match="either images or videos"):
        tiny.processor("llama")(images=frames[0], videos=[frames])


# ------------------------------------------------------------------------------------- every promised input form


def pixels(images, **kwargs):
    return tiny.processor("llama")(images=images, return_tensors="pt", **kwargs)["pixel_values"]


def test_every_image_form_the_docstring_promises_gives_the_same_pixels(tmp_path):
    rgb = tiny.image(0)
    grey = rgb.convert("L")
    path = tmp_path / "grey.png"
    grey.save(path)
    array = np.asarray(rgb)
    expected_rgb, expected_grey = pixels(rgb), pixels(grey)
    for form in (np.asarray(grey), np.asarray(grey)[:, :, None], path, str(path),
                 np.asarray(grey).astype(np.uint16) * 257, torch.from_numpy(np.asarray(grey).copy())):
        torch.testing.assert_close(pixels(form), expected_grey, atol=0, rtol=0)
    for form in (array, array.transpose(2, 0, 1), torch.from_numpy(array.copy())):
        torch.testing.assert_close(pixels(form), expected_rgb, atol=0, rtol=0)
    # Float pixels already in [0, 1] are not divided by 255 again.
    torch.testing.assert_close(pixels(array.astype(np.float32) / 255), expected_rgb, atol=0, rtol=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((8, 8, 3), np.nan, dtype=np.float32), r"images\[0\] holds NaN or infinite values"),
        (np.full((8, 8, 3), np.inf, dtype=np.float32), r"images\[0\] holds NaN or infinite values"),
        (np.full((8, 8, 3), 200.0, dtype=np.float32), r"values in \[200, 200\]; float pixels must already be rescaled"),
        (np.zeros((8, 8, 3), dtype=np.int64), r"images\[0\] has dtype int64; pass uint8"),
        (np.zeros((8, 8, 2), dtype=np.uint8), r"with 1, 3 or 4 channels, got shape \(8, 8, 2\)"),
    ],
    ids=["nan", "inf", "float-0-255", "int64", "2-channels"],
)
def test_pixel_arrays_that_would_give_wrong_pixels_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        pixels(bad)


def test_an_unreachable_url_is_named():
    with socket.socket() as probe:  # a local port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ValueError, match=rf"images\[0\]: the URL http://127.0.0.1:{port}/cat.png could not be fetched"):
        pixels(f"http://127.0.0.1:{port}/cat.png")


def test_a_flat_list_of_frames_is_not_taken_for_a_batch_of_videos():
    frames = [tiny.image(i) for i in range(3)]
    with pytest.raises(ValueError, match=r"videos\[0, 1, 2\] are single frames. For one video pass videos=\[frames\]"):
        tiny.processor("llama")(videos=frames, text="a")
    assert tiny.processor("llama")(videos=[frames], text="a")["pixel_values"].shape[:2] == (1, 3)
    with pytest.raises(ValueError, match="non-zero number of frames"):
        tiny.processor("llama")(videos=[[]], text="a")


def test_calls_from_several_threads_do_not_affect_each_other():
    """Fast tokenizers keep padding/truncation settings in shared state; concurrent calls must not mix them."""
    processor = tiny.processor("llama")
    texts = [f"question number {i} about what the image shows?" * 2 for i in range(32)]
    calls = {
        "padded to 40, truncated": lambda: processor(text=texts, padding="max_length", max_length=40, truncation=True),
        "unpadded": lambda: processor(text=texts),
        "padded right": lambda: processor(text=texts, padding=True, padding_side="right"),
    }
    expected = {name: dict(call()) for name, call in calls.items()}
    differences = []

    def repeat(name):
        for _ in range(20):
            differences.extend(name for key, value in calls[name]().items() if value != expected[name][key])

    threads = [threading.Thread(target=repeat, args=(name,)) for name in calls for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert differences == []


def test_max_length_counts_the_placeholders_like_the_builtin():
    processor = tiny.processor("llama")
    builtin = transformers.InstructBlipProcessor(
        processor.image_processor,
        processor.tokenizer,
        processor.qformer_tokenizer,
        num_query_tokens=tiny.NUM_QUERY_TOKENS,
    )
    texts = ["what is in the image?", "hi"]
    images = [tiny.image(0), tiny.image(1)]
    padded, truncated = dict(max_length=30), dict(truncation=True, max_length=12)
    for settings in (padded, truncated):
        settings["padding"] = "max_length"
        ours = processor(images=images, text=texts, return_tensors="pt", **settings)
        reference = builtin(images=images, text=texts, return_tensors="pt", **settings)
        assert ours["input_ids"].shape[1] == settings["max_length"]
        assert torch.equal(ours["input_ids"], reference["input_ids"]), settings
        assert torch.equal(ours["attention_mask"], reference["attention_mask"]), settings
    with pytest.raises(ValueError, match="max_length=4 leaves no room"):
        processor(images=images, text=texts, padding="max_length", max_length=4)
