"""The paper in miniature: a synthetic world of coloured shapes, a tiny InstructBLIP, and its stage-0 pre-training.

The domain stands in for the real data: 48×48 images with 1-3 objects (distinct colours and shapes, in slots left /
top / right / bottom), described by captions and questions. Several "datasets" of very different sizes play the
held-in datasets (captions, colour / shape / count VQA, question generation); two question types are never trained
on and play the held-out tasks (where is it? is there one?).

Stage 0 stands in for EVA-CLIP + Vicuna + BLIP-2 pre-training: every parameter trains on promptless captioning plus
a text-only language-model loss on captions and question/answer strings, so the frozen vision tower and LLM of
stage 1 (instruction tuning, `run_instruct_tuning.py`) are meaningful rather than random.
"""

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass

import datasets
import numpy as np
import PIL.Image
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import (
    BertTokenizer,
    BlipImageProcessorPil,
    LlamaConfig,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from hf_instructblip import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor
from hf_instructblip.training import templates
from hf_instructblip.training.collator import InstructBlipDataCollator

IMAGE_SIZE = 48
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 235), "yellow": (230, 220, 40)}
SHAPES = ("circle", "square", "triangle")
# Slot → (x, y) centre and the caption phrase.
SLOTS = {"left": ((12, 24), "on the left"), "top": ((24, 12), "at the top"),
         "right": ((36, 24), "on the right"), "bottom": ((24, 36), "at the bottom")}
RADIUS = 6
NUMBERS = ("one", "two", "three")

# Held-in tasks, with their training sizes: very different, as in the paper (captions ≫ VQA ≫ counting).
TRAIN_SIZES = {"caption": 5000, "colour_vqa": 2000, "shape_vqa": 500, "count_vqa": 120, "question_generation": 250}
HELD_OUT_TASKS = ("where_vqa", "exists_vqa")


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    slot: str


# --- the world -------------------------------------------------------------------------------------------------------


def random_scene(rng: np.random.Generator) -> list[Thing]:
    count = int(rng.integers(1, 4))
    colours = rng.choice(list(COLOURS), count, replace=False)
    shapes = rng.choice(SHAPES, count, replace=False)
    slots = rng.choice(list(SLOTS), count, replace=False)
    return sorted((Thing(c, s, p) for c, s, p in zip(colours, shapes, slots)), key=lambda t: list(SLOTS).index(t.slot))


def draw(scene: list[Thing], rng: np.random.Generator) -> PIL.Image.Image:
    """Noisy black canvas; shapes told apart by area: square 4r², circle πr², triangle 2r²."""
    pixels = rng.integers(0, 40, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.int16)
    y, x = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    for thing in scene:
        (cx, cy), _ = SLOTS[thing.slot]
        dx, dy = x - cx, y - cy
        mask = {
            "circle": dx**2 + dy**2 <= RADIUS**2,
            "square": (np.abs(dx) <= RADIUS) & (np.abs(dy) <= RADIUS),
            "triangle": (dy >= -RADIUS) & (dy <= RADIUS) & (np.abs(dx) <= (dy + RADIUS) / 2),
        }[thing.shape]
        pixels[mask] = np.array(COLOURS[thing.colour]) + rng.integers(-15, 16, 3)
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def caption(scene: list[Thing]) -> str:
    return " and ".join(f"a {t.colour} {t.shape} {SLOTS[t.slot][1]}" for t in scene)


def colour_question(scene, rng):
    thing = scene[rng.integers(len(scene))]
    return f"what colour is the {thing.shape} ?", thing.colour


def shape_question(scene, rng):
    thing = scene[rng.integers(len(scene))]
    return f"what shape is the {thing.colour} object ?", thing.shape


def count_question(scene, rng):
    return "how many objects are there ?", NUMBERS[len(scene) - 1]


def where_question(scene, rng):
    thing = scene[rng.integers(len(scene))]
    return f"where is the {thing.colour} {thing.shape} ?", thing.slot


def exists_question(scene, rng):
    if rng.random() < 0.5:
        thing = scene[rng.integers(len(scene))]
        return f"is there a {thing.colour} {thing.shape} ?", "yes"
    present = {(t.colour, t.shape) for t in scene}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    colour, shape = absent[rng.integers(len(absent))]
    return f"is there a {colour} {shape} ?", "no"


QUESTIONS = {"colour_vqa": colour_question, "shape_vqa": shape_question, "count_vqa": count_question,
             "where_vqa": where_question, "exists_vqa": exists_question}


