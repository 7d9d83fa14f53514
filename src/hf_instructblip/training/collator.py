"""Batches of `{image, text_input, text_output}` → model inputs with LAVIS's loss layout, through the processor."""

import logging
import multiprocessing
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TRUNCATION_COUNTERS = ("instructions", "qformer_instructions", "answers")


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad to the longest row."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def _shared_counters():
    # Shared memory with its own lock: DataLoader workers (forked or spawned) receive the collator as a Process
    # argument, so their counts add up where the main process reads them.
    return multiprocessing.get_context("spawn").Array("q", len(TRUNCATION_COUNTERS))


@dataclass
class InstructBlipDataCollator:
    """Builds InstructBLIP training batches the way LAVIS does, from the processor's own inference inputs.

    The processor turns the images and instructions into exactly what it gives at inference (`pixel_values`, the
    placeholders + instruction ids, the Q-Former's instruction ids, truncated from the left at its
    `qformer_max_length`); the collator adds only the answer ids and the `-100` loss layout: the loss is taken on
    the answer tokens and the end-of-sequence token only.

    With 2 query tokens, `text_input="What is it?"`, `text_output="a cat"`, a second, shorter example, and right
    padding (`P` = pad id):

    Decoder-only LLM (LLaMA / Vicuna): one sequence, labels aligned with it (the LLM shifts them itself):

    ```
    input_ids       <image> <image> <s>  What is   it?  a    cat  </s>
    labels          -100    -100    -100 -100 -100 -100 a    cat  </s>
    input_ids       <image> <image> <s>  Hi?  yes  </s> P    P    P
    labels          -100    -100    -100 -100 yes  </s> -100 -100 -100
    ```

    Encoder-decoder LLM (Flan-T5): the encoder reads placeholders + instruction, the decoder is trained on the answer:

    ```
    input_ids       <image> <image> What is   it?  </s>
    labels          a       cat     </s>
    input_ids       <image> <image> Hi?  </s> P
    labels          yes     </s>    -100
    ```

    and in both cases `qformer_input_ids` = `[CLS] what is it? [SEP]` (+ padding, `qformer_attention_mask` 0 there).
    The LLM instruction is truncated from the left to `max_instruction_length` tokens (by the processor's
    `llm_max_length`), the answer from the right to `max_answer_length` tokens including `</s>`, as LAVIS's
    `max_txt_len` / `max_output_txt_len`. `truncated` counts the examples cut, summed over DataLoader workers.
    Examples whose image could not be read (`image=None`, already warned about by the recipe) are left out.

    Args:
        processor: an [`InstructBlipProcessor`].
        decoder_only: the model's `config.use_decoder_only_language_model`.
        max_instruction_length, max_answer_length: [`InstructBlipTrainingArguments`] holds their defaults (128,
            256) and passes them; given by hand, they are required.
        return_image_ids: add `image_ids`, the examples' `image_id`s (a list), for the trainer's vision cache.
    """

    processor: Any
    max_instruction_length: int
    max_answer_length: int
    decoder_only: bool = True
    return_image_ids: bool = False
    _counts: Any = field(default_factory=_shared_counters, init=False, repr=False, compare=False)

    def __post_init__(self):
        tokenizer = self.processor.tokenizer
        for attribute in ("pad_token_id", "eos_token_id"):
            if getattr(tokenizer, attribute) is None:
                name = attribute.removesuffix("_token_id")
                raise ValueError(f"The LLM tokenizer needs a {name} token for training; it has none.")
        if self.processor.qformer_tokenizer.pad_token_id is None:
            raise ValueError("The Q-Former tokenizer needs a pad token for training; it has none.")
        if self.max_answer_length < 2 or self.max_instruction_length < 2:
            raise ValueError("max_instruction_length and max_answer_length must be >= 2.")

    @property
    def truncated(self) -> dict[str, int]:
        """Examples truncated so far, per kind, in this process and its DataLoader workers."""
        with self._counts.get_lock():
            return dict(zip(TRUNCATION_COUNTERS, self._counts[:]))

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        examples = [example for example in examples if example["image"] is not None]
        if not examples:
            raise ValueError("Every example of this batch had an unreadable image; see the warnings above.")
        instructions = [example["text_input"] for example in examples]
        inputs = self.processor(
            images=[example["image"] for example in examples],
            text=instructions,
            llm_max_length=self.max_instruction_length,
        )
        self._count_instruction_truncation(instructions, inputs)
        batch = self._language_model_inputs(inputs["input_ids"], self._answer_ids(examples))
        batch["qformer_input_ids"] = pad(inputs["qformer_input_ids"], self.processor.qformer_tokenizer.pad_token_id)
        batch["qformer_attention_mask"] = pad(inputs["qformer_attention_mask"], 0)
        batch["pixel_values"] = torch.as_tensor(inputs["pixel_values"])
        if self.return_image_ids:
            batch["image_ids"] = [example.get("image_id") for example in examples]
        return batch

    def _language_model_inputs(self, prompts: list[list[int]], targets: list[list[int]]) -> dict[str, torch.Tensor]:
        pad_id = self.processor.tokenizer.pad_token_id
        if self.decoder_only:
            sequences = [prompt + target for prompt, target in zip(prompts, targets)]
            labels = [[IGNORE_INDEX] * len(prompt) + target for prompt, target in zip(prompts, targets)]
            return {
                "input_ids": pad(sequences, pad_id),
                "attention_mask": pad([[1] * len(ids) for ids in sequences], 0),
                "labels": pad(labels, IGNORE_INDEX),
            }
        return {
            "input_ids": pad(prompts, pad_id),
            "attention_mask": pad([[1] * len(ids) for ids in prompts], 0),
            "labels": pad(targets, IGNORE_INDEX),
            "decoder_attention_mask": pad([[1] * len(ids) for ids in targets], 0),
        }

    def _answer_ids(self, examples: list[dict]) -> list[list[int]]:
        tokenizer = self.processor.tokenizer
        rows = []
        for ids in tokenizer([example["text_output"] for example in examples], add_special_tokens=False)["input_ids"]:
            kept = ids[: self.max_answer_length - 1]
            self._count("answers", len(kept) < len(ids), self.max_answer_length)
            rows.append(kept + [tokenizer.eos_token_id])
        return rows

    def _count_instruction_truncation(self, instructions: list[str], inputs) -> None:
        # The processor truncated; the untruncated lengths, measured here, only tell how often.
        processor = self.processor
        llm_lengths = [len(ids) for ids in processor.tokenizer(instructions)["input_ids"]]
        qformer_lengths = [len(ids) for ids in processor.qformer_tokenizer(instructions)["input_ids"]]
        for llm_length, qformer_length in zip(llm_lengths, qformer_lengths):
            self._count("instructions", llm_length > self.max_instruction_length, self.max_instruction_length)
            self._count("qformer_instructions", qformer_length > processor.qformer_max_length,
                        processor.qformer_max_length)

    def _count(self, what: str, happened: bool, limit: int) -> None:
        if not happened:
            return
        with self._counts.get_lock():
            self._counts[TRUNCATION_COUNTERS.index(what)] += 1
            first = self._counts[TRUNCATION_COUNTERS.index(what)] == 1
        if first:
            logger.warning(
                "Truncating %s longer than %d tokens (LAVIS does the same); `collator.truncated` counts them.",
                what, limit,
            )


__all__ = ["IGNORE_INDEX", "InstructBlipDataCollator", "pad"]
