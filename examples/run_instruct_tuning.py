"""Instruction-tune InstructBLIP the paper's way (Q-Former side only, datasets sampled ∝ √size).

With neither --model_name_or_path nor --datasets: the paper in miniature (`shapes_miniature.py`), offline on CPU in
about 5 minutes on 2 cores. On a synthetic world of coloured shapes, a tiny InstructBLIP gets a frozen LLM
pre-trained on text alone (Vicuna's place, shipped beside the example), learns BLIP-2's captioning through it
(stage 0, cached in --miniature_cache_dir), then is instruction-tuned on five held-in "datasets" of very different
sizes. The table puts held-in and held-out exact match after tuning beside the stage-0
"BLIP-2" row and chance; --miniature_seeds N repeats stage 1 with N seeds (mean and range), --miniature_ablations
adds the paper's two ablations. On a busy machine, prefix OMP_NUM_THREADS=1.

  miniature defaults: --max_steps {max_steps} --per_device_train_batch_size {per_device_train_batch_size} --learning_rate {learning_rate} --seed {seed}
                      --output_dir {output_dir} (the model and miniature_results.json)

Real scale (the full 13-dataset command is in the README), with the paper's defaults (lr 1e-5, 1000 warmup steps,
cosine):

    accelerate launch examples/run_instruct_tuning.py \\
        --model_name_or_path Salesforce/instructblip-vicuna-7b \\
        --datasets coco_caption=HuggingFaceM4/COCO vqav2=HuggingFaceM4/VQAv2 okvqa=HuggingFaceM4/OK-VQA:2.0 \\
        --output_dir instructblip-vicuna7b-tuned --per_device_train_batch_size 16 --max_steps 60000 --bf16

--datasets takes `recipe=source[:multiplier]` (or `name/recipe=source[:multiplier]` to use one recipe twice);
`source` is a Hub id, a `save_to_disk` folder or a json/jsonl/parquet/csv file.
"""

import argparse
import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import shapes_miniature as miniature
import torch
import transformers
from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser, pipeline

from hf_instructblip import InstructBlipForConditionalGeneration, InstructBlipProcessor
from hf_instructblip.training import (
    RECIPES,
    InstructBlipTrainer,
    InstructBlipTrainingArguments,
    load_source,
    merge_lora,
    prepare_dataset,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Converted or official checkpoint (local dir or Hub id). None: the miniature."}
    )
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0: no LoRA, the paper's setting)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "LLM modules that get LoRA adapters (Flan-T5: q v)."},
    )


@dataclass
class DataArguments:
    datasets: list[str] = field(
        default_factory=list,
        metadata={"help": "Training mixture: `recipe=source[:multiplier]` or `name/recipe=source[:multiplier]`."},
    )
    eval_datasets: list[str] = field(
        default_factory=list, metadata={"help": "Per-dataset eval losses: `recipe=source` (split from --eval_split)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split read from Hub sources."})
    eval_split: str = field(default="validation", metadata={"help": "Split read from Hub eval sources."})
    image_roots: list[str] = field(
        default_factory=list, metadata={"help": "`name=dir` for datasets whose images are relative paths (LLaVA)."}
    )
    on_bad_image: str = field(default="skip", metadata={"help": "`skip` (counted warning) or `raise`."})


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    recipe: str
    source: str
    multiplier: float = 1.0


def parse_dataset_spec(text: str) -> DatasetSpec:
    """`okvqa=HuggingFaceM4/OK-VQA:2.0` → DatasetSpec("okvqa", "okvqa", "HuggingFaceM4/OK-VQA", 2.0)."""
    key, sep, source = text.partition("=")
    if not sep or not key or not source:
        raise ValueError(f"--datasets entry {text!r} must look like recipe=source[:multiplier].")
    name, _, recipe = key.rpartition("/")
    name = name or recipe
    if recipe not in RECIPES:
        raise ValueError(f"--datasets entry {text!r}: unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}.")
    head, colon, tail = source.rpartition(":")
    multiplier = 1.0
    if colon and _is_number(tail):
        source, multiplier = head, float(tail)
    return DatasetSpec(name, recipe, source, multiplier)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def prepared(spec: DatasetSpec, split: str, data_args: DataArguments, seed: int):
    image_roots = dict(entry.split("=", 1) for entry in data_args.image_roots)
    return prepare_dataset(load_source(spec.source, split), spec.recipe, name=spec.name, seed=seed,
                           image_root=image_roots.get(spec.name), on_bad_image=data_args.on_bad_image)


