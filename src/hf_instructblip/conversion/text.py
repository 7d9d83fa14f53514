"""Q-Former tokenizer, image processor and generation defaults set up exactly as LAVIS's InstructBLIP uses them
(the LLM tokenizer's set-up depends on the LLM family: see `families.py`)."""

from pathlib import Path

from transformers import AutoTokenizer, BlipImageProcessorPil, GenerationConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from ..processing_instructblip import InstructBlipProcessor
from .families import LlmFamily

# `Blip2VicunaInstruct.generate` / `Blip2T5Instruct.generate` defaults. top_p only acts when sampling is switched
# on (LAVIS's use_nucleus_sampling), as with `do_sample=True` here.
LAVIS_GENERATION_DEFAULTS = {
    "num_beams": 5,
    "max_new_tokens": 256,
    "min_length": 1,
    "top_p": 0.9,
    "repetition_penalty": 1.5,
    "length_penalty": 1.0,
}


def qformer_tokenizer(name_or_path: str):
    """bert-base-uncased plus LAVIS's `[DEC]` token (id 30522, vocabulary 30523), truncating from the left."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, truncation_side="left")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def image_processor(image_size: int) -> BlipImageProcessorPil:
    """LAVIS's `blip_image_eval`: bicubic resize to a square, CLIP mean/std. Saved as `BlipImageProcessor`, so a
    reload picks the torchvision backend where it is installed."""
    return BlipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )


def lavis_processor(llm_dir: Path, family: LlmFamily, qformer_name: str, image_size: int, num_query_tokens: int):
    return InstructBlipProcessor(
        image_processor(image_size),
        family.tokenizer(llm_dir),
        qformer_tokenizer(qformer_name),
        num_query_tokens=num_query_tokens,
    )


def lavis_generation_config(text_config: dict) -> GenerationConfig:
    token_ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return GenerationConfig(
        **LAVIS_GENERATION_DEFAULTS,
        **{name: text_config[name] for name in token_ids if text_config.get(name) is not None},
    )
