"""Ranked choice: the log-likelihood of each candidate answer given an image (or video) and an instruction.

The paper answers its multiple-choice and classification tasks by ranking a closed set of candidates under the
model instead of generating (§3, "vocabulary ranking"). LAVIS does it by running the whole model once per candidate
(its Vicuna path repeats the image, the Q-Former and the prompt for every candidate; its T5 path reuses the
encoder). Here the shared prefix runs once per example:

- image or video → vision tower → Q-Former → projection → prompt: once per example (batches of examples);
- decoder-only LLM: the prompt's key/value cache is kept and copied to every candidate row, so a candidate pass
  reads only the candidate's own tokens; the first candidate token is scored by the prompt pass's last logits;
- encoder-decoder LLM: the encoder output is kept and every candidate runs only through the decoder;
- candidates of all examples in a batch are scored together, `batch_size` rows per pass.

The scores equal per-candidate forward passes over `prompt + candidate` (tested to 1e-4 in float32).

Aggregation: `reduction="sum"` (default) is the candidate's total log-probability, which is what LAVIS ranks by:
its Vicuna loss averages over the padded candidate length, a divisor shared by all candidates of a question, and
its T5 loss sums. `reduction="mean"` divides by the candidate's token count (length-normalised), an option that
favours long candidates less harshly.

Candidates are tokenized as LAVIS tokenizes targets: with the LLM tokenizer's special tokens minus a leading bos,
so a Flan-T5 candidate ends with `</s>` and a Vicuna candidate has no end token.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from inspect import signature

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutput

from .inputs import batch_slices, check_batch, model_inputs


REDUCTIONS = ("sum", "mean")


@torch.no_grad()
def score_candidates(
    model,
    processor,
    images: Sequence,
    instructions: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 16,
    reduction: str = "sum",
    qformer_instructions: Sequence[str] | None = None,
) -> list[list[float]]:
    """Log-likelihood of every candidate answer of every example.

    Args:
        model: an `InstructBlipForConditionalGeneration` (decoder-only or encoder-decoder LLM), in eval mode.
        processor: its `InstructBlipProcessor`.
        images: PIL images (or anything the processor reads), or videos given as lists of frames.
        instructions: one formatted prompt per example; the candidate continues it directly.
        candidates: `candidates[i]` lists example i's answers; lists may differ in length, none may be empty.
        batch_size: examples per prompt pass, and candidate rows per candidate pass.
        reduction: `"sum"` (LAVIS's ranking) or `"mean"` (per token) of the candidate's token log-probabilities.
        qformer_instructions: what the Q-Former reads, when it must differ from the LLM's instruction.

    Returns:
        `scores[i][j]`: the score of `candidates[i][j]`; higher is more likely.
    """
    check_batch(images, instructions, batch_size, qformer_instructions)
    if len(candidates) != len(images):
        raise ValueError(f"Got {len(images)} examples but {len(candidates)} candidate lists: pass one per example.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    scores = []
    for batch in batch_slices(len(images), batch_size):
        token_ids = [candidate_token_ids(processor.tokenizer, cands, example=batch.start + i)
                     for i, cands in enumerate(candidates[batch])]
        qformer_batch = None if qformer_instructions is None else qformer_instructions[batch]
        prefix = encode_prefix(model, model_inputs(model, processor, images[batch], instructions[batch], qformer_batch))
        rows = [(example, ids) for example, example_ids in enumerate(token_ids) for ids in example_ids]
        row_scores = []
        for chunk in batch_slices(len(rows), batch_size):
            totals, lengths = score_rows(model, prefix, rows[chunk])
            row_scores += (totals / lengths if reduction == "mean" else totals).tolist()
        for example_ids in token_ids:
            scores.append(row_scores[: len(example_ids)])
            row_scores = row_scores[len(example_ids) :]
    return scores


def candidate_token_ids(tokenizer, candidates: Sequence[str], example: int = 0) -> list[list[int]]:
    """Token ids of each candidate as a continuation: the tokenizer's special tokens, minus a leading bos."""
    if isinstance(candidates, str) or not candidates:
        raise ValueError(f"candidates[{example}] must be a non-empty list of strings, got {candidates!r}.")
    token_ids = []
    for text, ids in zip(candidates, tokenizer(list(candidates), add_special_tokens=True)["input_ids"]):
        if tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]:
            ids = ids[1:]
        if not ids:
            raise ValueError(f"candidates[{example}] holds {text!r}, which has no tokens; every candidate needs one.")
        token_ids.append(ids)
    return token_ids