def lora_config(model_args: ModelArguments):
    if not model_args.lora_rank:
        return None
    from peft import LoraConfig

    rank = model_args.lora_rank
    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=model_args.lora_target_modules)


def run_real(model_args: ModelArguments, data_args: DataArguments, training_args: InstructBlipTrainingArguments):
    specs = [parse_dataset_spec(text) for text in data_args.datasets]
    # This package's classes also read official transformers checkpoints (model_type "instructblip"), which the
    # Auto classes would hand to transformers' built-in port.
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    # The main process downloads into the shared Hub and datasets caches first; the other ranks then read them.
    with training_args.main_process_first(desc="downloading the model and datasets"):
        model = InstructBlipForConditionalGeneration.from_pretrained(model_args.model_name_or_path, dtype=dtype)
        processor = InstructBlipProcessor.from_pretrained(model_args.model_name_or_path)
        train_datasets = {s.name: prepared(s, data_args.train_split, data_args, training_args.seed) for s in specs}
        eval_datasets = {
            s.name: prepared(s, data_args.eval_split, data_args, training_args.seed)
            for s in map(parse_dataset_spec, data_args.eval_datasets)
        }
    trainer = InstructBlipTrainer(
        model=model,
        args=training_args,
        processing_class=processor,
        train_datasets=train_datasets,
        mixture_multipliers={s.name: s.multiplier for s in specs if s.multiplier != 1.0},
        eval_datasets=eval_datasets,
        peft_config=lora_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    merge_lora(trainer.model)
    trainer.save_model()  # with the processor
    if training_args.push_to_hub:
        trainer.push_to_hub()


# --- the embedded miniature ------------------------------------------------------------------------------------------


def answer_fresh_image(output_dir: str, seed: int):
    """The saved model, reloaded through the Auto classes and the pipeline, asked about a scene it never saw."""
    model = AutoModelForImageTextToText.from_pretrained(output_dir)
    ask = pipeline("image-text-to-text", model=model, processor=AutoProcessor.from_pretrained(output_dir))
    rng = np.random.default_rng(seed)
    scene = miniature.random_scene(rng)
    image = miniature.draw(scene, rng)
    question, truth = miniature.where_question(scene, rng)
    prompt = f"Question: {question} Short answer:"
    answer = ask(images=image, text=prompt, max_new_tokens=5, return_full_text=False)[0]["generated_text"]
    print(f"\nReloaded from {output_dir} with AutoModelForImageTextToText + pipeline('image-text-to-text').")
    print(f"Fresh image: {miniature.caption(scene)}\nQ (held-out type): {question}")
    print(f"A: {answer.strip()} (truth: {truth})")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and every flag's default."""


def argument_parser(real: bool) -> HfArgumentParser:
    """One parser for both runs; without a model and datasets its defaults are the miniature's."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, miniature.MiniatureArguments, InstructBlipTrainingArguments),
        usage="%(prog)s [--miniature_* flags | --model_name_or_path M --datasets D ...] [TrainingArguments flags]",
        description=__doc__.format(**miniature.TRAINING_DEFAULTS),
        formatter_class=HelpFormatter,
    )
    if not real:
        parser.set_defaults(**miniature.TRAINING_DEFAULTS)
    return parser


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    real = any(arg.split("=")[0] in ("--model_name_or_path", "--datasets") for arg in argv)
    model_args, data_args, miniature_args, training_args = argument_parser(real).parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_warning()
    if not real:
        miniature.run(miniature_args, training_args)
        if training_args.process_index == 0:  # after run()'s barrier: the saved folder is whole
            answer_fresh_image(training_args.output_dir, seed=training_args.seed + 999)
        return None
    if model_args.model_name_or_path is None or not data_args.datasets:
        raise ValueError("Real runs need both --model_name_or_path and --datasets (or neither, for the miniature).")
    if miniature_args != miniature.MiniatureArguments():
        raise ValueError("The --miniature_* flags apply to the miniature only, not to runs with --model_name_or_path.")
    return run_real(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
