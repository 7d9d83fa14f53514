"""Inference speed: hf_instructblip vs transformers' built-in InstructBLIP on identical weights.

A ~130M-parameter "small" InstructBLIP (vision 12x384, Q-Former 12x384, LLaMA 8x512, vocabulary 32001) is built
once; the built-in model receives the same state dict. For batch sizes 1 and 8 the script times the forward pass and
`generate(max_new_tokens=20)` (greedy, exactly 20 new tokens), alternating the two models run by run so that machine
noise hits both alike, and prints medians and the speed ratio (built-in time / our time; > 1 means we are faster).

    python benchmarks/bench_inference.py [--device cpu|cuda] [--dtype float32|bfloat16] [--repeats 7] [--threads 2]
"""

import argparse
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig

from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration


NUM_QUERY_TOKENS, PROMPT_TOKENS, QFORMER_TOKENS, NEW_TOKENS = 32, 16, 16, 20


def small_config_kwargs() -> dict:
    return dict(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                           image_size=224, patch_size=14, initializer_range=0.02, post_layernorm_eps=1e-6),
        qformer_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                            vocab_size=30523, cross_attention_frequency=2),
        text_config=LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                                vocab_size=32001, pad_token_id=0, bos_token_id=1, eos_token_id=2).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=32000,
    )


def build_models(device, dtype):
    torch.manual_seed(0)
    kwargs = small_config_kwargs()
    ours = InstructBlipForConditionalGeneration(InstructBlipConfig(**kwargs))
    builtin_kwargs = {**kwargs, "vision_config": {k: v for k, v in kwargs["vision_config"].items()
                                                  if k != "post_layernorm_eps"}}
    builtin = transformers.InstructBlipForConditionalGeneration(transformers.InstructBlipConfig(**builtin_kwargs))
    builtin.load_state_dict(ours.state_dict(), strict=True)
    return [model.to(device=device, dtype=dtype).eval() for model in (ours, builtin)]


def make_inputs(batch_size, device, dtype):
    generator = torch.Generator().manual_seed(batch_size)
    prompt = torch.randint(3, 32000, (batch_size, PROMPT_TOKENS), generator=generator)
    input_ids = torch.cat([torch.full((batch_size, NUM_QUERY_TOKENS), 32000), torch.ones(batch_size, 1).long(), prompt], 1)
    qformer_input_ids = torch.randint(1000, 30000, (batch_size, QFORMER_TOKENS), generator=generator)
    inputs = dict(
        pixel_values=torch.randn(batch_size, 3, 224, 224, generator=generator),
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        qformer_input_ids=qformer_input_ids,
        qformer_attention_mask=torch.ones_like(qformer_input_ids),
    )
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}


def timed(fn, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def check_same_results(ours, builtin, inputs):
    with torch.no_grad():
        ours_logits, builtin_logits = ours(**inputs).logits.float(), builtin(**inputs).logits.float()
    settings = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    same_tokens = torch.equal(ours.generate(**inputs, **settings), builtin.generate(**inputs, **settings))
    return (ours_logits - builtin_logits).abs().max().item(), same_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    ours, builtin = build_models(args.device, dtype)
    parameters = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"small InstructBLIP, {parameters:.1f}M parameters, {args.device} {args.dtype}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {args.threads} threads, median of {args.repeats}")

    rows = []
    for batch_size in (1, 8):
        inputs = make_inputs(batch_size, args.device, dtype)
        max_diff, same_tokens = check_same_results(ours, builtin, inputs)
        tasks = {
            "forward": lambda model: model(**inputs),
            f"generate {NEW_TOKENS}": lambda model: model.generate(
                **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            ),
        }
        for task, run in tasks.items():
            times = {"ours": [], "builtin": []}
            with torch.no_grad():
                for repeat in range(args.warmup + args.repeats):
                    for name, model in (("ours", ours), ("builtin", builtin)):
                        elapsed = timed(lambda: run(model), args.device)
                        if repeat >= args.warmup:
                            times[name].append(elapsed)
            ours_s, builtin_s = statistics.median(times["ours"]), statistics.median(times["builtin"])
            rows.append((task, batch_size, ours_s, builtin_s, builtin_s / ours_s, max_diff, same_tokens))

    print()
    print("| task | batch | hf_instructblip (s) | transformers built-in (s) | speed ratio (built-in / ours) |"
          " max logit diff | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for task, batch_size, ours_s, builtin_s, ratio, max_diff, same in rows:
        print(f"| {task} | {batch_size} | {ours_s:.3f} | {builtin_s:.3f} | {ratio:.2f} | {max_diff:.1e} | {same} |")


if __name__ == "__main__":
    main()