@dataclass
class Prefix:
    """What every candidate of a batch of examples shares, computed once.

    attention_mask: (B, S) mask of the prompt (image placeholders + instruction).
    cache: decoder-only: the LLM's key/value cache over the prompt.
    last_log_probs: decoder-only: (B, V) log-probabilities of the token after the prompt.
    encoder_hidden_states: encoder-decoder: (B, S, C) the LLM encoder's output.
    """

    attention_mask: torch.Tensor
    cache: DynamicCache | None = None
    last_log_probs: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None


def encode_prefix(model, inputs) -> Prefix:
    """Run the image(s), the Q-Former and the prompt once."""
    mask = inputs["attention_mask"]
    if model.config.use_decoder_only_language_model:
        # Left padding sits between the image tokens and the prompt; positions skip it, as in generation, so a
        # padded row computes what it computes alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = model(**inputs, position_ids=positions, use_cache=True, output_hidden_states=False, logits_to_keep=1)
        llm_output = output.language_model_outputs
        cache = llm_output["cache"] if "cache" in llm_output else llm_output["past_key_values"]
        return Prefix(mask, cache=cache, last_log_probs=output.logits[:, -1].float().log_softmax(-1))
    start = torch.full((mask.shape[0], 1), model.config.text_config.decoder_start_token_id, device=mask.device)
    output = model(**inputs, decoder_input_ids=start, use_cache=False, output_hidden_states=False)
    return Prefix(mask, encoder_hidden_states=output.language_model_outputs.encoder_last_hidden_state)


def score_rows(model, prefix: Prefix, rows: list[tuple[int, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities and token counts of `rows` = [(example index in the prefix batch, token ids)]."""
    device = prefix.attention_mask.device
    examples = torch.tensor([example for example, _ in rows], device=device)
    length = max(len(ids) for _, ids in rows)
    targets = torch.zeros(len(rows), length, dtype=torch.long, device=device)  # (R, L), right-padded
    target_mask = torch.zeros_like(targets)
    for row, (_, ids) in enumerate(rows):
        targets[row, : len(ids)] = torch.tensor(ids, device=device)
        target_mask[row, : len(ids)] = 1
    language_model = model.language_model
    prompt_mask = prefix.attention_mask[examples]
    if model.config.use_decoder_only_language_model:
        cache = DynamicCache(
            [(keys[examples], values[examples]) for keys, values, *_ in prefix.cache], config=language_model.config
        )
        positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(length, device=device)  # (R, L)
        logits = language_model(
            input_ids=targets,
            attention_mask=torch.cat([prompt_mask, target_mask], dim=1),
            position_ids=positions,
            use_cache=True,
            **{_cache_argument(language_model): cache},
        ).logits
        # Token 0 is predicted by the prompt's last position, token t by candidate position t - 1.
        first = prefix.last_log_probs[examples].gather(-1, targets[:, :1])
        rest = logits[:, :-1].float().log_softmax(-1).gather(-1, targets[:, 1:, None]).squeeze(-1)
        log_probs = torch.cat([first, rest], dim=1)
    else:
        start = model.config.text_config.decoder_start_token_id
        decoder_input_ids = torch.cat([torch.full_like(targets[:, :1], start), targets[:, :-1]], dim=1)
        logits = language_model(
            encoder_outputs=BaseModelOutput(last_hidden_state=prefix.encoder_hidden_states[examples]),
            attention_mask=prompt_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=target_mask,
            use_cache=False,
        ).logits
        log_probs = logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    return (log_probs * target_mask).sum(-1), target_mask.sum(-1)


def _cache_argument(language_model) -> str:
    """transformers 5 renamed the LLM's `past_key_values` argument to `cache`; accept either version."""
    return "cache" if "cache" in signature(language_model.forward).parameters else "past_key_values"
