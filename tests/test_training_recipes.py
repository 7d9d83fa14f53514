"""Recipes on tiny synthetic stand-ins that carry each public dataset's real column schema."""

import io
import logging

import datasets
import numpy as np
import PIL.Image
import pytest

from hf_instructblip.training import recipes, templates
from hf_instructblip.training.recipes import HELD_IN_DATASETS, RECIPES, Recipe, prepare_dataset


def png_bytes(color=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def images(n):
    return [{"bytes": png_bytes((40 * i % 256, 0, 0)), "path": None} for i in range(n)]


IMAGE_FEATURES = {"image": datasets.Image()}
VQAV2_ANSWERS = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(["net"] * 7 + ["netting"] * 3)]


def vqav2_like(n=3):
    return datasets.Dataset.from_dict(
        {
            "question_type": ["what is this"] * n,
            "multiple_choice_answer": ["net"] * n,
            "answers": [VQAV2_ANSWERS] * n,
            "image_id": list(range(n)),
            "answer_type": ["other"] * n,
            "question_id": list(range(n)),
            "question": ["What is this photo taken looking through?"] * n,
            "image": images(n),
        },
        features=datasets.Features(
            {
                "question_type": datasets.Value("string"),
                "multiple_choice_answer": datasets.Value("string"),
                "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"), "answer_id": datasets.Value("int64")}],
                "image_id": datasets.Value("int64"),
                "answer_type": datasets.Value("string"),
                "question_id": datasets.Value("int64"),
                "question": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )


def okvqa_like(n=2):  # lmms-lab/OK-VQA: answers as plain strings
    return datasets.Dataset.from_dict(
        {"question_id": ["1", "2"][:n], "image": images(n), "question": ["What sport is this?"] * n,
         "answers": [["tennis"] * 10] * n, "question_type": ["other"] * n, "answer_type": ["other"] * n},
        features=datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                                    "question": datasets.Value("string"), "answers": datasets.Sequence(datasets.Value("string")),
                                    "question_type": datasets.Value("string"), "answer_type": datasets.Value("string")}),
    )


def aokvqa_like(n=2):
    return datasets.Dataset.from_dict(
        {"image": images(n), "question_id": ["a", "b"][:n], "question": ["What is the man holding?"] * n,
         "choices": [["bat", "racket", "ball", "net"]] * n, "correct_choice_idx": [1] * n,
         "direct_answers": [["racket"] * 10] * n, "difficult_direct_answer": [False] * n,
         "rationales": [["He plays tennis."]] * n},
        features=datasets.Features({"image": datasets.Image(), "question_id": datasets.Value("string"),
                                    "question": datasets.Value("string"), "choices": datasets.Sequence(datasets.Value("string")),
                                    "correct_choice_idx": datasets.Value("int8"), "direct_answers": datasets.Sequence(datasets.Value("string")),
                                    "difficult_direct_answer": datasets.Value("bool"), "rationales": datasets.Sequence(datasets.Value("string"))}),
    )


def coco_like(n=2):  # HuggingFaceM4/COCO Karpathy: one row per caption, `sentences` struct
    return datasets.Dataset.from_dict(
        {"image": images(n), "filepath": ["train2014"] * n, "sentids": [[1]] * n, "filename": ["a.jpg"] * n,
         "imgid": [1] * n, "split": ["train"] * n,
         "sentences": [{"tokens": ["a", "red", "square"], "raw": "A red square.", "imgid": 1, "sentid": 1}] * n,
         "cocoid": [1] * n},
        features=datasets.Features({"image": datasets.Image(), "filepath": datasets.Value("string"),
                                    "sentids": datasets.Sequence(datasets.Value("int32")), "filename": datasets.Value("string"),
                                    "imgid": datasets.Value("int32"), "split": datasets.Value("string"),
                                    "sentences": {"tokens": datasets.Sequence(datasets.Value("string")), "raw": datasets.Value("string"),
                                                  "imgid": datasets.Value("int32"), "sentid": datasets.Value("int32")},
                                    "cocoid": datasets.Value("int32")}),
    )


def textcaps_like(n=2):  # lmms-lab/TextCaps (no OCR column) + the TextVQA OCR column when joined
    return datasets.Dataset.from_dict(
        {"image": images(n), "image_id": ["x"] * n, "caption_str": [["A sign that says stop.", "A stop sign."]] * n,
         "reference_strs": [["a sign that says stop", "a stop sign"]] * n, "ocr_tokens": [["STOP", "ahead"]] * n},
        features=datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("string"),
                                    "caption_str": datasets.Sequence(datasets.Value("string")),
                                    "reference_strs": datasets.Sequence(datasets.Value("string")),
                                    "ocr_tokens": datasets.Sequence(datasets.Value("string"))}),
    )


