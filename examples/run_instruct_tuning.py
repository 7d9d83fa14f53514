"""Instruction-tune InstructBLIP on a mixture of datasets, the paper's way (Q-Former only, sqrt-size sampling).

With no arguments, runs the embedded miniature of the paper offline on a laptop CPU (a few minutes): a tiny base
is pre-trained on a synthetic world of coloured shapes (stage 0, cached), then only its Q-Former, queries, final
vision LayerNorm and projection are instruction-tuned on five held-in "datasets" of very different sizes; held-in
and held-out scores are printed before and after, and the tuned model is saved, reloaded with
`AutoModelForImageTextToText` + `pipeline("image-text-to-text")` and asked about a fresh image.

Real scale (the full 13-dataset command is in the README):

    accelerate launch examples/run_instruct_tuning.py \
        --model_name_or_path Salesforce/instructblip-vicuna-7b \
        --datasets coco_caption=HuggingFaceM4/COCO vqav2=HuggingFaceM4/VQAv2 okvqa=HuggingFaceM4/OK-VQA:2.0 \
        --output_dir instructblip-vicuna7b-tuned --per_device_train_batch_size 16 --max_steps 60000 --bf16

`--datasets` takes `recipe=source[:multiplier]` (or `name/recipe=source[:multiplier]` to use one recipe twice);
`source` is a Hub id, a `save_to_disk` folder or a json/jsonl/parquet/csv file.
"""

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
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
    miniature_cache_dir: str = field(
        default=os.path.join(os.path.expanduser("~"), ".cache", "hf_instructblip"),
        metadata={"help": "Where the miniature's pre-trained tiny base (stage 0) is cached."},
    )
    miniature_pretraining_steps: int = field(default=1600, metadata={"help": "Stage-0 steps of the miniature."})
    miniature_eval_examples: int = field(default=200, metadata={"help": "Miniature evaluation examples per task."})


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


# --- the embedded miniature --------------------------------------------------------------------------------------------


def run_miniature(model_args: ModelArguments, data_args: DataArguments, args: InstructBlipTrainingArguments):
    import shapes_miniature as world

    start = time.perf_counter()
    settings = world.PretrainingSettings(steps=model_args.miniature_pretraining_steps)
    # Under several ranks, the main process pre-trains and caches stage 0 while the others wait, then read the cache.
    with args.main_process_first(desc="stage-0 pre-training"):
        model, processor = world.pretrained_base(model_args.miniature_cache_dir, settings)
    main = args.process_index == 0
    sets = world.eval_sets(model_args.miniature_eval_examples, seed=args.seed)
    if main:
        before = world.evaluate_tasks(model, processor, sets)
        captions = sets["caption"]
        promptless = world.exact_match(model, processor, captions["images"], [""] * len(captions["images"]),
                                       captions["targets"])

    sources = {task: world.task_dataset(task, size, seed=args.seed + k)
               for k, (task, size) in enumerate(world.TRAIN_SIZES.items())}
    recipes = {"caption": "coco_caption", "colour_vqa": "vqav2", "shape_vqa": "vqav2", "count_vqa": "vqav2",
               "question_generation": "vqg_vqav2"}
    train_datasets = {
        task: prepare_dataset(sources[task], recipes[task], name=task, seed=args.seed,
                              columns={"caption": "caption"} if task == "caption" else None)
        for task in world.TRAIN_SIZES
    }
    trainer = InstructBlipTrainer(model=model, args=args, processing_class=processor, train_datasets=train_datasets)
    trainer.train()
    trainer.save_model()  # with the processor; written by the main process only
    # Every rank has finished training and the output folder is whole before it is read back, on the main process.
    trainer.accelerator.wait_for_everyone()
    if not main:
        return
    after = world.evaluate_tasks(model, processor, sets)
    print_table(before, after, promptless, {task: s["chance"] for task, s in sets.items()}, world.HELD_OUT_TASKS)
    answer_fresh_image(args.output_dir, world, seed=args.seed + 999)
    print(f"\nMiniature done in {time.perf_counter() - start:.0f} s (stage 0 included unless cached).")


def print_table(before, after, promptless, chance, held_out):
    print("\n| task | split | before (stage-0 base) | after instruction tuning | chance (majority / uniform) |")
    print("|---|---|---|---|---|")
    for task in before:
        split = "held-out" if task in held_out else "held-in"
        print(f"| {task} | {split} | {before[task]:.3f} | {after[task]:.3f} | {chance[task]} |")
    print(f"| caption, no prompt (BLIP-2 style) | held-in | {promptless:.3f} | - | ~0 |")


def answer_fresh_image(output_dir: str, world, seed: int):
    model = AutoModelForImageTextToText.from_pretrained(output_dir)
    ask = pipeline("image-text-to-text", model=model, processor=AutoProcessor.from_pretrained(output_dir))
    rng = np.random.default_rng(seed)
    scene = world.random_scene(rng)
    image = world.draw(scene, rng)
    question = f"what colour is the {scene[0].shape} ?"
    prompt = f"Question: {question} Short answer:"
    answer = ask(images=image, text=prompt, max_new_tokens=5, return_full_text=False)[0]["generated_text"]
    print(f"\nReloaded from {output_dir} with AutoModelForImageTextToText + pipeline('image-text-to-text').")
    print(f"Fresh image: {world.caption(scene)}\nQ: {question}\nA: {answer.strip()} (truth: {scene[0].colour})")


# The miniature's stage-1 settings; anything given on the command line comes later and wins.
MINIATURE_ARGS = [
    "--output_dir", "outputs/instructblip-shapes-miniature",
    "--per_device_train_batch_size", "32",
    "--max_steps", "3000",
    "--learning_rate", "3e-3",
    "--warmup_steps", "0.05",
    "--logging_steps", "250",
    "--save_strategy", "no",
    "--report_to", "none",
    "--dataloader_pin_memory", "false",
]


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, InstructBlipTrainingArguments))
    miniature = not any(arg.split("=")[0] in ("--model_name_or_path", "--datasets") for arg in argv)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        [*MINIATURE_ARGS, *argv] if miniature else argv
    )
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_warning()
    if miniature:
        return run_miniature(model_args, data_args, training_args)
    if model_args.model_name_or_path is None or not data_args.datasets:
        raise ValueError("Real runs need both --model_name_or_path and --datasets (or neither, for the miniature).")
    return run_real(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
