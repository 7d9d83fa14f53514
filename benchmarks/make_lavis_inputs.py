"""Synthetic full-size inputs for the conversion benchmark, with the real shapes of the released vicuna7b model.

EVA-CLIP-g ViT file (40 blocks + norm, float16, as eva_vit_g.pth), the trimmed InstructBLIP checkpoint (Q-Former,
queries, ln_vision, llm_proj to 4096; float32), a Vicuna-shaped LLM directory (width 4096, MLP 11008, vocabulary
32000, float16 safetensors shards) with fewer layers than the real 32, and a bert-base-uncased-sized tokenizer.

    python benchmarks/make_lavis_inputs.py DIR [--llm-layers 4] [--llm-format safetensors|bin]
"""

import argparse
import json
import string
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertTokenizer, LlamaConfig, LlamaTokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from lavis_format import LavisDims, eva_vit_file, trimmed_checkpoint

CHARS = list(string.ascii_lowercase + string.digits + "?.,!")


def save_vicuna_shaped_llm(directory: Path, num_layers: int, weight_format: str) -> None:
    """Vicuna-7B shapes with `num_layers` layers; one safetensors shard per layer (plus embeddings), as HF shards."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for piece in ["▁"] + CHARS + ["▁" + c for c in CHARS]:
        vocab[piece] = len(vocab)
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), 32000)})  # Vicuna's vocabulary size
    LlamaTokenizer(vocab=vocab, merges=[("▁", c) for c in CHARS], add_bos_token=True).save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=num_layers,
        num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    config.save_pretrained(directory)

    def normal(*shape):
        return torch.empty(shape, dtype=torch.float16).normal_(0, 0.02)

    shards = [{"model.embed_tokens.weight": normal(32000, 4096)}]
    for layer in range(num_layers):
        prefix = f"model.layers.{layer}"
        shards.append({
            **{f"{prefix}.self_attn.{name}_proj.weight": normal(4096, 4096) for name in "qkvo"},
            f"{prefix}.mlp.gate_proj.weight": normal(11008, 4096),
            f"{prefix}.mlp.up_proj.weight": normal(11008, 4096),
            f"{prefix}.mlp.down_proj.weight": normal(4096, 11008),
            f"{prefix}.input_layernorm.weight": torch.ones(4096, dtype=torch.float16),
            f"{prefix}.post_attention_layernorm.weight": torch.ones(4096, dtype=torch.float16),
        })  # fmt: skip
    shards.append({"model.norm.weight": torch.ones(4096, dtype=torch.float16), "lm_head.weight": normal(32000, 4096)})
    # Hugging Face's two sharded layouts; Vicuna v1.1's Hub repos hold pytorch_model-*.bin shards.
    prefix, suffix = ("model", ".safetensors") if weight_format == "safetensors" else ("pytorch_model", ".bin")
    names = [f"{prefix}-{i:05d}-of-{len(shards):05d}{suffix}" for i in range(1, len(shards) + 1)]
    weight_map = {}
    save = save_file if weight_format == "safetensors" else torch.save
    for name, shard in zip(names, shards):
        save(shard, directory / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / f"{prefix}{suffix}.index.json").write_text(json.dumps(index))


def save_bert_base_tokenizer(directory: Path) -> None:
    """bert-base-uncased's vocabulary size (30522) and config, so "[DEC]" gets id 30522 as in LAVIS."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARS
    tokens += [f"filler{i}" for i in range(30522 - len(tokens))]
    BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}).save_pretrained(directory)
    BertConfig().save_pretrained(directory)


def make_inputs(root: Path, llm_layers: int, llm_format: str) -> None:
    """Writes the inputs and `inputs.json`, which maps each CLI option to its path."""
    torch.manual_seed(0)
    paths = {
        "--vit-checkpoint": root / "eva_vit_g.pth",
        "--lavis-checkpoint": root / "instruct_blip_vicuna7b_trimmed.pth",
        "--llm": root / "vicuna-7b-shaped",
        "--qformer-tokenizer": root / "bert-base-uncased-shaped",
    }
    torch.save(eva_vit_file(LavisDims(), dtype=torch.float16), paths["--vit-checkpoint"])
    torch.save({"model": trimmed_checkpoint(LavisDims(), "vicuna")}, paths["--lavis-checkpoint"])
    paths["--llm"].mkdir()
    save_vicuna_shaped_llm(paths["--llm"], llm_layers, llm_format)
    paths["--qformer-tokenizer"].mkdir()
    save_bert_base_tokenizer(paths["--qformer-tokenizer"])
    (root / "inputs.json").write_text(json.dumps({option: str(path) for option, path in paths.items()}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--llm-format", choices=["safetensors", "bin"], default="safetensors")
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    make_inputs(args.directory, args.llm_layers, args.llm_format)


if __name__ == "__main__":
    main()
