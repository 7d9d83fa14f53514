"""Instruction tuning: templates, dataset recipes, mixture sampling, collator and Trainer.

Nothing here is imported by the model files; `import hf_instructblip.training` needs the `train` extra
(`datasets`, `accelerate`; `peft` for LoRA).
"""

from .collator import InstructBlipDataCollator
from .mixture import MixtureSampler, interleave_mixture, mixture_weights
from .recipes import HELD_IN_DATASETS, RECIPES, Recipe, load_source, prepare_dataset
from .trainer import (
    InstructBlipTrainer,
    InstructBlipTrainingArguments,
    add_lora,
    freeze_for_instruction_tuning,
    merge_lora,
)
from .vision_cache import VisionFeatureCache

__all__ = [
    "HELD_IN_DATASETS",
    "RECIPES",
    "InstructBlipDataCollator",
    "InstructBlipTrainer",
    "InstructBlipTrainingArguments",
    "MixtureSampler",
    "Recipe",
    "VisionFeatureCache",
    "add_lora",
    "freeze_for_instruction_tuning",
    "interleave_mixture",
    "load_source",
    "merge_lora",
    "mixture_weights",
    "prepare_dataset",
]
