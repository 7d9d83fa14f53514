"""Tiny random InstructBLIP models and tokenizers, built offline in-process (no Hub).

Shared by the test modules; everything here is deterministic given torch's seed.
"""

import string

import numpy as np
import PIL.Image
import torch
from transformers import BertTokenizer, BlipImageProcessorPil, LlamaConfig, LlamaTokenizer, T5Config, T5Tokenizer

from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor


CHARS = list(string.ascii_lowercase + string.digits + "?.,!'\"-:")
NUM_QUERY_TOKENS = 4
IMAGE_SIZE = 30


def llama_tokenizer(pad_token: str | None = "[PAD]", padding_side: str = "left") -> LlamaTokenizer:
    """Character-level BPE tokenizer in LLaMA's format: <unk>=0, <s>=1, </s>=2, then `pad_token` (Vicuna has none)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if pad_token is not None:
        vocab[pad_token] = len(vocab)
    for piece in ["▁"] + CHARS + ["▁" + c for c in CHARS]:
        vocab.setdefault(piece, len(vocab))
    return LlamaTokenizer(
        vocab=vocab,
        merges=[("▁", c) for c in CHARS],
        add_bos_token=True,
        pad_token=pad_token,
        padding_side=padding_side,
    )


def t5_tokenizer() -> T5Tokenizer:
    """Character-level Unigram tokenizer in T5's format: <pad>=0, </s>=1, <unk>=2, right padding."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in CHARS] + [("▁" + c, -2.5) for c in CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def bert_tokenizer(decoder_token: bool = True) -> BertTokenizer:
    """Character-level WordPiece tokenizer standing in for bert-base-uncased, + "[DEC]" as the Q-Former's (the LAVIS
    converter adds "[DEC]" itself, so its input has none)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARS + ["##" + c for c in CHARS]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens + ["[DEC]"] * decoder_token)})


def image_processor() -> BlipImageProcessorPil:
    return BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def processor(kind: str = "llama") -> InstructBlipProcessor:
    tokenizer = llama_tokenizer() if kind == "llama" else t5_tokenizer()
    return InstructBlipProcessor(image_processor(), tokenizer, bert_tokenizer(), num_query_tokens=NUM_QUERY_TOKENS)


def config_kwargs(kind: str = "llama", image_token_index: int | None = None) -> dict:
    """Keyword arguments shared by this package's and transformers' InstructBlipConfig."""
    if kind == "llama":
        vocab_size = len(llama_tokenizer()) + 1  # + "<image>"
        text = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            pad_token_id=3,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    else:
        vocab_size = len(t5_tokenizer()) + 1
        text = T5Config(
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            vocab_size=vocab_size,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    return dict(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=6,
            initializer_range=0.02,
        ),
        qformer_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            vocab_size=len(bert_tokenizer()),
            cross_attention_frequency=2,
        ),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=vocab_size - 1 if image_token_index is None else image_token_index,
    )


def model(kind: str = "llama", seed: int = 0, **config_overrides) -> InstructBlipForConditionalGeneration:
    """A random model in eval mode. The T5 head is untied from `shared`, as in Flan-T5 (a tied random T5 only
    ever emits padding, which would make generation tests vacuous)."""
    torch.manual_seed(seed)
    config = InstructBlipConfig(**{**config_kwargs(kind), **config_overrides})
    instance = InstructBlipForConditionalGeneration(config)
    if kind == "t5":
        untie_lm_head(instance)
        torch.nn.init.normal_(instance.language_model.lm_head.weight, std=0.5)
    return instance.eval()


def untie_lm_head(instance):
    """Give a T5-based model its own `lm_head` (random T5 configs tie it to `shared`; Flan-T5 does not)."""
    head = instance.language_model.lm_head
    head.weight = torch.nn.Parameter(head.weight.detach().clone())


def image(seed: int = 0, size: int = 40) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
