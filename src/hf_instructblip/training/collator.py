"""Batches of `{image, text_input, text_output}` → model inputs with LAVIS's loss layout."""

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def truncate_left(ids: list[int], special_mask: list[int], max_length: int) -> list[int]:
    """Drop tokens from the start of the text, keeping leading special tokens (`<s>`, `[CLS]`).

    The end of an instruction carries the question ("... Question: what colour? Short answer:"), so LAVIS keeps it.
    """
    excess = len(ids) - max_length
    if excess <= 0:
        return ids
    leading = next((i for i, special in enumerate(special_mask) if not special), len(ids))
    if leading >= max_length:
        raise ValueError(f"max_length={max_length} leaves no room after {leading} leading special tokens.")
    return ids[:leading] + ids[leading + excess :]


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad to the longest row."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


@dataclass
class InstructBlipDataCollator:
    """Builds InstructBLIP training batches the way LAVIS does: the instruction goes to both the Q-Former and the
    LLM, the loss is taken on the answer tokens and the end-of-sequence token only.

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
    The instruction is truncated from the left to `max_instruction_length` LLM (and Q-Former) tokens, the answer
    from the right to `max_answer_length` tokens including `</s>`, as LAVIS's `max_txt_len` / `max_output_txt_len`.
    Examples whose image could not be read (`image=None`, already warned about by the recipe) are left out.

    Args:
        processor: an [`InstructBlipProcessor`] (image processor, LLM and Q-Former tokenizers, `num_query_tokens`).
        decoder_only: the model's `config.use_decoder_only_language_model`.
        return_image_ids: add `image_ids`, the examples' `image_id`s (a list), for the trainer's vision cache.
    """

    processor: Any
    decoder_only: bool = True
    max_instruction_length: int = 128
    max_answer_length: int = 256
    return_image_ids: bool = False
    truncated: dict = field(
        default_factory=lambda: {"instructions": 0, "qformer_instructions": 0, "answers": 0}, init=False
    )

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

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        examples = [example for example in examples if example["image"] is not None]
        if not examples:
            raise ValueError("Every example of this batch had an unreadable image; see the warnings above.")
        instructions = [example["text_input"] for example in examples]
        answers = [example["text_output"] for example in examples]

        batch = self._language_model_inputs(instructions, answers)
        qformer_ids = self._instruction_ids(self.processor.qformer_tokenizer, instructions, "qformer_instructions")
        batch["qformer_input_ids"] = pad(qformer_ids, self.processor.qformer_tokenizer.pad_token_id)
        batch["qformer_attention_mask"] = pad([[1] * len(ids) for ids in qformer_ids], 0)
        images = [example["image"] for example in examples]
        batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        if self.return_image_ids:
            batch["image_ids"] = [example.get("image_id") for example in examples]
        return batch

    def _language_model_inputs(self, instructions: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        placeholders = [self.processor.image_token_id] * self.processor.num_query_tokens
        prompts = [placeholders + ids for ids in self._instruction_ids(tokenizer, instructions, "instructions")]
        targets = self._answer_ids(answers)
        if self.decoder_only:
            sequences = [prompt + target for prompt, target in zip(prompts, targets)]
            labels = [[IGNORE_INDEX] * len(prompt) + target for prompt, target in zip(prompts, targets)]
            return {
                "input_ids": pad(sequences, tokenizer.pad_token_id),
                "attention_mask": pad([[1] * len(ids) for ids in sequences], 0),
                "labels": pad(labels, IGNORE_INDEX),
            }
        return {
            "input_ids": pad(prompts, tokenizer.pad_token_id),
            "attention_mask": pad([[1] * len(ids) for ids in prompts], 0),
            "labels": pad(targets, IGNORE_INDEX),
            "decoder_attention_mask": pad([[1] * len(ids) for ids in targets], 0),
        }

    def _instruction_ids(self, tokenizer, instructions: list[str], counter: str) -> list[list[int]]:
        encoded = tokenizer(instructions, add_special_tokens=True, return_special_tokens_mask=True)
        rows = []
        for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"]):
            rows.append(truncate_left(ids, special, self.max_instruction_length))
            self._count_truncation(counter, len(ids) > len(rows[-1]), self.max_instruction_length)
        return rows

    def _answer_ids(self, answers: list[str]) -> list[list[int]]:
        tokenizer = self.processor.tokenizer
        rows = []
        for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]:
            kept = ids[: self.max_answer_length - 1]
            self._count_truncation("answers", len(kept) < len(ids), self.max_answer_length)
            rows.append(kept + [tokenizer.eos_token_id])
        return rows

    def _count_truncation(self, what: str, happened: bool, limit: int) -> None:
        if not happened:
            return
        self.truncated[what] += 1
        if self.truncated[what] == 1:
            logger.warning(
                "Truncating %s longer than %d tokens (LAVIS does the same); `collator.truncated` counts them.",
                what, limit,
            )


__all__ = ["IGNORE_INDEX", "InstructBlipDataCollator", "pad", "truncate_left"]
