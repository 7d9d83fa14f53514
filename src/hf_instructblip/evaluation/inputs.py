"""Model inputs for a batch of evaluation examples: images or videos + instructions → tensors on the model.

Generation and ranked choice build their inputs here, through the model's processor (the one input path), with the
padding a batched forward pass needs: left for a decoder-only LLM, so that every prompt ends at the last position
and the answer continues there; right (the tokenizer's default) for an encoder-decoder LLM, whose encoder reads the
prompt as a whole.
"""

from collections.abc import Sequence

from transformers import BatchFeature


def is_video(visual) -> bool:
    """A video is given as a list (or tuple) of frames; anything else is one image."""
    return isinstance(visual, (list, tuple))


def check_batch(
    images: Sequence, instructions: Sequence[str], batch_size: int, qformer_instructions: Sequence[str] | None = None
) -> None:
    if len(images) != len(instructions):
        raise ValueError(
            f"Got {len(images)} images or videos but {len(instructions)} instructions: pass one instruction per "
            "image or video."
        )
    if qformer_instructions is not None and len(qformer_instructions) != len(instructions):
        raise ValueError(
            f"Got {len(instructions)} instructions but {len(qformer_instructions)} qformer_instructions: pass one "
            "of each per example."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def batch_slices(total: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def model_inputs(
    model, processor, images: Sequence, instructions: Sequence[str], qformer_instructions: Sequence[str] | None = None
) -> BatchFeature:
    """Process one batch (all images, or all videos as frame lists) into padded tensors on `model`'s device,
    `pixel_values` in the model's dtype. The Q-Former reads `qformer_instructions` if given, else the
    instructions."""
    videos = [is_video(visual) for visual in images]
    if any(videos) and not all(videos):
        raise ValueError("A batch mixes images and videos (lists of frames); evaluate them in separate batches.")
    visuals = {"videos" if videos and all(videos) else "images": list(images)}
    padding_side = "left" if model.config.use_decoder_only_language_model else "right"
    inputs = processor(
        **visuals,
        text=list(instructions),
        qformer_text=None if qformer_instructions is None else list(qformer_instructions),
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    ).to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs
