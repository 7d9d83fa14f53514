"""Convert a Salesforce LAVIS InstructBLIP checkpoint to a Hugging Face model directory (hf_instructblip).

Example (released Vicuna-7B model):

    python -m hf_instructblip.conversion \
        --lavis-checkpoint instruct_blip_vicuna7b_trimmed.pth --vit-checkpoint eva_vit_g.pth \
        --llm lmsys/vicuna-7b-v1.1 --variant vicuna7b --output instructblip-vicuna7b
"""

import argparse
import logging

import torch

from .convert import convert_lavis_checkpoint, push_to_hub
from .errors import ConversionError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
VARIANTS = ["vicuna7b", "vicuna13b", "flant5xl", "flant5xxl"]
logger = logging.getLogger("hf_instructblip.conversion")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--lavis-checkpoint",
        required=True,
        help='LAVIS .pth: {"model": state_dict} or a raw state dict, trimmed or full',
    )
    parser.add_argument(
        "--vit-checkpoint",
        help="raw EVA-CLIP ViT file (eva_vit_g.pth); not needed when the checkpoint holds visual_encoder.*",
    )
    parser.add_argument(
        "--llm", required=True, help="HF directory or Hub repo of the Vicuna / Flan-T5 the checkpoint was trained with"
    )
    parser.add_argument(
        "--qformer-tokenizer", default="bert-base-uncased", help="BERT tokenizer (with config.json) of the Q-Former"
    )
    parser.add_argument("--variant", choices=VARIANTS, help="released model whose shapes the inputs must have")
    parser.add_argument(
        "--vision-layers",
        type=int,
        help="ViT blocks to take from --vit-checkpoint (default: all but the last when it has norm.*)",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the written weights")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    parser.add_argument("--output", required=True, help="output directory (written only once complete)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output whole")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="also upload the output directory to this Hub repo")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        output = convert_lavis_checkpoint(
            args.lavis_checkpoint,
            args.llm,
            args.output,
            vit_checkpoint=args.vit_checkpoint,
            qformer_tokenizer=args.qformer_tokenizer,
            variant=args.variant,
            vision_layers=args.vision_layers,
            dtype=DTYPES[args.dtype],
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except (ConversionError, OSError) as error:  # an input or a disk the user can fix: no traceback, exit status 1
        raise SystemExit("error: " + " ".join(line.strip() for line in str(error).splitlines())) from None
    logger.info("Wrote %s", output)
    if args.push_to_hub:
        logger.info("Uploaded to %s", push_to_hub(output, args.push_to_hub))


if __name__ == "__main__":
    main()
