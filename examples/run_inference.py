"""Ask InstructBLIP about an image, with `generate()` and with `pipeline("image-text-to-text")`.

    python examples/run_inference.py --model Salesforce/instructblip-vicuna-7b --image photo.jpg \
        --prompt "What is unusual about this image?"

`--model` is a local directory or Hub id of an hf_instructblip checkpoint (converted from LAVIS, or pushed by this
package) or an official transformers InstructBLIP checkpoint. Without `--model` the script builds a tiny random
model and tokenizers in-process, so it runs offline in seconds: it shows the API and the plumbing, and its answers
are random text.
"""

import argparse
import string
import tempfile

import numpy as np
import PIL.Image
import torch
from transformers import BertTokenizer, BlipImageProcessorPil, LlamaConfig, LlamaTokenizer, pipeline

from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor


def tiny_model_and_processor():
    """A random 2-layer model with character-level tokenizers: no download needed."""
    chars = list(string.ascii_lowercase + string.digits + " ?.,")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "[PAD]": 3}
    for piece in ["▁"] + chars + ["▁" + c for c in chars]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[("▁", c) for c in chars], add_bos_token=True,
                               pad_token="[PAD]", padding_side="left")
    qformer_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    qformer_tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(qformer_vocab)})
    processor = InstructBlipProcessor(BlipImageProcessorPil(size={"height": 224, "width": 224}), tokenizer,
                                      qformer_tokenizer, num_query_tokens=8)
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           initializer_range=0.02),
        qformer_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=len(qformer_tokenizer)),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=len(tokenizer), pad_token_id=3, bos_token_id=1, eos_token_id=2).to_dict(),
        num_query_tokens=8,
        image_token_index=processor.image_token_id,
    )
    torch.manual_seed(0)
    return InstructBlipForConditionalGeneration(config).eval(), processor


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or Hub id; a tiny random model if omitted")
    parser.add_argument("--image", help="image path or URL; a random image if omitted")
    parser.add_argument("--prompt", default="What is in the image?")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    if args.model:
        model = InstructBlipForConditionalGeneration.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
        processor = InstructBlipProcessor.from_pretrained(args.model)
        model_path = args.model
    else:
        model, processor = tiny_model_and_processor()
        model_path = tempfile.mkdtemp(prefix="tiny-instructblip-")
        model.save_pretrained(model_path)
        processor.save_pretrained(model_path)
    image = args.image or PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))

    inputs = processor(images=image, text=args.prompt, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output_ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens)
    if model.config.use_decoder_only_language_model:  # transformers' convention: the prompt, then the answer
        output_ids = output_ids[:, inputs["input_ids"].shape[1] :]
    print("generate():", processor.batch_decode(output_ids, skip_special_tokens=True)[0])

    pipe = pipeline("image-text-to-text", model=model_path, dtype=getattr(torch, args.dtype))
    answer = pipe(images=image, text=args.prompt, max_new_tokens=args.max_new_tokens, return_full_text=False)
    print("pipeline():", answer[0]["generated_text"].strip())


if __name__ == "__main__":
    main()
