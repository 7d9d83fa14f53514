"""Everything the converter knows about each LLM family LAVIS pairs with InstructBLIP, in one table.

A LAVIS checkpoint names its family by its projection: `llm_proj.*` (Vicuna, `Blip2VicunaInstruct`) or `t5_proj.*`
(Flan-T5, `Blip2T5Instruct`). The family fixes the LAVIS key prefixes, how the LLM tokenizer is set up, and what
LAVIS changes in the LLM's config when it runs it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedConfig

from .errors import ConversionError


def vicuna_tokenizer(llm_dir: Path):
    """Vicuna's tokenizer with LAVIS's special tokens: `[PAD]` is new (id 32000 for Vicuna) and bos = eos = unk =
    `</s>`, so every prompt starts with `</s>` (id 2), as the released models were trained."""
    tokenizer = AutoTokenizer.from_pretrained(llm_dir, truncation_side="left", padding_side="left")
    tokenizer.add_special_tokens({"pad_token": "[PAD]", "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"})
    # Changing bos_token alone leaves the old `<s>` in the post-processor; setting the flag rebuilds it.
    tokenizer.add_bos_token = True
    first_id = tokenizer("a").input_ids[0]
    if first_id != tokenizer.bos_token_id:
        raise ConversionError(
            f"The tokenizer of {llm_dir} ({type(tokenizer).__name__}) does not start prompts with </s> "
            f"(id {tokenizer.bos_token_id}) but with id {first_id}; LAVIS's Vicuna prompts do."
        )
    return tokenizer


def vicuna_text_config(config: dict, tokenizer) -> None:
    """The special ids of LAVIS's Vicuna tokenizer (bos = eos = `</s>`, pad = `[PAD]`)."""
    config.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )


def t5_tokenizer(llm_dir: Path):
    """Flan-T5's tokenizer; LAVIS truncates instructions from the left."""
    return AutoTokenizer.from_pretrained(llm_dir, truncation_side="left")


def t5_text_config(config: dict, tokenizer) -> None:
    """The exact (erf) GELU that LAVIS sets in place of flan-t5's tanh approximation, and flan-t5's own lm_head."""
    # T5Config maps "gated-gelu" back to gelu_new on every load; "gelu_python" is the exact GELU under its own name.
    config["feed_forward_proj"] = "gated-gelu_python" if config.get("is_gated_act") else "gelu"
    for derived in ("dense_act_fn", "is_gated_act"):  # recomputed from feed_forward_proj; stale values win otherwise
        config.pop(derived, None)
    config["tie_word_embeddings"] = False


@dataclass(frozen=True)
class LlmFamily:
    name: str
    projection_prefix: str  # LAVIS's projection from the Q-Former to the LLM
    llm_prefix: str  # LAVIS's prefix of LLM tensors found in a checkpoint
    is_encoder_decoder: bool
    tokenizer: Callable[[Path], object]  # the LLM tokenizer as LAVIS sets it up
    fix_text_config: Callable[[dict, object], None]  # LAVIS's changes to the LLM config (a dict, in place)

    def text_config(self, llm_config: PreTrainedConfig, vocab_size: int, tokenizer) -> dict:
        """The LLM config as LAVIS runs it, its vocabulary grown by the tokens LAVIS and the processor add."""
        config = {**llm_config.to_dict(), "vocab_size": vocab_size}
        self.fix_text_config(config, tokenizer)
        return config


FAMILIES = (
    LlmFamily("Vicuna", "llm_proj.", "llm_model.", False, vicuna_tokenizer, vicuna_text_config),
    LlmFamily("Flan-T5", "t5_proj.", "t5_model.", True, t5_tokenizer, t5_text_config),
)


def family_of(lavis_keys: Iterable[str], llm_config: PreTrainedConfig, llm: str) -> LlmFamily:
    """The family named by the checkpoint's projection, checked against the kind of LLM given with `--llm`."""
    keys = list(lavis_keys)
    found = [family for family in FAMILIES if any(key.startswith(family.projection_prefix) for key in keys)]
    if len(found) != 1:
        prefixes = [family.projection_prefix + "*" for family in FAMILIES]
        raise ConversionError(
            f"The LAVIS checkpoint must hold exactly one of {prefixes} (the projection into the LLM); it holds "
            f"{[family.projection_prefix + '*' for family in found] or 'neither'}."
        )
    family = found[0]
    if family.is_encoder_decoder != llm_config.is_encoder_decoder:
        kind = "an encoder-decoder" if llm_config.is_encoder_decoder else "a decoder-only"
        raise ConversionError(
            f"The LAVIS checkpoint is a {family.name} model ({family.projection_prefix}*) but --llm {llm} is "
            f"{kind} LLM ({llm_config.model_type}); give the LLM the checkpoint was trained with."
        )
    return family