def task_rows(task: str, n: int, seed: int) -> dict[str, list]:
    """`n` examples of `task`, in the column schema of the public datasets the recipes read: captions like COCO
    (`image`, `caption`), VQA like VQAv2 (`image`, `question`, `answers`); question generation reuses colour VQA."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    rows = {"image": [draw(scene, rng) for scene in scenes]}
    if task == "caption":
        rows["caption"] = [caption(scene) for scene in scenes]
        return rows
    qa = [QUESTIONS["colour_vqa" if task == "question_generation" else task](scene, rng) for scene in scenes]
    rows["question"] = [q for q, _ in qa]
    rows["answers"] = [[a] for _, a in qa]
    return rows


def task_dataset(task: str, n: int, seed: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict(task_rows(task, n, seed))


# --- tokenizers and model --------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the tokenizers' units, and exact match's."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def vocabulary() -> list[str]:
    """Every word of the domain and of the paper's templates (the templates wrap the tasks in stage 1)."""
    texts = [*templates.CAPTION_TEMPLATES, *templates.VQA_TEMPLATES, *templates.QUESTION_GENERATION_TEMPLATES]
    texts += [" ".join(COLOURS), " ".join(SHAPES), " ".join(SLOTS), *(phrase for _, phrase in SLOTS.values())]
    texts += ["what colour shape is the object how many objects are there where is there a yes no and ? .",
              " ".join(NUMBERS), "ocr tokens : ,"]
    return sorted({w for text in texts for w in words(text)})


def build_processor() -> InstructBlipProcessor:
    """Word-level tokenizers over the domain's vocabulary, one for the LLM and one for the Q-Former."""
    specials = ["[PAD]", "[UNK]", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="[PAD]", unk_token="[UNK]", padding_side="left")
    bert_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    qformer_tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(bert_specials + vocabulary())})
    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return InstructBlipProcessor(image_processor, tokenizer, qformer_tokenizer, num_query_tokens=8)


