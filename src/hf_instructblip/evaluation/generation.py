"""Batched answer generation: images or videos + instructions → answer strings.

Batching does not change the answers: a decoder-only LLM's prompts are left-padded (its positions skip the padding)
and an encoder-decoder's encoder masks its padding, so a batch of B gives what B calls of batch size 1 give.
"""

from collections.abc import Sequence

import torch

from .inputs import batch_slices, check_batch, model_inputs


@torch.no_grad()
def generate_answers(
    model,
    processor,
    images: Sequence,
    instructions: Sequence[str],
    *,
    batch_size: int = 8,
    qformer_instructions: Sequence[str] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Generate one answer per example, in order.

    Args:
        model: an `InstructBlipForConditionalGeneration` (decoder-only or encoder-decoder LLM).
        processor: its `InstructBlipProcessor`.
        images: PIL images (or anything the processor reads), or videos given as lists of frames; one kind per
            batch.
        instructions: one prompt per image or video, already formatted (see `tasks.EvalTask.instruction`).
        batch_size: examples per `generate()` call.
        qformer_instructions: what the Q-Former reads, when it must differ from the LLM's instruction (default:
            the same text, as LAVIS passes its prompt to both).
        generate_kwargs: any `generate()` argument (`num_beams`, `max_new_tokens`, `length_penalty`, ...).

    Returns:
        The answer text alone (no prompt, no special tokens), stripped of surrounding spaces as LAVIS does.
    """
    check_batch(images, instructions, batch_size, qformer_instructions)
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("generate_answers returns one answer per example; num_return_sequences must be 1.")
    answers = []
    for batch in batch_slices(len(images), batch_size):
        qformer_batch = None if qformer_instructions is None else qformer_instructions[batch]
        inputs = model_inputs(model, processor, images[batch], instructions[batch], qformer_batch)
        output = model.generate(**inputs, **generate_kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        if model.config.use_decoder_only_language_model:  # generate() returns the prompt, then the answer
            sequences = sequences[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in processor.batch_decode(sequences, skip_special_tokens=True)]
    return answers
