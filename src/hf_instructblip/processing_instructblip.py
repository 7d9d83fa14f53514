# Copyright 2026 The hf_instructblip authors. Licensed under the Apache License, Version 2.0.
"""InstructBLIP processor: images or video frames + instruction → model inputs.

The instruction is tokenized twice: by the LLM tokenizer (after `num_query_tokens` `<image>` placeholders per
image or frame) and by the Q-Former's BERT tokenizer, truncated from the left at `qformer_max_length` tokens as in
LAVIS (the end of an instruction carries the question). Images go through `transformers`' BLIP image processor.
Training builds its inputs through this same path (`hf_instructblip.training`'s collator calls `__call__` and adds
only the answer), so what the model reads is the same in training and at inference.

This file ships to the Hub (`trust_remote_code`): it imports only `transformers`, `PIL`, `numpy` and `torch`.
"""

import io
import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
from transformers import BatchFeature, ProcessorMixin
from transformers.image_utils import load_image
from transformers.tokenization_utils_base import AddedToken
from transformers.utils import logging


logger = logging.get_logger(__name__)

IMAGE_TOKEN = "<image>"

# InstructBLIP has no chat format: the prompt is the instruction itself. The template joins the text parts of the
# conversation behind the LLM's bos (then a space, so the first word keeps its word-start piece as when the tokenizer
# adds bos itself); images are passed to the processor separately and become placeholders in front of the text. An
# assistant turn (training data) ends with eos, the target LAVIS trains on, and is marked for assistant-only loss.
CHAT_TEMPLATE = (
    "{%- macro text(message) -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}"
    "{{ part['text'] }}{{ ' ' if not loop.last }}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if bos_token -%}{{ bos_token }} {% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ text(message) }}{{ eos_token }}{%- endgeneration -%}"
    "{%- else -%}{{ text(message) }}{%- endif -%}"
    "{{ ' ' if not loop.last }}"
    "{%- endfor -%}"
)


