"""Dataset recipes: the 13 held-in datasets of the paper (and your own) as `{image, text_input, text_output}` rows.

A [`Recipe`] names the source columns it reads (by role) and a function that turns one source row into the
instruction and the target. [`prepare_dataset`] applies it lazily through `datasets.Dataset.with_transform`: nothing
is copied or decoded up front; an image is decoded only when its row is read, and the template an example gets is
a function of `(seed, dataset name, row index)` only (see [`~templates.example_rng`]).

```python
from datasets import load_dataset

vqav2 = prepare_dataset(load_dataset("HuggingFaceM4/VQAv2", split="train"), "vqav2", seed=0)
vqav2[0]  # e.g. {"image": <PIL.Image>, "text_input": "Q: What is this photo taken looking through? A:", "text_output": "net"}
```

Column names default to the schema of the public copy named in each recipe's `source`; pass
`columns={"answers": "my_answers"}` to read another schema. Images are decoded by the processor's own `to_rgb` (the
function inference uses), so training sees the pixels inference sees. An unreadable image does not crash a long
run: its row comes back with `image=None` and a counted warning (the collator drops it), unless
`on_bad_image="raise"`.
"""

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import datasets
import numpy as np

from ..processing_instructblip import to_rgb

from .templates import (
    caption_instruction,
    example_rng,
    question_generation_instruction,
    vqa_instruction,
    with_choices,
)

logger = logging.getLogger(__name__)

# Row position, added as a column so that the transform (which sees column values only) can seed each example.
INDEX_COLUMN = "_instructblip_row"
OUTPUT_COLUMNS = ("image", "image_id", "text_input", "text_output")
BAD_IMAGE_POLICIES = ("skip", "raise")

TextBuilder = Callable[[Mapping, np.random.Generator], tuple[str, str]]


def pick(values, rng: np.random.Generator):
    """One element of a list, uniformly; a scalar is returned as is.

    For VQA answer lists this *is* the paper's frequency-weighted sampling: an answer given by 3 of 10 annotators
    appears 3 times in the list, so it is drawn with probability 3/10.
    """
    if isinstance(values, str | Mapping) or not isinstance(values, list | tuple):
        return values
    if not values:
        raise ValueError("Cannot pick from an empty list (an example without captions/answers?).")
    return values[rng.integers(len(values))]


def as_text(value, keys: tuple[str, ...] = ("raw", "answer", "text", "caption")) -> str:
    """A string from a string or from one of the record shapes public datasets use (`{"raw": ...}` in COCO
    Karpathy, `{"answer": ...}` in VQAv2/OK-VQA)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping):
        for key in keys:
            if key in value:
                return str(value[key]).strip()
    raise ValueError(f"Expected a string or a record with one of the keys {keys}, got {value!r}.")


# --- text builders: one source row (keyed by role) → (instruction, target) -------------------------------------------


def caption_texts(row: Mapping, rng: np.random.Generator) -> tuple[str, str]:
    return caption_instruction(rng, row.get("ocr_tokens")), as_text(pick(row["caption"], rng))


def vqa_texts(row: Mapping, rng: np.random.Generator) -> tuple[str, str]:
    question = as_text(row["question"])
    return vqa_instruction(question, rng, row.get("ocr_tokens")), as_text(pick(row["answers"], rng))


def qa_pairs_texts(row: Mapping, rng: np.random.Generator) -> tuple[str, str]:
    """Rows holding several question/answer pairs about one image (OCR-VQA): one pair per read."""
    questions, answers = row["questions"], row["answers"]
    if len(questions) != len(answers) or not questions:
        raise ValueError(f"Expected as many questions as answers (and at least one), got {questions!r} / {answers!r}.")
    i = rng.integers(len(questions))
    return vqa_instruction(as_text(questions[i]), rng, row.get("ocr_tokens")), as_text(answers[i])


def question_generation_texts(row: Mapping, rng: np.random.Generator) -> tuple[str, str]:
    """VQG: the paper turns VQA data around; the model sees an answer and writes the question."""
    return question_generation_instruction(as_text(pick(row["answers"], rng)), rng), as_text(row["question"])


def multiple_choice_texts(row: Mapping, rng: np.random.Generator) -> tuple[str, str]:
    choices = [as_text(choice) for choice in row["choices"]]
    answer = choices[int(row["correct_choice_idx"])]
    return vqa_instruction(with_choices(as_text(row["question"]), choices), rng), answer


def conversation_texts(row: Mapping, rng: np.random.Generator) -> tuple[str, str]:
    """LLaVA-Instruct, used as is (no templates): one human → gpt turn per read, earlier turns as context.

    The `<image>` marker in LLaVA's first human turn is removed: the collator puts the image tokens first anyway.
    """
    turns = row["conversations"]
    if len(turns) < 2 or len(turns) % 2:
        raise ValueError(f"Expected alternating human/gpt turns, got {len(turns)} turns.")
    i = 2 * rng.integers(len(turns) // 2)
    texts = [turn["value"].replace("<image>", "").strip() for turn in turns[: i + 2]]
    return "\n".join(texts[:-1]), texts[-1]


def passthrough_texts(row: Mapping, rng: np.random.Generator) -> tuple[str, str]:
    """Custom datasets that already hold the instruction and the target."""
    return as_text(row["text_input"]), as_text(row["text_output"])


# --- recipes ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How one dataset's rows become `(instruction, target)` pairs.

    Args:
        build_texts: `(row, rng) -> (text_input, text_output)`; `row` maps each role of `columns` to its value.
        columns: role → source column. The `"image"` role is required: a `datasets.Image` column, or a path
            string (relative paths are joined to `image_root`).
        optional: roles that may be missing from a source (their value is then `None`).
        source: where the default column names come from (documentation).
    """

    build_texts: TextBuilder
    columns: Mapping[str, str]
    optional: tuple[str, ...] = ()
    source: str = ""

    def with_columns(self, overrides: Mapping[str, str] | None) -> "Recipe":
        unknown = set(overrides or {}) - set(self.columns)
        if unknown:
            raise ValueError(f"Unknown column roles {sorted(unknown)}; this recipe reads {sorted(self.columns)}.")
        return Recipe(self.build_texts, {**self.columns, **(overrides or {})}, self.optional, self.source)


