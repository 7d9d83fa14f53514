"""examples/run_instruct_tuning.py: argument parsing, and the embedded miniature end to end at toy sizes."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import run_instruct_tuning
import shapes_miniature


def test_dataset_specs():
    parse = run_instruct_tuning.parse_dataset_spec
    assert parse("okvqa=HuggingFaceM4/OK-VQA:2.0") == run_instruct_tuning.DatasetSpec(
        "okvqa", "okvqa", "HuggingFaceM4/OK-VQA", 2.0)
    assert parse("coco_caption=/data/coco") == run_instruct_tuning.DatasetSpec("coco_caption", "coco_caption",
                                                                             "/data/coco", 1.0)
    assert parse("vqa_b/vqav2=C:/data/b.json").source == "C:/data/b.json"  # a colon that is not a multiplier
    assert parse("vqa_b/vqav2=b.json:0.5").name == "vqa_b"
    with pytest.raises(ValueError, match="unknown recipe 'coco'"):
        parse("coco=/data")
    with pytest.raises(ValueError, match="recipe=source"):
        parse("okvqa")


def test_real_runs_need_model_and_datasets():
    with pytest.raises(ValueError, match="need both --model_name_or_path and --datasets"):
        run_instruct_tuning.main(["--model_name_or_path", "some/model"])


def test_miniature_world_is_consistent():
    import numpy as np

    rng = np.random.default_rng(0)
    scene = shapes_miniature.random_scene(rng)
    assert 1 <= len(scene) <= 3 and len({t.colour for t in scene}) == len({t.shape for t in scene}) == len(scene)
    image = np.asarray(shapes_miniature.draw(scene, rng))
    (x, y), _ = shapes_miniature.SLOTS[scene[0].slot]
    assert tuple(image[y, x]) != (0, 0, 0) and image[y, x].max() > 150  # the object's centre is painted
    processor = shapes_miniature.build_processor()
    caption = shapes_miniature.caption(scene)
    assert processor.tokenizer.unk_token_id not in processor.tokenizer(caption)["input_ids"]


def test_miniature_end_to_end_at_toy_size(tmp_path, capsys):
    run_instruct_tuning.main([
        "--output_dir", str(tmp_path / "out"), "--miniature_cache_dir", str(tmp_path / "cache"),
        "--miniature_pretraining_steps", "3", "--max_steps", "3", "--miniature_eval_examples", "8",
        "--disable_tqdm", "true",
    ])
    printed = capsys.readouterr().out
    assert "| colour_vqa | held-in |" in printed and "| exists_vqa | held-out |" in printed
    assert "pipeline('image-text-to-text')" in printed
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_real_path_trains_a_saved_checkpoint_on_saved_datasets(tmp_path):
    import datasets
    import tiny

    tiny.model("llama").save_pretrained(tmp_path / "base")
    tiny.processor("llama").save_pretrained(tmp_path / "base")
    rows = {"image": [tiny.image(i) for i in range(6)], "question": ["what is it?"] * 6,
            "answers": [["a cat"] * 10] * 6}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "vqa"))
    datasets.Dataset.from_dict({"image": rows["image"], "caption": ["a cat"] * 6}).save_to_disk(str(tmp_path / "cap"))
    run_instruct_tuning.main([
        "--model_name_or_path", str(tmp_path / "base"),
        "--datasets", f"vqav2={tmp_path / 'vqa'}:2.0", f"captions/web_capfilt={tmp_path / 'cap'}",
        "--eval_datasets", f"vqav2={tmp_path / 'vqa'}",
        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--eval_strategy", "steps", "--eval_steps", "2",
        "--lora_rank", "2", "--disable_tqdm", "true",
    ])
    from hf_instructblip import InstructBlipForConditionalGeneration

    tuned, info = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values())  # LoRA merged: a plain checkpoint
