"""Writes the batches of the mixture stream one process sees through `InstructBlipTrainer.get_train_dataloader()`.

Run with `torchrun --standalone --nproc_per_node=2 mixture_ranks.py OUT` (gloo on CPU) or plainly for one process.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tiny  # noqa: E402

from hf_instructblip.training.trainer import InstructBlipTrainer, InstructBlipTrainingArguments  # noqa: E402

SIZES = {"caption": 40, "vqa": 25, "vqg": 7}


def main(out_dir: str) -> None:
    # Each row is its own global position, so the batches show which rows of the concatenation a rank received.
    offsets = {"caption": 0, "vqa": 40, "vqg": 65}
    datasets = {name: [offsets[name] + i for i in range(size)] for name, size in SIZES.items()}
    args = InstructBlipTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=4, seed=7, report_to=[], use_cpu=True
    )
    trainer = InstructBlipTrainer(
        model=tiny.model("llama"), args=args, train_datasets=datasets, data_collator=torch.tensor
    )
    batches = [batch.tolist() for batch in trainer.get_train_dataloader()]
    rank, world = trainer.args.process_index, trainer.args.world_size
    with open(f"{out_dir}/rank{rank}_of{world}.json", "w") as f:
        json.dump(batches, f)


if __name__ == "__main__":
    main(sys.argv[1])