_VQA_COLUMNS = {"image": "image", "question": "question", "answers": "answers"}

RECIPES: dict[str, Recipe] = {
    "coco_caption": Recipe(
        caption_texts,
        {"image": "image", "caption": "sentences"},
        source="HuggingFaceM4/COCO (Karpathy splits): one row per caption, `sentences` = {raw, tokens, ...}; a list "
        "of captions per image also works (one is drawn per read).",
    ),
    "web_capfilt": Recipe(
        caption_texts,
        {"image": "image", "caption": "caption"},
        source="BLIP's CapFilt annotation json (LAVIS `ccs_synthetic_filtered_large.json`): {image: path, caption}.",
    ),
    "textcaps": Recipe(
        caption_texts,
        {"image": "image", "caption": "caption_str", "ocr_tokens": "ocr_tokens"},
        optional=("ocr_tokens",),
        source="lmms-lab/TextCaps: image, caption_str (list), ...; OCR tokens (TextVQA's Rosetta OCR) if present.",
    ),
    "vqav2": Recipe(
        vqa_texts,
        _VQA_COLUMNS,
        source="HuggingFaceM4/VQAv2 or lmms-lab/VQAv2: question, answers = 10 × {answer, answer_confidence, answer_id}.",
    ),
    "okvqa": Recipe(
        vqa_texts,
        _VQA_COLUMNS,
        source="HuggingFaceM4/OK-VQA (answers = 10 × {answer, raw_answer, ...}) or lmms-lab/OK-VQA (answers: list).",
    ),
    "aokvqa": Recipe(
        vqa_texts,
        {**_VQA_COLUMNS, "answers": "direct_answers"},
        source="HuggingFaceM4/A-OKVQA: question, direct_answers (10 strings), choices, correct_choice_idx.",
    ),
    "aokvqa_mc": Recipe(
        multiple_choice_texts,
        {"image": "image", "question": "question", "choices": "choices", "correct_choice_idx": "correct_choice_idx"},
        source="HuggingFaceM4/A-OKVQA as multiple choice: options listed as (a) ... (b) ...; the target is the option.",
    ),
    "ocrvqa": Recipe(
        qa_pairs_texts,
        {"image": "image", "questions": "questions", "answers": "answers", "ocr_tokens": "ocr_tokens"},
        optional=("ocr_tokens",),
        source="howard-hou/OCR-VQA: one row per book cover with parallel `questions`/`answers` lists, ocr_tokens.",
    ),
    "vqg_vqav2": Recipe(question_generation_texts, _VQA_COLUMNS, source="as vqav2"),
    "vqg_okvqa": Recipe(question_generation_texts, _VQA_COLUMNS, source="as okvqa"),
    "vqg_aokvqa": Recipe(question_generation_texts, {**_VQA_COLUMNS, "answers": "direct_answers"}, source="as aokvqa"),
    **{
        f"llava_{part}": Recipe(
            conversation_texts,
            {"image": "image", "conversations": "conversations"},
            source=f"liuhaotian/LLaVA-Instruct-150K `{file}`: image = COCO train2017 file name (pass image_root), "
            "conversations = [{from: human|gpt, value}, ...]. CC BY-NC 4.0.",
        )
        for part, file in (
            ("conversation", "conversation_58k.json"),
            ("detail", "detail_23k.json"),
            ("reasoning", "complex_reasoning_77k.json"),
        )
    },
    "custom": Recipe(
        passthrough_texts,
        {"image": "image", "text_input": "text_input", "text_output": "text_output"},
        source="any dataset with image, text_input and text_output columns.",
    ),
}

