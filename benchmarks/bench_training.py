"""Training-step cost: the paper's Q-Former-only recipe vs training everything, and what caching the frozen vision
tower's outputs would save.

On the ~130M "small" InstructBLIP of `bench_inference.py`, batch 8, the script times full optimiser steps (forward,
backward, AdamW step) of `InstructBlipTrainer`'s setup:

* `qformer-only`: `freeze_for_instruction_tuning` defaults (queries, Q-Former, final vision LayerNorm, projection);
* `all-trainable`: every parameter trains;
* `qformer-only, cached vision`: as the first, with `cache_vision_features` (`FrozenFeatureCache` on the vision
  encoder): after the warm-up step every image is a cache hit, the cost of a step once each image has been seen
  (valid without random image augmentation).

Peak memory is the process's peak resident set size (CPU) or `torch.cuda.max_memory_allocated` (CUDA), measured
in a fresh subprocess per setting so the settings do not see each other's allocations.

    python benchmarks/bench_training.py [--device cpu|cuda] [--threads 2] [--steps 5] [--batch-size 8]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# Busy-waiting OpenMP threads make every parallel region cost a time slice when another process holds a core
# (shared machines); passive waiting keeps the timings about the model. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from bench_inference import NUM_QUERY_TOKENS, small_config_kwargs

from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration
from hf_instructblip.training.trainer import FrozenFeatureCache, freeze_for_instruction_tuning

SETTINGS = ("qformer-only", "all-trainable", "qformer-only, cached vision")
INSTRUCTION_TOKENS, ANSWER_TOKENS = 24, 8


def make_batch(batch_size: int, device: str) -> dict:
    """Random ids in the collator's decoder-only layout: placeholders, instruction, answer (loss on the answer)."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(3, 32000, (batch_size, 1 + INSTRUCTION_TOKENS + ANSWER_TOKENS), generator=generator)
    text[:, 0] = 1
    input_ids = torch.cat([torch.full((batch_size, NUM_QUERY_TOKENS), 32000), text], dim=1)
    labels = input_ids.clone()
    labels[:, : NUM_QUERY_TOKENS + 1 + INSTRUCTION_TOKENS] = -100
    qformer_input_ids = torch.randint(1000, 30000, (batch_size, INSTRUCTION_TOKENS), generator=generator)
    batch = {
        "pixel_values": torch.randn(batch_size, 3, 224, 224, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "qformer_input_ids": qformer_input_ids,
        "qformer_attention_mask": torch.ones_like(qformer_input_ids),
        "labels": labels,
    }
    return {key: value.to(device) for key, value in batch.items()}


def run_setting(setting: str, args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(InstructBlipConfig(**small_config_kwargs())).to(args.device)
    if setting == "all-trainable":
        model.requires_grad_(True)
    else:
        freeze_for_instruction_tuning(model)
    model.train()
    batch = make_batch(args.batch_size, args.device)
    if setting == "qformer-only, cached vision":
        FrozenFeatureCache(model.vision_model.encoder)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.05)

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for repeat in range(args.warmup + args.steps):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        if repeat >= args.warmup:
            times.append(time.perf_counter() - start)
    if args.device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"setting": setting, "step_s": statistics.median(times), "peak_mib": peak_mib,
            "trainable_m": sum(p.numel() for p in trainable) / 1e6,
            "total_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--setting", choices=SETTINGS, help="run one setting in this process (used internally)")
    args = parser.parse_args()
    if args.setting:
        print(json.dumps(run_setting(args.setting, args)))
        return
    rows = []
    for setting in SETTINGS:
        command = [sys.executable, __file__, "--setting", setting, *sys.argv[1:]]
        rows.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    base = rows[0]["step_s"]
    print(f"small InstructBLIP ({rows[0]['total_m']:.1f}M parameters), batch {args.batch_size}, {args.device}, "
          f"{args.threads} threads, torch {torch.__version__}, median of {args.steps} steps\n")
    print("| setting | trainable params | step time (s) | vs qformer-only | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['trainable_m']:.1f}M | {row['step_s']:.3f} | "
              f"{row['step_s'] / base:.2f}x | {row['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
