"""The benchmark suite: hf_instructblip side by side with transformers' built-in InstructBLIP (or the naive method).

One process builds a ~131M-parameter "small" InstructBLIP (vision 12×384, Q-Former 12×384, LLaMA 8×512, vocabulary
32001) and gives the built-in the same weights. Every scenario alternates the two sides run by run, so machine noise
hits both alike, and reports medians and the ratio reference / ours (> 1: ours is faster or, for memory, smaller):

- `generate`, batch 1 and 8 (different images), 20 new tokens, vs the built-in;
- one `generate` call with 8 instructions about the same image (the image repeated in the batch), 5 new tokens, vs
  the built-in, which encodes the image 8 times;
- ranked choice of 20 candidates (`hf_instructblip.evaluation.score_candidates`) vs a forward pass per candidate;
- a Q-Former-only training step (forward, backward, AdamW) with the vision cache (every image a hit) vs without;
- peak memory of a Q-Former-only step vs full fine-tuning (each in a fresh process: peak RSS on CPU);
- `generate` with a static cache and the compiled LLM step vs eager (`--compile`; minutes of compilation on CPU).

Each speed row also says whether both sides gave the same tokens (or scores). Inputs go through the real processor
(character-level tokenizers from tests/tiny.py, BLIP's 224×224 image processor).

    python benchmarks/run.py [--repeats 5] [--threads 2] [--compile]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Busy-waiting OpenMP threads make every parallel region cost a time slice when another process holds a core
# (shared machines); passive waiting keeps the timings about the model. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import PIL.Image
import torch
import transformers
from transformers import BlipImageProcessorPil, CompileConfig, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny  # noqa: E402  (the character-level tokenizers the tests use)

from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor  # noqa: E402
from hf_instructblip.training.trainer import freeze_for_instruction_tuning  # noqa: E402
from hf_instructblip.training.vision_cache import VisionFeatureCache  # noqa: E402


QUESTIONS = [
    "what colour is the car on the left?", "how many people are there?", "what is the man holding?",
    "is it day or night?", "what is written on the sign?", "where was this photo taken?",
    "what animal is in the picture?", "describe the image in detail.",
]
ANSWERS = ["red", "blue", "two", "yes", "a dog", "in a park", "a car", "no"]


# --- models and inputs -------------------------------------------------------------------------------------------------


def build_processor() -> InstructBlipProcessor:
    return InstructBlipProcessor(
        BlipImageProcessorPil(size={"height": 224, "width": 224}), tiny.llama_tokenizer(), tiny.bert_tokenizer(),
        num_query_tokens=32,
    )


def small_config_kwargs(image_token_index: int) -> dict:
    return dict(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                           image_size=224, patch_size=14, initializer_range=0.02, post_layernorm_eps=1e-6),
        qformer_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                            vocab_size=30523, cross_attention_frequency=2),
        text_config=LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                                vocab_size=32001, pad_token_id=3, bos_token_id=1, eos_token_id=2).to_dict(),
        num_query_tokens=32,
        image_token_index=image_token_index,
    )


def build_ours(image_token_index: int) -> InstructBlipForConditionalGeneration:
    torch.manual_seed(0)
    return InstructBlipForConditionalGeneration(InstructBlipConfig(**small_config_kwargs(image_token_index)))


def build_builtin(ours) -> transformers.InstructBlipForConditionalGeneration:
    kwargs = small_config_kwargs(ours.config.image_token_index)
    kwargs["vision_config"].pop("post_layernorm_eps")  # the built-in's is fixed at 1e-6, ours is set to match
    builtin = transformers.InstructBlipForConditionalGeneration(transformers.InstructBlipConfig(**kwargs))
    builtin.load_state_dict(ours.state_dict(), strict=True)
    return builtin.eval()


def images(count: int, seed: int = 0) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(count)]


# --- timing ------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    reference: str
    ours: float
    theirs: float
    target: str
    check: str
    unit: str = "s"

    @property
    def ratio(self) -> float:
        return self.theirs / self.ours


def alternate(ours, theirs, repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds of `ours()` and `theirs()`, called in turn."""
    times = {ours: [], theirs: []}
    for repeat in range(warmup + repeats):
        for run in (ours, theirs):
            start = time.perf_counter()
            run()
            if repeat >= warmup:
                times[run].append(time.perf_counter() - start)
    return statistics.median(times[ours]), statistics.median(times[theirs])