def build_model(processor: InstructBlipProcessor, seed: int) -> InstructBlipForConditionalGeneration:
    """≈0.5M parameters: ViT patch 8 (36 patches), Q-Former with cross-attention in every layer, 2-layer LLaMA."""
    tokenizer = processor.tokenizer
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.02),
        qformer_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=len(processor.qformer_tokenizer), cross_attention_frequency=1,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=256),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=512,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False).to_dict(),
        num_query_tokens=processor.num_query_tokens,
        image_token_index=processor.image_token_id,
    )
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config)
    model.generation_config.update(max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return model


# --- stage 0: the pre-trained base ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainingSettings:
    steps: int = 1600
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05
    caption_examples: int = 6000
    text_examples: int = 20000
    seed: int = 0

    def cache_key(self) -> str:
        return hashlib.sha1(json.dumps({**asdict(self), "format": 1}, sort_keys=True).encode()).hexdigest()[:10]


def pretraining_texts(n: int, seed: int) -> list[str]:
    """LM pre-training text: captions and "caption . question answer" strings over every question type, so the
    frozen LLM knows the domain's language (as Vicuna knows English) before it ever sees an instruction."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        scene = random_scene(rng)
        question, answer = QUESTIONS[list(QUESTIONS)[rng.integers(len(QUESTIONS))]](scene, rng)
        texts.append(caption(scene) if rng.random() < 0.3 else f"{caption(scene)} . {question} {answer}")
    return texts


def language_model_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """`<s> text </s>`, loss on every token (with the loss on answers only, question generation never emerged)."""
    rows = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, -100)}


def pretrain(settings: PretrainingSettings):
    """Stage 0: all parameters, promptless captioning + text-only LM loss, AdamW, warmup + cosine, clip 1.0."""
    processor = build_processor()
    model = build_model(processor, settings.seed).train()
    captions = task_rows("caption", settings.caption_examples, settings.seed + 1)
    texts = pretraining_texts(settings.text_examples, settings.seed + 2)
    # Stage 0 has no instruction and captions of at most ~20 words: neither limit ever truncates.
    collator = InstructBlipDataCollator(processor, max_instruction_length=32, max_answer_length=64)
    tokenizer = processor.tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.05)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(settings.warmup_ratio * settings.steps), settings.steps)
    rng = np.random.default_rng(settings.seed + 3)
    progress = tqdm(range(settings.steps), desc="stage 0: pre-training the tiny base")
    for step in progress:
        picks = rng.integers(settings.caption_examples, size=settings.batch_size)
        batch = collator([{"image": captions["image"][i], "text_input": "", "text_output": captions["caption"][i]}
                          for i in picks])
        caption_loss = model(**batch).loss
        text_loss = model.language_model(**language_model_batch(tokenizer, [texts[i] for i in picks])).loss
        loss = caption_loss + text_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            progress.set_postfix(caption_loss=f"{caption_loss.item():.3f}", text_loss=f"{text_loss.item():.3f}")
    return model.eval(), processor


def pretrained_base(cache_dir: str, settings: PretrainingSettings = PretrainingSettings(), log=print):
    """The stage-0 base from `cache_dir`, pre-training (≈1-2 min on 2 cores) and caching it on first use."""
    path = os.path.join(cache_dir, f"shapes-base-{settings.cache_key()}")
    if os.path.isfile(os.path.join(path, "config.json")):
        log(f"Stage 0: loading the cached pre-trained base from {path}")
        return InstructBlipForConditionalGeneration.from_pretrained(path).eval(), InstructBlipProcessor.from_pretrained(path)
    start = time.perf_counter()
    model, processor = pretrain(settings)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    log(f"Stage 0: pre-trained in {time.perf_counter() - start:.0f} s, cached at {path}")
    return model, processor


# --- evaluation ------------------------------------------------------------------------------------------------------

# One fixed instruction per task at evaluation (the paper evaluates with fixed templates too).
EVAL_PROMPTS = {
    "caption": lambda q, a: "A short image description:",
    "colour_vqa": lambda q, a: f"Question: {q} Short answer:",
    "shape_vqa": lambda q, a: f"Question: {q} Short answer:",
    "count_vqa": lambda q, a: f"Question: {q} Short answer:",
    "question_generation": lambda q, a: f"Given the image, generate a question whose answer is: {a}. Question:",
    "where_vqa": lambda q, a: f"Question: {q} Short answer:",
    "exists_vqa": lambda q, a: f"Question: {q} Short answer:",
}


def eval_sets(n: int, seed: int) -> dict[str, dict]:
    """Fresh scenes per task (never seen in training): prompts, targets and chance levels."""
    out = {}
    for k, task in enumerate(EVAL_PROMPTS):
        rows = task_rows(task, n, seed + 100 + k)
        if task == "caption":
            questions, answers, targets = [None] * n, [None] * n, rows["caption"]
        else:
            questions, answers = rows["question"], [a[0] for a in rows["answers"]]
            targets = questions if task == "question_generation" else answers
        out[task] = {"images": rows["image"], "prompts": [EVAL_PROMPTS[task](q, a) for q, a in zip(questions, answers)],
                     "targets": targets, "chance": chance(task, targets, answers)}
    return out


def chance(task: str, targets: list[str], answers: list) -> str:
    """Majority / uniform chance of a blind guesser, as text for the table."""
    if task == "caption":
        return "~0"
    if task == "question_generation":
        # Knowing the answer colour, a blind guess picks one of the three shapes.
        return f"~{1 / len(SHAPES):.2f}"
    values = sorted(set(targets))
    majority = max(targets.count(v) for v in values) / len(targets)
    options = {"colour_vqa": len(COLOURS), "shape_vqa": len(SHAPES), "count_vqa": len(NUMBERS),
               "where_vqa": len(SLOTS), "exists_vqa": 2}[task]
    return f"{majority:.2f} / {1 / options:.2f}"


@torch.no_grad()
def exact_match(model, processor, images, prompts, targets, batch_size: int = 100) -> float:
    correct = 0
    for start in range(0, len(images), batch_size):
        inputs = processor(images=images[start : start + batch_size], text=prompts[start : start + batch_size],
                           return_tensors="pt", padding=True)
        output_ids = model.generate(**inputs, max_new_tokens=24)[:, inputs["input_ids"].shape[1] :]  # the answers
        outputs = processor.batch_decode(output_ids, skip_special_tokens=True)
        correct += sum(words(o) == words(t) for o, t in zip(outputs, targets[start : start + batch_size]))
    return correct / len(images)


def evaluate_tasks(model, processor, sets: dict[str, dict]) -> dict[str, float]:
    return {task: exact_match(model, processor, s["images"], s["prompts"], s["targets"]) for task, s in sets.items()}


__all__ = [
    "HELD_OUT_TASKS",
    "TRAIN_SIZES",
    "PretrainingSettings",
    "build_model",
    "build_processor",
    "caption",
    "draw",
    "eval_sets",
    "evaluate_tasks",
    "exact_match",
    "pretrained_base",
    "random_scene",
    "task_dataset",
]