def to_rgb(image, name: str = "image") -> PIL.Image.Image:
    """Decode and validate one image; every accepted form comes back as an RGB PIL image.

    Accepts a PIL image (any mode), encoded bytes, a local path (`str` or `pathlib.Path`), an http(s) URL, or an
    array or CPU tensor of shape (H, W) (grey), (H, W, C) or (C, H, W) with C = 1, 3 or 4: uint8 (0-255), uint16
    (0-65535) or float already in [0, 1]. Raises a `ValueError` naming `name` for anything else: undecodable or
    truncated data, an unreachable URL, decompression bombs, empty images, NaN/inf or out-of-range float pixels.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = _decode(io.BytesIO(bytes(image)), name)
    elif isinstance(image, (str, os.PathLike)):
        image = _decode(os.fspath(image), name)
    elif not isinstance(image, PIL.Image.Image):
        image = _array_to_pil(image, name)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name} is empty ({image.width}x{image.height} pixels).")
    return _pil_to_rgb(image)


def _decode(source, name: str) -> PIL.Image.Image:
    """`source`: a BytesIO, a local path, an http(s) URL or a base64 string."""
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        source = _fetch(source, name)
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x PIL's pixel limit PIL only warns; refuse those too rather than decode them.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            if isinstance(source, str) and not os.path.isfile(source):
                image = load_image(source)  # base64, else an error saying which sources are accepted
            else:
                image = PIL.Image.open(source)  # as stored: 16-bit grey is rescaled by `_pil_to_rgb`, not clipped
            image.load()  # decode now, so truncated data fails here and not deep inside preprocessing
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"{name} is refused as a possible decompression bomb ({error}). Raise PIL.Image.MAX_IMAGE_PIXELS if "
            "the image is trusted."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{name} could not be decoded as an image: {error}") from error
    return image


def _fetch(url: str, name: str) -> io.BytesIO:
    """The body at `url`. (`transformers.image_utils.load_image` fetches too, but neither checks the HTTP status nor
    names the failing input.)"""
    from huggingface_hub.utils import httpx  # the HTTP client transformers uses

    try:
        response = httpx.get(url, timeout=30, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise ValueError(
            f"{name}: the URL {url} could not be fetched ({error}). Check the address and the network, or download "
            "the image and pass its path."
        ) from error
    return io.BytesIO(response.content)


def _is_one_frame(value) -> bool:
    return isinstance(value, (PIL.Image.Image, str, bytes, os.PathLike)) or getattr(value, "ndim", 4) < 4


def _array_to_pil(array, name: str) -> PIL.Image.Image:
    shape = tuple(getattr(array, "shape", ()))
    if not shape:
        raise ValueError(f"{name} must be a PIL image, bytes, a path or URL, or an array; got {type(array).__name__}.")
    values = np.asarray(array)
    if values.ndim == 3 and values.shape[0] in (1, 3, 4) and values.shape[-1] not in (1, 3, 4):
        values = values.transpose(1, 2, 0)  # (C, H, W) → (H, W, C)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim not in (2, 3) or values.size == 0 or (values.ndim == 3 and values.shape[-1] not in (3, 4)):
        raise ValueError(
            f"{name} must be a non-empty (H, W), (H, W, C) or (C, H, W) array with 1, 3 or 4 channels, got shape "
            f"{shape}."
        )
    if values.dtype == np.uint16:
        values = np.round(values / 257.0).astype(np.uint8)  # 65535 → 255, as 16-bit PIL images
    elif np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ValueError(f"{name} holds NaN or infinite values.")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"{name} is a float array with values in [{low:g}, {high:g}]; float pixels must already be rescaled "
                "to [0, 1]. Pass 0-255 pixels as uint8."
            )
        values = np.round(values * 255.0).astype(np.uint8)
    elif values.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {values.dtype}; pass uint8 (0-255), uint16 or float (0-1) pixels.")
    return PIL.Image.fromarray(values)  # mode L, RGB or RGBA


def _pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Wide grey levels: PIL's direct conversion clips at 255, so rescale to 8 bits by the mode's range.
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else 65535.0
        values = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(values).convert("RGB")  # uint8 (H, W): mode L
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


# Fast tokenizers keep each call's padding and truncation settings in state shared by all callers; calls from
# several threads at once would apply one call's settings to another's text. Tokenization is serialized.
_TOKENIZER_LOCK = threading.Lock()

# A saved tokenizer holds at least one of these (fast tokenizers: tokenizer.json; slow ones: their vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.txt", "vocab.json")


def _check_tokenizer_files(directory: Path, name: str) -> None:
    if not any((directory / file).is_file() for file in TOKENIZER_FILES):
        raise OSError(
            f"The {name} is missing: {directory} holds none of {list(TOKENIZER_FILES)}. Save the processor with "
            "save_pretrained; no other tokenizer is substituted."
        )
    for path in directory.glob("*.json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise OSError(f"{path} ({name}) is corrupt: {error}.") from error


def _truncate_left(ids: list[int], special_mask: list[int], max_length: int) -> list[int]:
    """Drop tokens from the start of the text, keeping its leading special tokens (`<s>`)."""
    excess = len(ids) - max_length
    if excess <= 0:
        return list(ids)
    leading = next((i for i, special in enumerate(special_mask) if not special), len(ids))
    if leading >= max_length:
        raise ValueError(f"llm_max_length={max_length} leaves no room after {leading} leading special tokens.")
    return list(ids[:leading]) + list(ids[leading + excess :])


class InstructBlipProcessor(ProcessorMixin):
    r"""Builds InstructBLIP inputs from images (or videos) and instructions.

    Args:
        image_processor (`BlipImageProcessor` / `BlipImageProcessorPil`): resize (bicubic) + CLIP normalisation.
        tokenizer: the LLM tokenizer. `<image>` is added to it as a special token if it does not have it yet, so
            the LLM vocabulary must cover `image_token_id`. Its `padding_side` decides batched layouts: left for
            decoder-only LLMs (generation continues at the right end), right for encoder-decoder LLMs.
        qformer_tokenizer: the Q-Former's BERT tokenizer.
        num_query_tokens (`int`, defaults to 32): placeholders per image or video frame; equal to the model's.
        qformer_max_length (`int`, defaults to 128): the Q-Former text is truncated from the left to this many
            tokens (LAVIS's `max_txt_len`), with a warning, in training and at inference alike. The LLM text is
            truncated only when a call passes `llm_max_length` (LAVIS truncates it in training only).
        chat_template (`str`, *optional*): defaults to a template that joins the messages' text.

    Returns from `__call__` a `BatchFeature` with `input_ids`, `attention_mask`, `qformer_input_ids`,
    `qformer_attention_mask` (when text is given) and `pixel_values` of shape `(batch, 3, H, W)` for images or
    `(batch, frames, 3, H, W)` for videos.

    Example:

    ```python
    >>> inputs = processor(images=image, text="What is unusual about this image?", return_tensors="pt")
    >>> output_ids = model.generate(**inputs, max_new_tokens=20)  # decoder-only LLM: the prompt, then the answer
    >>> processor.batch_decode(output_ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    ```
    """

    text_kwargs = {"return_token_type_ids": False}

    def __init__(
        self,
        image_processor,
        tokenizer,
        qformer_tokenizer,
        num_query_tokens: int = 32,
        qformer_max_length: int = 128,
        chat_template: str | None = None,
        **kwargs,
    ):
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
        qformer_tokenizer.truncation_side = "left"
        self.num_query_tokens = num_query_tokens
        self.qformer_max_length = qformer_max_length
        super().__init__(image_processor, tokenizer, qformer_tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    @property
    def image_token(self) -> str:
        return IMAGE_TOKEN

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "qformer_input_ids", "qformer_attention_mask", "pixel_values"]

    def __call__(
        self, images=None, text=None, videos=None, qformer_text=None, llm_max_length: int | None = None, **kwargs
    ) -> BatchFeature:
        """Process `images` (one or a list) or `videos` (a list of videos, each a list of frames), and `text`
        (one instruction or a list, one per image or video).

        `qformer_text` (one string or a list, as `text`) is what the Q-Former reads when it must differ from the
        LLM's text: the instruction alone when `text` also holds the answer (the chat template's training path).
        It defaults to `text` without the LLM tokenizer's special tokens (a chat-rendered prompt starts with `<s>`),
        which mean nothing to the Q-Former's BERT tokenizer.

        `max_length` (with `padding="max_length"` or `truncation=True`) counts the LLM input's `<image>`
        placeholders, as transformers' processor does: the rows are `max_length` tokens long in all.

        `llm_max_length` truncates each LLM text from the left to that many tokens (the placeholders not counted;
        a leading `<s>` is kept), as LAVIS's training does with `max_txt_len`: the end of an instruction carries its
        question. The rows then come back unpadded, so it cannot be combined with `padding`, `truncation` or
        `max_length`.
        """
        if images is not None and videos is not None:
            raise ValueError("Pass either images or videos, not both.")
        if images is None and videos is None and text is None:
            raise ValueError("Nothing to process: pass images or videos, and/or text.")
        output_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        return_tensors = output_kwargs["text_kwargs"].pop("return_tensors", None)
        output_kwargs["images_kwargs"].pop("return_tensors", None)

        encoding, frames = {}, 0
        if images is not None:
            encoding["pixel_values"] = self._process_images(images, output_kwargs["images_kwargs"])
            frames = 1
        elif videos is not None:
            encoding["pixel_values"] = self._process_videos(videos, output_kwargs["images_kwargs"])
            frames = encoding["pixel_values"].shape[1]
        if qformer_text is not None and text is None:
            raise ValueError("qformer_text is given without text.")
        if text is not None:
            text = self._as_texts(text, "text")
            if frames and len(text) != len(encoding["pixel_values"]):
                kind = "images" if images is not None else "videos"
                raise ValueError(
                    f"Got {len(encoding['pixel_values'])} {kind} but {len(text)} texts: pass one instruction per "
                    f"{kind[:-1]}."
                )
            qformer_text = text if qformer_text is None else self._as_texts(qformer_text, "qformer_text")
            qformer_text = [self._without_llm_special_tokens(t) for t in qformer_text]
            if len(qformer_text) != len(text):
                raise ValueError(f"Got {len(text)} texts but {len(qformer_text)} qformer_text: pass one of each.")
            with _TOKENIZER_LOCK:
                llm_inputs = self._tokenize_llm(
                    text, frames * self.num_query_tokens, output_kwargs["text_kwargs"], llm_max_length
                )
                qformer_inputs = self._tokenize_qformer(qformer_text, output_kwargs["text_kwargs"])
            encoding.update(llm_inputs, qformer_input_ids=qformer_inputs["input_ids"],
                            qformer_attention_mask=qformer_inputs["attention_mask"])
        return BatchFeature(encoding, tensor_type=return_tensors)

    def _process_images(self, images, images_kwargs) -> np.ndarray:
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("images is an empty list.")
        if all(isinstance(sample, (list, tuple)) for sample in images):  # per-sample lists, as chat templates give
            counts = [len(sample) for sample in images]
            if any(count != 1 for count in counts):
                raise ValueError(f"InstructBLIP reads one image per instruction; the samples hold {counts} images.")
            images = [sample[0] for sample in images]
        images = [to_rgb(image, f"images[{i}]") for i, image in enumerate(images)]
        return np.asarray(self.image_processor(images, return_tensors="np", **images_kwargs)["pixel_values"])

    def _process_videos(self, videos, images_kwargs) -> np.ndarray:
        """videos: a list of videos, each a list of frames (or an array (T, H, W, C)) → (B, T, 3, H, W)."""
        if not videos:
            raise ValueError("videos is an empty list.")
        frames_given = [i for i, video in enumerate(videos) if not hasattr(video, "__len__") or _is_one_frame(video)]
        if frames_given:
            raise ValueError(
                f"videos must be a list of videos, each a list of frames or a (frames, H, W, C) array; videos"
                f"{frames_given[:5]} are single frames. For one video pass videos=[frames]."
            )
        lengths = {len(video) for video in videos}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"Every video needs the same, non-zero number of frames; got lengths {sorted(lengths)}.")
        frames = [
            to_rgb(frame, f"videos[{v}][{t}]") for v, video in enumerate(videos) for t, frame in enumerate(video)
        ]
        pixel_values = self.image_processor(frames, return_tensors="np", **images_kwargs)["pixel_values"]
        return np.asarray(pixel_values).reshape(len(videos), lengths.pop(), *pixel_values.shape[1:])

    @staticmethod
    def _as_texts(text, name: str) -> list[str]:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{name} must be a string or a non-empty list of strings.")
        return texts

    def _without_llm_special_tokens(self, text: str) -> str:
        for token in self.tokenizer.all_special_tokens:
            text = text.replace(token, " ")
        return text.strip()

    def _tokenize_llm(
        self, text: list[str], num_placeholders: int, text_kwargs: dict, max_length: int | None = None
    ) -> dict:
        if text_kwargs.get("max_length") is not None and num_placeholders:
            # `max_length` counts the whole LLM input, placeholders included, as in transformers' processor.
            if text_kwargs["max_length"] <= num_placeholders:
                raise ValueError(
                    f"max_length={text_kwargs['max_length']} leaves no room for text after the {num_placeholders} "
                    "<image> placeholders; it counts the placeholders too."
                )
            text_kwargs = {**text_kwargs, "max_length": text_kwargs["max_length"] - num_placeholders}
        llm = dict(self.tokenizer(text, **text_kwargs)) if max_length is None else (
            self._tokenize_llm_truncated(text, text_kwargs, max_length)
        )
        if num_placeholders:
            # The placeholders come first, in front of BOS and (with left padding) of the padding, as in LAVIS
            # where the query embeddings are concatenated before the tokenized prompt. Offsets (asked for by the
            # chat template's assistant mask) get empty spans, which match no character of the text.
            prefixes = {"input_ids": self.image_token_id, "attention_mask": 1, "offset_mapping": (0, 0)}
            for key, prefix in prefixes.items():
                if key in llm:
                    llm[key] = [[prefix] * num_placeholders + list(row) for row in llm[key]]
        return llm

    def _tokenize_llm_truncated(self, text: list[str], text_kwargs: dict, max_length: int) -> dict:
        combined = [key for key in ("padding", "truncation", "max_length", "return_offsets_mapping") if text_kwargs.get(key)]
        if combined:
            raise ValueError(f"llm_max_length returns unpadded, left-truncated rows; do not combine it with {combined}.")
        encoded = self.tokenizer(text, return_special_tokens_mask=True, **text_kwargs)
        rows = [
            _truncate_left(ids, special, max_length)
            for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"])
        ]
        if any(len(row) < len(ids) for row, ids in zip(rows, encoded["input_ids"])):
            logger.warning_once(
                f"Some LLM texts are longer than llm_max_length={max_length} tokens; the LLM reads only their last "
                "tokens (LAVIS truncates its training instructions from the left too)."
            )
        return {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}

    def _tokenize_qformer(self, text: list[str], text_kwargs: dict) -> dict:
        # Length limits and padding side are the LLM's; `add_special_tokens=False` (TRL passes it for chat-rendered
        # LLM prompts, whose template already holds bos) must not strip the Q-Former's [CLS]/[SEP], which LAVIS
        # always adds.
        llm_only = ("max_length", "truncation", "padding_side", "add_special_tokens", "return_offsets_mapping")
        kwargs = {k: v for k, v in text_kwargs.items() if k not in llm_only}
        lengths = [len(ids) for ids in self.qformer_tokenizer(text, add_special_tokens=True)["input_ids"]]
        if any(length > self.qformer_max_length for length in lengths):
            # Once per process: a training run meets long instructions in many batches (its collator counts them).
            logger.warning_once(
                f"Some instructions are longer than qformer_max_length={self.qformer_max_length} Q-Former tokens; "
                "the Q-Former reads only their last tokens (LAVIS truncates from the left too)."
            )
        return self.qformer_tokenizer(
            text, truncation=True, max_length=self.qformer_max_length, add_special_tokens=True, **kwargs
        )

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """Render (and with `tokenize=True`, process) conversations; see `ProcessorMixin.apply_chat_template`.

        When tokenizing, the Q-Former reads the conversation without its assistant turns: the instruction, as in
        LAVIS. An answer in a training conversation (TRL's `SFTTrainer` on `messages`) thus reaches the LLM as the
        target but never the instruction-aware visual features, which at inference see the question alone.
        """
        if kwargs.get("tokenize"):
            conversations, _ = self._normalize_conversations(conversation)
            instructions = [
                super(InstructBlipProcessor, self).apply_chat_template(
                    [message for message in messages if message["role"] != "assistant"], chat_template
                )
                for messages in conversations
            ]
            kwargs["processor_kwargs"] = {**(kwargs.get("processor_kwargs") or {}), "qformer_text": instructions}
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`ProcessorMixin.from_pretrained`, refusing a local folder whose tokenizer files are missing or corrupt.

        transformers would otherwise fall back to another tokenizer: the LLM's in place of a missing Q-Former
        tokenizer, or a default one, and the model would read wrong ids without an error.
        """
        folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if folder.is_dir():
            for name, directory in (("LLM tokenizer", folder), ("Q-Former tokenizer", folder / "qformer_tokenizer")):
                _check_tokenizer_files(directory, name)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """Save like any processor, minus the `processor_class` name.

        `AutoProcessor` resolves that name among `transformers`' own classes before any registered one, and
        `transformers` has its own `InstructBlipProcessor`. Without the name it follows the model config's
        `model_type` (registered by this package) or, with `trust_remote_code`, the saved `auto_map`.
        """
        saved = super().save_pretrained(save_directory, **kwargs)
        for path in Path(save_directory).glob("**/*config.json"):
            content = json.loads(path.read_text(encoding="utf-8"))
            if content.pop("processor_class", None) is not None:
                path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return saved

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs) -> list[str]:
        """Decode `generate()` outputs (the `<image>` placeholders are special tokens, so they are skipped).

        For a decoder-only LLM, `generate()` returns the prompt followed by the answer: decode
        `output_ids[:, input_ids.shape[1]:]` for the answer alone. The image-text-to-text pipeline does that with
        `return_full_text=False` (it cuts the decoded prompt off; the answer keeps its separating space).
        """
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


__all__ = ["InstructBlipProcessor"]
