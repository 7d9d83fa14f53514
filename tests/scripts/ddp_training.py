"""Trains the tiny model for a few steps with `InstructBlipTrainer` and saves the trained weights of one process.

Run with `torchrun --standalone --nproc_per_node=2 ddp_training.py OUT 4` (DDP over gloo on CPU, 4 examples per rank)
or plainly as `python ddp_training.py OUT 8` (one process, the same 8 examples per step).
"""

import os
import sys

import datasets
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tiny  # noqa: E402

from hf_instructblip.training import InstructBlipTrainer, InstructBlipTrainingArguments, prepare_dataset  # noqa: E402


def task(name: str, n: int, answers: list[str]):
    rows = {"image": [tiny.image(i) for i in range(n)], "text_input": [f"{name} {i}?" for i in range(n)],
            "text_output": [answers[i % len(answers)] for i in range(n)]}
    return prepare_dataset(datasets.Dataset.from_dict(rows), "custom", name=name)


def main(out_dir: str, per_device_batch: int) -> None:
    args = InstructBlipTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=per_device_batch, max_steps=3, learning_rate=1e-2,
        warmup_steps=0, seed=3, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    )
    # Without dropout, whose random masks differ between one process and two, the runs must agree.
    qformer = {**tiny.config_kwargs()["qformer_config"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    trainer = InstructBlipTrainer(
        model=tiny.model("llama", qformer_config=qformer), args=args, processing_class=tiny.processor("llama"),
        train_datasets={"colour": task("colour", 24, ["red", "green", "blue"]), "shape": task("shape", 6, ["disc"])},
    )
    trainer.train()
    trained = {name: p.detach().contiguous() for name, p in trainer.model.named_parameters() if p.requires_grad}
    save_file(trained, os.path.join(out_dir, f"rank{trainer.args.process_index}_of{trainer.args.world_size}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
