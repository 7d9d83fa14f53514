"""Ranked choice speed: `score_candidates` (shared prefix once) vs scoring each candidate with its own forward pass.

On the ~131M "small" InstructBLIP of `run.py` (vision 12x384 at 224 px, Q-Former 12x384, LLaMA 8x512),
for 4 and 20 candidates per question, three ways to get the same numbers:

- naive: one full forward pass per candidate over image + prompt + candidate (vision tower, Q-Former and the whole
  prompt again for every candidate);
- LAVIS: what LAVIS's Vicuna `_predict_class` does: the image and the Q-Former once per question, then one batched
  LLM pass over prompt + candidate for all candidates (the prompt is repeated per candidate);
- ours: `score_candidates`: image, Q-Former and prompt once (its KV cache copied to the candidate rows), then one
  batched pass over the candidate tokens alone.

Tokenizers are the tests' character-level ones (32 image tokens + a 53-token prompt; candidates of 4-8 tokens). Prints medians per
question and the speed ratios (baseline time / ours), and the largest score difference from the naive passes.

    python benchmarks/bench_ranked_choice.py [--questions 2] [--repeats 3] [--threads 2]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import tiny  # noqa: E402
from run import build_ours, build_processor  # noqa: E402

from hf_instructblip.evaluation.ranking import candidate_token_ids, score_candidates  # noqa: E402


QUESTION = "Question: Which of these states is farthest north? Short answer:"
WORDS = ["ohio", "maine", "texas", "utah", "iowa", "idaho", "nevada", "oregon", "kansas", "alaska", "hawaii",
         "montana", "vermont", "georgia", "florida", "indiana", "arizona", "new york", "colorado", "delaware"]


def build(threads: int):
    torch.set_num_threads(threads)
    processor = build_processor()
    return build_ours(processor.image_token_id).eval(), processor


def make_questions(count: int, num_candidates: int):
    candidates = [[WORDS[(q + k) % len(WORDS)] for k in range(num_candidates)] for q in range(count)]
    return [tiny.image(q, size=224) for q in range(count)], [QUESTION] * count, candidates


@torch.no_grad()
def naive_scores(model, processor, images, instructions, candidates) -> list[list[float]]:
    """One forward pass of the whole model per candidate; the candidate's summed log-probability."""
    scores = []
    for image, instruction, cands in zip(images, instructions, candidates):
        inputs = processor(images=[image], text=[instruction], return_tensors="pt")
        row = []
        for ids in candidate_token_ids(processor.tokenizer, cands):
            input_ids = torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)
            logits = model(**{**inputs, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)},
                           output_hidden_states=False).logits
            log_probs = logits[0, -len(ids) - 1 : -1].log_softmax(-1)
            row.append(log_probs.gather(-1, torch.tensor(ids)[:, None]).sum().item())
        scores.append(row)
    return scores


@torch.no_grad()
def lavis_scores(model, processor, images, instructions, candidates) -> list[list[float]]:
    """LAVIS's Vicuna path: image features once per question, then one LLM pass over prompt + candidate for all of
    that question's candidates (the prompt repeated per candidate, candidates right-padded)."""
    scores = []
    for image, instruction, cands in zip(images, instructions, candidates):
        inputs = processor(images=[image], text=[instruction], return_tensors="pt")
        features = model.get_image_features(inputs["pixel_values"], inputs["qformer_input_ids"],
                                            inputs["qformer_attention_mask"]).pooler_output  # (1, 32, C)
        prompt = inputs["input_ids"][:, features.shape[1]:]
        token_ids = candidate_token_ids(processor.tokenizer, cands)
        length = max(map(len, token_ids))
        targets = torch.tensor([ids + [0] * (length - len(ids)) for ids in token_ids])
        mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in token_ids])
        text = torch.cat([prompt.expand(len(cands), -1), targets], dim=1)
        embeds = torch.cat([features.expand(len(cands), -1, -1), model.get_input_embeddings()(text)], dim=1)
        attention = torch.cat([torch.ones(len(cands), embeds.shape[1] - length, dtype=torch.long), mask], dim=1)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=attention).logits
        log_probs = logits[:, -length - 1 : -1].log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
        scores.append((log_probs * mask).sum(-1).tolist())
    return scores


def ours_scores(model, processor, images, instructions, candidates) -> list[list[float]]:
    return score_candidates(model, processor, images, instructions, candidates, batch_size=len(candidates[0]))


METHODS = {"naive": naive_scores, "lavis": lavis_scores, "ours": ours_scores}


def run_scenario(model, processor, num_candidates: int, questions: int = 2, repeats: int = 3, warmup: int = 1) -> dict:
    """Median seconds per question of each method (alternated run by run) and the largest score difference."""
    data = make_questions(questions, num_candidates)
    reference = naive_scores(model, processor, *data)
    max_diff = max(abs(a - b) for method in ("lavis", "ours") for got, want in zip(METHODS[method](model, processor,
                   *data), reference) for a, b in zip(got, want))
    times = {name: [] for name in METHODS}
    for repeat in range(warmup + repeats):
        for name, method in METHODS.items():
            start = time.perf_counter()
            method(model, processor, *data)
            if repeat >= warmup:
                times[name].append((time.perf_counter() - start) / questions)
    return {"candidates": num_candidates, **{name: statistics.median(t) for name, t in times.items()},
            "max_diff": max_diff}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model, processor = build(args.threads)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"small InstructBLIP, {parameters:.1f}M parameters, cpu float32, torch {torch.__version__}, "
          f"{args.threads} threads, {args.questions} questions, median of {args.repeats}")
    print("\n| candidates | naive per-candidate (s/question) | LAVIS Vicuna path (s/question) | ours (s/question) |"
          " naive / ours | LAVIS / ours | max score diff vs naive |")
    print("|---|---|---|---|---|---|---|")
    for num_candidates in (4, 20):
        r = run_scenario(model, processor, num_candidates, args.questions, args.repeats)
        print(f"| {r['candidates']} | {r['naive']:.3f} | {r['lavis']:.3f} | {r['ours']:.3f} | "
              f"{r['naive'] / r['ours']:.1f}x | {r['lavis'] / r['ours']:.1f}x | {r['max_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