def ocrvqa_like(n=2):  # howard-hou/OCR-VQA
    return datasets.Dataset.from_dict(
        {"image": images(n), "image_id": ["b1"] * n,
         "questions": [["Who wrote this book?", "What is the title of this book?"]] * n,
         "answers": [["Jane Doe", "Shapes"]] * n, "ocr_tokens": [["Shapes", "Jane", "Doe"]] * n,
         "title": ["Shapes"] * n, "genre": ["Art"] * n},
        features=datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("string"),
                                    "questions": datasets.Sequence(datasets.Value("string")),
                                    "answers": datasets.Sequence(datasets.Value("string")),
                                    "ocr_tokens": datasets.Sequence(datasets.Value("string")),
                                    "title": datasets.Value("string"), "genre": datasets.Value("string")}),
    )


def llava_like(tmp_path, n=2):  # LLaVA-Instruct-150K json: image = file name under COCO train2017
    for i in range(n):
        PIL.Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / f"{i:012d}.png")
    conversations = [
        {"from": "human", "value": "<image>\nWhat color is the shape?"},
        {"from": "gpt", "value": "The shape is blue."},
        {"from": "human", "value": "Is it large?"},
        {"from": "gpt", "value": "No, it is small."},
    ]
    return datasets.Dataset.from_list(
        [{"id": f"{i:012d}", "image": f"{i:012d}.png", "conversations": conversations} for i in range(n)]
    )


def webcapfilt_like(tmp_path, n=2):
    for i in range(n):
        PIL.Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / f"cc_{i}.png")
    return datasets.Dataset.from_list([{"image": f"cc_{i}.png", "caption": "a green square"} for i in range(n)])


def test_held_in_recipes_cover_the_paper():
    assert len(HELD_IN_DATASETS) == 13
    assert set(HELD_IN_DATASETS) <= set(RECIPES)


@pytest.mark.parametrize(
    ("recipe", "make", "instructions", "target"),
    [
        ("vqav2", vqav2_like, templates.VQA_TEMPLATES, {"net", "netting"}),
        ("okvqa", okvqa_like, templates.VQA_TEMPLATES, {"tennis"}),
        ("aokvqa", aokvqa_like, templates.VQA_TEMPLATES, {"racket"}),
        ("vqg_vqav2", vqav2_like, templates.QUESTION_GENERATION_TEMPLATES, {"What is this photo taken looking through?"}),
        ("vqg_okvqa", okvqa_like, templates.QUESTION_GENERATION_TEMPLATES, {"What sport is this?"}),
        ("vqg_aokvqa", aokvqa_like, templates.QUESTION_GENERATION_TEMPLATES, {"What is the man holding?"}),
        ("coco_caption", coco_like, templates.CAPTION_TEMPLATES, {"A red square."}),
    ],
)
def test_recipe_on_real_schema(recipe, make, instructions, target):
    dataset = prepare_dataset(make(), recipe, seed=0)
    for row in dataset:
        assert isinstance(row["image"], PIL.Image.Image) and row["image"].mode == "RGB"
        assert row["text_output"] in target
        assert any(_matches(template, row["text_input"]) for template in instructions), row["text_input"]


def _matches(template: str, text: str) -> bool:
    prefix, _, suffix = template.partition("{")
    suffix = suffix.partition("}")[2]
    return text.startswith(prefix) and text.endswith(suffix)


def test_ocr_datasets_put_ocr_tokens_before_the_instruction():
    caption = prepare_dataset(textcaps_like(), "textcaps")[0]
    assert caption["text_input"].startswith("OCR tokens: STOP, ahead. ")
    assert caption["text_output"] in {"A sign that says stop.", "A stop sign."}
    qa = prepare_dataset(ocrvqa_like(), "ocrvqa")[0]
    assert qa["text_input"].startswith("OCR tokens: Shapes, Jane, Doe. ")
    pair = {"Jane Doe": "Who wrote this book?", "Shapes": "What is the title of this book?"}
    assert pair[qa["text_output"]] in qa["text_input"]


def test_missing_optional_ocr_column_warns(caplog):
    with caplog.at_level(logging.WARNING):
        row = prepare_dataset(textcaps_like().remove_columns("ocr_tokens"), "textcaps")[0]
    assert "OCR tokens" not in row["text_input"]
    assert "no 'ocr_tokens' column" in caplog.text


def test_multiple_choice_lists_lettered_options():
    row = prepare_dataset(aokvqa_like(), "aokvqa_mc")[0]
    assert "What is the man holding? Options: (a) bat (b) racket (c) ball (d) net." in row["text_input"]
    assert row["text_output"] == "racket"


def test_llava_turns_with_history_and_image_root(tmp_path):
    dataset = prepare_dataset(llava_like(tmp_path), "llava_conversation", image_root=str(tmp_path), seed=3)
    seen = set()
    for seed in range(8):
        row = prepare_dataset(llava_like(tmp_path), "llava_conversation", image_root=str(tmp_path), seed=seed)[0]
        seen.add((row["text_input"], row["text_output"]))
    assert seen == {
        ("What color is the shape?", "The shape is blue."),
        ("What color is the shape?\nThe shape is blue.\nIs it large?", "No, it is small."),
    }
    assert dataset[1]["image"].getpixel((0, 0)) == (0, 0, 255)