# --- scenarios ---------------------------------------------------------------------------------------------------------


def greedy(new_tokens: int) -> dict:
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def generate_rows(ours, builtin, processor, args) -> list[Row]:
    """Plain generate on different images, and 8 instructions about one image."""
    cases = [
        ("generate, batch 1, 20 new tokens", images(1), QUESTIONS[:1], 20, "≥ 1.0"),
        ("generate, batch 8 (8 images), 20 new tokens", images(8), QUESTIONS, 20, "≥ 1.0"),
        ("8 instructions about one image, 5 new tokens", images(1) * 8, QUESTIONS, 5, "≥ 1.6"),
    ]
    rows = []
    for scenario, pictures, questions, new_tokens, target in cases:
        inputs = processor(images=pictures, text=questions, padding=True, return_tensors="pt")
        settings = greedy(new_tokens)
        with torch.no_grad():
            same = torch.equal(  # compares the new tokens: the built-in puts the prompt in front
                ours.generate(**inputs, **settings)[:, -new_tokens:],
                builtin.generate(**inputs, **settings)[:, -new_tokens:],
            )
            ours_s, builtin_s = alternate(lambda: ours.generate(**inputs, **settings),
                                          lambda: builtin.generate(**inputs, **settings), args.repeats, args.warmup)
        check = f"same tokens: {same}"
        if len(pictures) > 1:
            check += f"; duplicate search {1e3 * duplicate_search_s(inputs['pixel_values']):.1f} ms"
        rows.append(Row(scenario, "transformers built-in", ours_s, builtin_s, target, check))
    return rows


