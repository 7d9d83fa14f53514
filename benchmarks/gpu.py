"""Decode speed on a GPU against the memory-bandwidth bound: Vicuna-7B-shaped InstructBLIP, random bf16 weights.

Decoding one token reads every weight of the language model once (the KV cache is small at these lengths), so
`bound = LLM weight bytes / memory bandwidth` is the fastest a step can be, at batch 1 and nearly so at batch 8. The
script measures the bandwidth (a large device-to-device copy), then the milliseconds per new token of `generate` at
batch 1 and 8: `(time(1 + K new tokens) - time(1 new token)) / K`, so the image, the Q-Former and the prompt are
left out. Modes: eager with the dynamic cache, and `cache_implementation="static"` with the compiled decoding step
(transformers compiles it on GPUs by itself). Target: ≤ 1.5 × bound at batch 1.

Status: written without a GPU; run end to end on CPU only (`--tiny`, a small shape), never on a GPU yet.

    python benchmarks/gpu.py [--device cuda] [--new-tokens 64] [--repeats 5] [--tiny]
"""

import argparse
import statistics
import time

import torch
import transformers
from transformers import CompileConfig

from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration

PROMPT_TOKENS = 32
TINY_SHAPE = dict(
    vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4),
    qformer_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                        encoder_hidden_size=128),
    text_config=dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                     num_attention_heads=4, vocab_size=32002, pad_token_id=0, bos_token_id=1, eos_token_id=2),
)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def random_model(device: str, tiny: bool) -> InstructBlipForConditionalGeneration:
    """Random weights, allocated directly on the device in bfloat16 (no 28 GB float32 detour on the host)."""
    config = InstructBlipConfig.from_preset("vicuna7b", **(TINY_SHAPE if tiny else {}))
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(config).to(torch.bfloat16)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
        for module in model.modules():  # norms at 1 keep the activations in a realistic range
            if "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
    model.query_tokens.data = model.query_tokens.data.float()  # as from_pretrained keeps them
    return model.eval()


def memory_bandwidth(device: str, gib: float) -> float:
    """Bytes per second of a device-to-device copy (each byte read once and written once)."""
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * source.numel() / statistics.median(times)


def decode_weight_bytes(model) -> int:
    """Weights one decoding step reads: the language model's, less its input embedding table (one row is read)."""
    embeddings = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    return total - embeddings.numel() * embeddings.element_size()


def inputs_for(model, batch_size: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(batch_size)
    size = model.config.vision_config.image_size
    prompt = torch.randint(3, 32000, (batch_size, PROMPT_TOKENS), generator=generator)
    placeholders = torch.full((batch_size, model.config.num_query_tokens), model.config.image_token_index)
    input_ids = torch.cat([placeholders, torch.ones(batch_size, 1, dtype=torch.long), prompt], dim=1)
    qformer_input_ids = torch.randint(1000, 30000, (batch_size, PROMPT_TOKENS), generator=generator)
    inputs = dict(pixel_values=torch.randn(batch_size, 3, size, size, generator=generator, dtype=torch.bfloat16),
                  input_ids=input_ids, qformer_input_ids=qformer_input_ids)
    return {key: value.to(device) for key, value in inputs.items()}


def ms_per_token(model, inputs, new_tokens: int, repeats: int, device: str, **generate_kwargs) -> float:
    def seconds(count: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=count, min_new_tokens=count, do_sample=False, **generate_kwargs)
        synchronize(device)
        return time.perf_counter() - start

    seconds(1 + new_tokens)  # warm-up (and compilation)
    per_token = [(seconds(1 + new_tokens) - seconds(1)) / new_tokens for _ in range(repeats)]
    return 1e3 * statistics.median(per_token)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bandwidth-gib", type=float, default=2.0, help="size of the bandwidth-probe copy")
    parser.add_argument("--tiny", action="store_true", help="a small shape, to check the script on CPU")
    args = parser.parse_args()

    model = random_model(args.device, args.tiny)
    bandwidth = memory_bandwidth(args.device, args.bandwidth_gib)
    weight_bytes = decode_weight_bytes(model)
    bound_ms = 1e3 * weight_bytes / bandwidth
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = args.device != "cuda"  # transformers compiles on GPUs by itself
    modes = {
        "eager, dynamic cache": {},
        "static cache + compiled step": dict(cache_implementation="static", compile_config=compile_config),
    }
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    shape = "tiny shape (script check only)" if args.tiny else "Vicuna-7B shape"
    print(f"InstructBLIP {shape}, random bf16 weights, {device_name}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; decode reads {weight_bytes / 1e9:.2f} GB; measured bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s; bound {bound_ms:.3f} ms/token; median of {args.repeats}, "
          f"{args.new_tokens} new tokens\n")
    print("| batch | mode | ms / token | bound (ms / token) | ratio to the bound |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for batch_size in (1, 8):
            inputs = inputs_for(model, batch_size, args.device)
            for mode, generate_kwargs in modes.items():
                ms = ms_per_token(model, inputs, args.new_tokens, args.repeats, args.device, **generate_kwargs)
                print(f"| {batch_size} | {mode} | {ms:.3f} | {bound_ms:.3f} | {ms / bound_ms:.2f} |")


if __name__ == "__main__":
    main()