def test_path_images_and_custom_columns(tmp_path):
    row = prepare_dataset(webcapfilt_like(tmp_path), "web_capfilt", image_root=str(tmp_path))[0]
    assert row["text_output"] == "a green square" and row["image"].size == (8, 8)
    renamed = vqav2_like().rename_column("question", "q")
    assert prepare_dataset(renamed, "vqav2", columns={"question": "q"})[0]["text_output"] in {"net", "netting"}
    with pytest.raises(ValueError, match="no column 'question'"):
        prepare_dataset(renamed, "vqav2")
    with pytest.raises(ValueError, match="Unknown column roles"):
        prepare_dataset(renamed, "vqav2", columns={"questoin": "q"})


def test_custom_dataset_and_custom_recipe():
    ds = datasets.Dataset.from_dict(
        {"image": images(1), "text_input": ["Describe."], "text_output": ["red"]}, features=datasets.Features(
            {"image": datasets.Image(), "text_input": datasets.Value("string"), "text_output": datasets.Value("string")}))
    assert prepare_dataset(ds, "custom")[0]["text_input"] == "Describe."
    shout = Recipe(lambda row, rng: ("Say it loud.", row["caption"].upper()), {"image": "image", "caption": "text_output"})
    assert prepare_dataset(ds, shout, name="shout")[0]["text_output"] == "RED"


def test_answers_are_sampled_by_frequency():
    dataset = prepare_dataset(vqav2_like(2000), "vqav2", seed=0)
    outputs = dataset[:]["text_output"]
    share = outputs.count("net") / len(outputs)
    assert abs(share - 0.7) < 0.04  # 7 of 10 annotators said "net"


def test_templates_are_reproducible_and_vary_per_example():
    first = prepare_dataset(vqav2_like(50), "vqav2", seed=1)[:]["text_input"]
    again = prepare_dataset(vqav2_like(50), "vqav2", seed=1)
    assert [again[i]["text_input"] for i in reversed(range(50))] == first[::-1]  # independent of read order
    assert prepare_dataset(vqav2_like(50), "vqav2", seed=2)[:]["text_input"] != first
    assert len(set(first)) > 5


def test_rows_are_not_materialised():
    dataset = prepare_dataset(vqav2_like(), "vqav2")
    assert dataset.features["image"] == datasets.Image(decode=False)  # decoded by the transform, per read
    assert "text_input" not in dataset.column_names


def test_corrupt_image_is_skipped_with_a_counted_warning(caplog):
    source = vqav2_like(3)
    broken = source.cast_column("image", datasets.Image(decode=False)).to_dict()
    broken["image"][1] = {"bytes": b"not a png", "path": None}
    broken = datasets.Dataset.from_dict(broken, features=source.features)
    before = recipes.BAD_IMAGE_COUNTS["broken"]
    with caplog.at_level(logging.WARNING):
        rows = prepare_dataset(broken, "vqav2", name="broken")[:]
    assert [image is None for image in rows["image"]] == [False, True, False]
    assert recipes.BAD_IMAGE_COUNTS["broken"] == before + 1
    assert "row 1 of dataset 'broken'" in caplog.text
    with pytest.raises(ValueError, match="Unreadable image in dataset 'broken', row 1"):
        prepare_dataset(broken, "vqav2", name="broken", on_bad_image="raise")[1]


def test_bad_arguments_name_the_input():
    with pytest.raises(ValueError, match="Unknown recipe 'vqa3'"):
        prepare_dataset(vqav2_like(), "vqa3")
    with pytest.raises(ValueError, match="on_bad_image"):
        prepare_dataset(vqav2_like(), "vqav2", on_bad_image="ignore")


def test_template_helpers():
    assert templates.format_choices(["cat", "dog"]) == "(a) cat (b) dog"
    assert templates.format_ocr_tokens([str(i) for i in range(40)]).count(",") == templates.MAX_OCR_TOKENS - 1
    assert templates.format_ocr_tokens([]) == ""
    assert len(templates.CAPTION_TEMPLATES) == 13 and len(templates.VQA_TEMPLATES) == 10
    assert len(templates.QUESTION_GENERATION_TEMPLATES) == 6
    draws = {templates.choose_template("caption", templates.example_rng(0, "coco", i)) for i in range(400)}
    assert draws == set(templates.CAPTION_TEMPLATES)
    rng = templates.example_rng(0, "coco", 7)
    assert np.array_equal(rng.integers(1000, size=5), templates.example_rng(0, "coco", 7).integers(1000, size=5))


def test_image_identity_is_the_content_or_the_resolved_path(tmp_path):
    """The vision cache's key: equal encoded bytes share it across rows and datasets; paths resolve to one file."""
    same_picture = datasets.Dataset.from_dict({"image": images(2) + images(1), "question": ["a", "b", "c"],
                                               "answers": [["x"]] * 3}, features=datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answers": [datasets.Value("string")]}))
    ids = [row["image_id"] for row in prepare_dataset(same_picture, "vqav2")]
    assert ids[0] == ids[2] != ids[1]
    assert prepare_dataset(same_picture.select([0]), "okvqa")[0]["image_id"] == ids[0]
    by_path = prepare_dataset(webcapfilt_like(tmp_path), "web_capfilt", image_root=str(tmp_path))
    assert by_path[0]["image_id"] == "path:" + str(tmp_path / "cc_0.png")
