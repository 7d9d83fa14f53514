"""Model cards of the checkpoints this package writes (the converter's and the trainer's): Hub metadata through
`huggingface_hub.ModelCardData`, and a usage snippet that runs as written (tested)."""

from huggingface_hub import ModelCard, ModelCardData


def usage_snippet(model_id: str, decoder_only: bool) -> str:
    """Python that loads `model_id` without this package (remote code) and answers a question about an image."""
    answer = (
        'answer_ids = output_ids[:, inputs["input_ids"].shape[1]:]  # generate() returns the prompt, then the answer'
        if decoder_only
        else "answer_ids = output_ids  # the decoder's start token, then the answer"
    )
    return f"""```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model_id = {model_id!r}
model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
image = Image.new("RGB", (224, 224), "white")  # or Image.open("photo.jpg")
inputs = processor(images=image, text="What is unusual about this image?", return_tensors="pt")
output_ids = model.generate(**inputs, max_new_tokens=30)
{answer}
print(processor.batch_decode(answer_ids, skip_special_tokens=True)[0])
```

With `hf_instructblip` installed, `InstructBlipForConditionalGeneration` and `InstructBlipProcessor` load it too.
"""


def model_card(
    body: str,
    *,
    model_id: str,
    decoder_only: bool,
    base_model: str | list[str] | None = None,
    datasets: list[str] | None = None,
    license: str | None = None,
    tags: list[str] = (),
) -> ModelCard:
    """A card with InstructBLIP's Hub metadata, `body` (Markdown from the title on) and the usage section."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_model,
        datasets=datasets or None,
        license=license,
        tags=["instructblip", "hf_instructblip", "image-text-to-text", *tags],
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n\n## Usage\n\n{usage_snippet(model_id, decoder_only)}")


__all__ = ["model_card", "usage_snippet"]