HELD_IN_DATASETS = (
    "coco_caption",
    "web_capfilt",
    "textcaps",
    "vqav2",
    "okvqa",
    "aokvqa",
    "ocrvqa",
    "vqg_vqav2",
    "vqg_okvqa",
    "vqg_aokvqa",
    "llava_conversation",
    "llava_detail",
    "llava_reasoning",
)


# --- images ----------------------------------------------------------------------------------------------------------

# Unreadable images per dataset name, in this process.
BAD_IMAGE_COUNTS: Counter = Counter()


def _image_source(value, image_root: str | None):
    """What the processor decodes: the bytes or path of a `datasets.Image` record, a path joined to `image_root`."""
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
        if value is None:
            raise ValueError("the image record holds neither bytes nor a path")
    if isinstance(value, str) and image_root and not os.path.isabs(value):
        value = os.path.join(image_root, value)
    return value


def image_identity(value, image_root: str | None = None) -> str | None:
    """What the image is, known before decoding it: a digest of its encoded bytes, else its resolved path.

    The same picture used by several rows or datasets (COCO under VQAv2, OK-VQA and captioning) gets one identity;
    it keys the training cache of vision features. None for an in-memory image or an empty record.
    """
    try:
        source = _image_source(value, image_root)
    except ValueError:  # an empty record; decoding reports it
        return None
    if isinstance(source, bytes):
        return "blake2b:" + hashlib.blake2b(source, digest_size=16).hexdigest()
    if isinstance(source, str):
        return "path:" + os.path.abspath(source)
    return None


def _decode_or_skip(value, *, name: str, index: int, image_root: str | None, on_bad_image: str):
    # Decoded by the processor's own function (any PIL mode, 16-bit grey rescaled, to RGB), so that training reads
    # the pixels inference reads; decoded here, per row, so that a broken file is attributed to its row.
    try:
        return to_rgb(_image_source(value, image_root), f"image of row {index} of dataset {name!r}")
    except ValueError as error:
        if on_bad_image == "raise":
            raise ValueError(f"Unreadable image in dataset {name!r}, row {index}: {error}") from error
        BAD_IMAGE_COUNTS[name] += 1
        logger.warning(
            "Skipping row %d of dataset %r: unreadable image (%s). %d skipped in %r so far in this process.",
            index, name, error, BAD_IMAGE_COUNTS[name], name,
        )
        return None


# --- applying a recipe -----------------------------------------------------------------------------------------------


def resolve_recipe(recipe: str | Recipe, columns: Mapping[str, str] | None = None) -> Recipe:
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or pass a Recipe.")
        recipe = RECIPES[recipe]
    return recipe.with_columns(columns)


def _check_columns(dataset: datasets.Dataset, recipe: Recipe, name: str) -> dict[str, str]:
    """The role → column map actually read; missing optional roles are dropped with a warning."""
    present = {}
    for role, column in recipe.columns.items():
        if column in dataset.column_names:
            present[role] = column
        elif role in recipe.optional:
            logger.warning("Dataset %r has no %r column: its examples get no %s.", name, column, role)
        else:
            raise ValueError(
                f"Dataset {name!r} has no column {column!r} (role {role!r}); its columns are {dataset.column_names}. "
                f"Pass columns={{{role!r}: <your column>}} to read another one."
            )
    return present


