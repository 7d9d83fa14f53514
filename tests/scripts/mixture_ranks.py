"""Writes the batches of the mixture stream one process sees, as Trainer builds its train dataloader.

Run with `torchrun --nproc_per_node=2 mixture_ranks.py OUT` (gloo on CPU) or plainly for one process.
"""

import json
import sys

import torch
from accelerate import Accelerator

from hf_instructblip.training.mixture import MixtureSampler

SIZES = {"caption": 40, "vqa": 25, "vqg": 7}


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    dataset = torch.utils.data.ConcatDataset([range(size) for size in SIZES.values()])
    positions = torch.utils.data.TensorDataset(torch.arange(len(dataset)))
    sampler = MixtureSampler(SIZES, num_samples=96, seed=7)
    loader = accelerator.prepare(torch.utils.data.DataLoader(positions, batch_size=4, sampler=sampler))
    batches = [batch[0].tolist() for batch in loader]
    with open(f"{out_dir}/rank{accelerator.process_index}_of{accelerator.num_processes}.json", "w") as f:
        json.dump(batches, f)


if __name__ == "__main__":
    main(sys.argv[1])