def duplicate_search_s(pixel_values: torch.Tensor) -> float:
    """What finding equal images costs `encode_images` (its `torch.unique` over the rows), median of 5."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch.unique(pixel_values.flatten(1), dim=0, return_inverse=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ranked_choice_row(ours, processor, args) -> Row:
    """`score_candidates` (image and prompt once) vs one forward pass per candidate (bench_ranked_choice.py)."""
    from bench_ranked_choice import make_questions, naive_scores, ours_scores

    question = make_questions(1, 20)
    with torch.no_grad():
        difference = max(abs(a - b) for a, b in zip(ours_scores(ours, processor, *question)[0],
                                                    naive_scores(ours, processor, *question)[0]))
        ours_s, naive_s = alternate(lambda: ours_scores(ours, processor, *question),
                                    lambda: naive_scores(ours, processor, *question), args.repeats, args.warmup)
    return Row("ranked choice, 20 candidates", "a forward pass per candidate", ours_s, naive_s, "≥ 5",
               f"max score difference {difference:.1e}")


def training_batch(processor, batch_size: int = 8) -> dict:
    """Question + answer texts, the loss on every text token (the layout does not change the cost)."""
    pictures = images(batch_size, seed=1)
    texts = [f"{QUESTIONS[i % len(QUESTIONS)]} {ANSWERS[i % len(ANSWERS)]}" for i in range(batch_size)]
    batch = dict(processor(images=pictures, text=texts, padding=True, return_tensors="pt"))
    ignored = (batch["attention_mask"] == 0) | (batch["input_ids"] == processor.image_token_id)
    batch["labels"] = batch["input_ids"].masked_fill(ignored, -100)
    return batch


def training_step_row(ours, processor, args) -> Row:
    """Q-Former-only optimiser steps with the vision cache (all hits after the first) vs without, one model."""
    freeze_for_instruction_tuning(ours)
    ours.train()
    batch = training_batch(processor)
    image_ids = [f"image-{i}" for i in range(len(batch["pixel_values"]))]
    cache = VisionFeatureCache(max_bytes=2**30)
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.05)

    def step(inputs: dict) -> float:
        loss = ours(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def cached_step() -> float:
        inputs = {key: value for key, value in batch.items() if key != "pixel_values"}
        image_embeds = cache.image_embeds(ours.vision_model, batch["pixel_values"], image_ids)
        return step({**inputs, "image_embeds": image_embeds})

    cached_step()  # fills the cache: every timed step is all hits
    cached_s, plain_s = alternate(cached_step, lambda: step(batch), args.repeats, args.warmup)
    ours.eval()
    return Row("Q-Former-only training step, batch 8", "the same step without the vision cache", cached_s, plain_s,
               "≥ 1.3", f"cache hits {cache.hits}, misses {cache.misses}")


def peak_memory_probe(setting: str, threads: int) -> float:
    """Peak RSS (MiB) of this process over 3 optimiser steps of `setting`; run in a fresh process."""
    torch.set_num_threads(threads)
    processor = build_processor()
    model = build_ours(processor.image_token_id)
    freeze_for_instruction_tuning(model, train_vision_model=setting == "full", train_language_model=setting == "full")
    model.train()
    batch = training_batch(processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_memory_row(args) -> Row:
    peaks = {}
    for setting in ("qformer-only", "full"):
        command = [sys.executable, __file__, "--memory-probe", setting, "--threads", str(args.threads)]
        peaks[setting] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return Row("peak memory, Q-Former-only training step (batch 8, AdamW)", "full fine-tuning",
               peaks["qformer-only"], peaks["full"], "≥ 1.25 (ours ≤ 0.8 × full)", "fresh process each", unit="MiB")


def compiled_generate_row(ours, processor, args) -> Row:
    """Static cache + the compiled LLM decoding step vs the eager dynamic cache, batch 1, 20 new tokens."""
    inputs = processor(images=images(1), text=QUESTIONS[:1], return_tensors="pt")
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    settings = greedy(20)

    def compiled():
        return ours.generate(**inputs, cache_implementation="static", compile_config=compile_config, **settings)

    with torch.no_grad():
        start = time.perf_counter()
        same = torch.equal(compiled(), ours.generate(**inputs, **settings))
        compile_s = time.perf_counter() - start
        compiled_s, eager_s = alternate(compiled, lambda: ours.generate(**inputs, **settings), args.repeats,
                                        args.warmup)
    return Row("generate, batch 1, 20 new tokens, static cache + torch.compile", "ours, eager, dynamic cache",
               compiled_s, eager_s, "–", f"same tokens: {same}; first call {compile_s:.0f} s")


# --- report ------------------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | reference | ours (median) | reference (median) | ratio reference / ours | target | check |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        value = "{:.3f} s" if row.unit == "s" else "{:.0f} MiB"
        lines.append(f"| {row.scenario} | {row.reference} | {value.format(row.ours)} | {value.format(row.theirs)} | "
                     f"{row.ratio:.2f} | {row.target} | {row.check} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the static cache + torch.compile row")
    parser.add_argument("--memory-probe", choices=["qformer-only", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(peak_memory_probe(args.memory_probe, args.threads)))
        return
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    processor = build_processor()
    ours = build_ours(processor.image_token_id).eval()
    builtin = build_builtin(ours)

    rows = generate_rows(ours, builtin, processor, args)
    rows.append(ranked_choice_row(ours, processor, args))
    if args.compile:
        rows.append(compiled_generate_row(ours, processor, args))
    rows.append(training_step_row(ours, processor, args))
    rows.append(peak_memory_row(args))

    parameters = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"small InstructBLIP ({parameters:.1f}M parameters), CPU float32, {args.threads} threads, median of "
          f"{args.repeats} (after {args.warmup} warm-up); {machine()}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at "
          f"the end; {time.perf_counter() - started:.0f} s\n")
    print(table(rows))


if __name__ == "__main__":
    main()
