"""Instruction templates of the InstructBLIP paper (Appendix, Table 5) and the text formatting around them.

The paper wraps every held-in example in one template drawn at random from its task's pool. The `<Image>` prefix
of the paper's table is not part of the strings here: the image placeholders are added by the collator (training)
or the processor (inference), always before the instruction.

Randomness is per example, derived from `(seed, dataset name, example index)` by [`example_rng`], so the template
an example gets does not depend on data-loader workers, ranks or the order in which examples are read.
"""

import zlib

import numpy as np

CAPTION_TEMPLATES = (
    "A short image caption:",
    "A short image description:",
    "A photo of",
    "An image that shows",
    "Write a short description for the image.",
    "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.",
    "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture.",
)

VQA_TEMPLATES = (
    "{question}",
    "Question: {question}",
    "{question} A short answer to the question is",
    "Q: {question} A:",
    "Question: {question} Short answer:",
    "Given the image, answer the following question with no more than three words. {question}",
    "Based on the image, respond to this question with a short answer: {question}. Answer:",
    "Use the provided image to answer the question: {question} Provide your answer as short as possible:",
    'What is the answer to the following question? "{question}"',
    'The question "{question}" can be answered using the image. A short answer is',
)

QUESTION_GENERATION_TEMPLATES = (
    "Given the image, generate a question whose answer is: {answer}. Question:",
    "Based on the image, provide a question with the answer: {answer}. Question:",
    'Given the visual representation, create a question for which the answer is "{answer}".',
    "From the image provided, craft a question that leads to the reply: {answer}. Question:",
    "Considering the picture, come up with a question where the answer is: {answer}.",
    "Taking the image into account, generate an question that has the answer: {answer}. Question:",
)

TEMPLATES = {"caption": CAPTION_TEMPLATES, "vqa": VQA_TEMPLATES, "question_generation": QUESTION_GENERATION_TEMPLATES}

# LAVIS keeps the first 30 OCR tokens, joined by ", ".
MAX_OCR_TOKENS = 30


def example_rng(seed: int, dataset_name: str, index: int) -> np.random.Generator:
    """A generator that depends only on `(seed, dataset_name, index)`.

    `zlib.crc32` rather than `hash()`: Python salts string hashes per process, which would give each data-loader
    worker a different template for the same example.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}.")
    return np.random.default_rng([seed, zlib.crc32(dataset_name.encode("utf-8")), index])


def choose_template(task: str, rng: np.random.Generator) -> str:
    """One template of `task`'s pool ("caption", "vqa" or "question_generation"), uniformly."""
    if task not in TEMPLATES:
        raise ValueError(f"Unknown template task {task!r}; choose one of {sorted(TEMPLATES)}.")
    pool = TEMPLATES[task]
    return pool[rng.integers(len(pool))]


def format_ocr_tokens(ocr_tokens: list[str] | None) -> str:
    """`"OCR tokens: a, b, c. "`: the reading-comprehension prefix the paper puts before the instruction.

    Empty or missing OCR gives `""`, so an image without text reads like an ordinary example.
    """
    tokens = [token for token in (ocr_tokens or []) if token][:MAX_OCR_TOKENS]
    return f"OCR tokens: {', '.join(tokens)}. " if tokens else ""


def format_choices(choices: list[str]) -> str:
    """LAVIS's multiple-choice layout: `["cat", "dog"]` → `"(a) cat (b) dog"`."""
    if not choices:
        raise ValueError("A multiple-choice question needs at least one choice.")
    if len(choices) > 26:
        raise ValueError(f"At most 26 choices can be lettered (a)-(z), got {len(choices)}.")
    return " ".join(f"({chr(ord('a') + i)}) {choice}" for i, choice in enumerate(choices))


def with_choices(question: str, choices: list[str] | None) -> str:
    """Appends lettered options to a question when there are any: `"What is it? Options: (a) cat (b) dog."`."""
    return f"{question} Options: {format_choices(choices)}." if choices else question


def caption_instruction(rng: np.random.Generator, ocr_tokens: list[str] | None = None) -> str:
    return format_ocr_tokens(ocr_tokens) + choose_template("caption", rng)


def vqa_instruction(question: str, rng: np.random.Generator, ocr_tokens: list[str] | None = None) -> str:
    return format_ocr_tokens(ocr_tokens) + choose_template("vqa", rng).format(question=question)


def question_generation_instruction(answer: str, rng: np.random.Generator) -> str:
    return choose_template("question_generation", rng).format(answer=answer)


__all__ = [
    "CAPTION_TEMPLATES",
    "MAX_OCR_TOKENS",
    "QUESTION_GENERATION_TEMPLATES",
    "TEMPLATES",
    "VQA_TEMPLATES",
    "caption_instruction",
    "choose_template",
    "example_rng",
    "format_choices",
    "format_ocr_tokens",
    "question_generation_instruction",
    "vqa_instruction",
    "with_choices",
]