def prepare_dataset(
    dataset: datasets.Dataset,
    recipe: str | Recipe,
    *,
    name: str | None = None,
    seed: int = 0,
    columns: Mapping[str, str] | None = None,
    image_root: str | None = None,
    on_bad_image: str = "skip",
) -> datasets.Dataset:
    """`dataset` with rows `{image, image_id, text_input, text_output}`, computed when read (`with_transform`).

    `image_id` is [`image_identity`] of the source image, computed without decoding it.

    Args:
        dataset: a map-style `datasets.Dataset` (for streaming data see [`~mixture.interleave_mixture`]).
        recipe: a key of [`RECIPES`] or a [`Recipe`].
        name: the dataset's name in logs and in per-example seeding; defaults to the recipe key.
        seed: with `name` and the row index, fixes every template and answer choice.
        columns: role → column overrides, e.g. `{"answers": "answer_list"}`.
        image_root: directory that relative image paths are resolved against.
        on_bad_image: `"skip"` (row gets `image=None`, counted warning) or `"raise"`.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}.")
    if name is None:
        if not isinstance(recipe, str):
            raise ValueError("Pass `name` when `recipe` is a Recipe object: it seeds the examples.")
        name = recipe
    recipe = resolve_recipe(recipe, columns)
    if "image" not in recipe.columns:
        raise ValueError(f"Recipe for {name!r} has no 'image' column role.")
    role_to_column = _check_columns(dataset, recipe, name)
    image_column = role_to_column["image"]
    if isinstance(dataset.features.get(image_column), datasets.Image):
        # Decoding is ours, so that a broken file is caught per row instead of inside `datasets`.
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    dataset = dataset.add_column(INDEX_COLUMN, np.arange(len(dataset)))

    def transform(batch: dict) -> dict:
        out = {column: [] for column in OUTPUT_COLUMNS}
        for position, index in enumerate(batch[INDEX_COLUMN]):
            row = {role: batch[column][position] for role, column in role_to_column.items()}
            try:
                text_input, text_output = recipe.build_texts(row, example_rng(seed, name, index))
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise ValueError(f"Dataset {name!r}, row {index}: {error!r}") from error
            out["image"].append(
                _decode_or_skip(row["image"], name=name, index=index, image_root=image_root, on_bad_image=on_bad_image)
            )
            out["image_id"].append(image_identity(row["image"], image_root))
            out["text_input"].append(text_input)
            out["text_output"].append(text_output)
        return out

    return dataset.with_transform(transform, columns=[INDEX_COLUMN, *role_to_column.values()])


def as_training_dataset(dataset, name: str):
    """`dataset` as the trainer reads it, checked before the first step.

    A prepared dataset (see [`prepare_dataset`]) passes as it is. A `datasets.Dataset` that is not must already
    have `image`, `text_input` and `text_output` columns whose texts are all strings (checked now, column by
    column, without decoding images); it is then read through the `custom` recipe, so that an unreadable image
    names its dataset and row (skipped and counted, as in prepared datasets). Other datasets pass unchecked.
    """
    if not isinstance(dataset, datasets.Dataset) or INDEX_COLUMN in dataset.column_names:
        return dataset
    missing = [column for column in RECIPES["custom"].columns.values() if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Training dataset {name!r} has no column(s) {missing}; its columns are {dataset.column_names}. "
            f"Prepare it with prepare_dataset(dataset, <recipe>, name={name!r}): a recipe reads your columns."
        )
    for column in ("text_input", "text_output"):
        bad = [(row, value) for row, value in enumerate(dataset[column]) if not isinstance(value, str)]
        if bad:
            rows, values = [row for row, _ in bad[:5]], [value for _, value in bad[:5]]
            raise ValueError(
                f"Training dataset {name!r}, column {column!r}: {len(bad)} rows are not strings, e.g. rows {rows} "
                f"hold {values!r}. Fix or drop them (dataset.filter) before training."
            )
    return prepare_dataset(dataset, "custom", name=name)


def load_source(path_or_id: str, split: str = "train") -> datasets.Dataset:
    """A split from a `save_to_disk` folder, a json/jsonl/parquet/csv file, or a Hub dataset id."""
    if os.path.isfile(os.path.join(path_or_id, "dataset_dict.json")):
        return datasets.load_from_disk(path_or_id)[split]
    if os.path.isfile(os.path.join(path_or_id, "dataset_info.json")):
        return datasets.load_from_disk(path_or_id)
    extension = os.path.splitext(path_or_id)[1].lstrip(".")
    if os.path.isfile(path_or_id):
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(extension)
        if builder is None:
            raise ValueError(f"Cannot read dataset file {path_or_id!r}: expected .json, .jsonl, .parquet or .csv.")
        return datasets.load_dataset(builder, data_files=path_or_id, split="train")
    return datasets.load_dataset(path_or_id, split=split)


__all__ = [
    "BAD_IMAGE_COUNTS",
    "HELD_IN_DATASETS",
    "RECIPES",
    "Recipe",
    "as_training_dataset",
    "caption_texts",
    "conversation_texts",
    "image_identity",
    "load_source",
    "multiple_choice_texts",
    "passthrough_texts",
    "prepare_dataset",
    "qa_pairs_texts",
    "question_generation_texts",
    "vqa_texts",
]
