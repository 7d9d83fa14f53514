"""examples/run_instruct_tuning.py: argument parsing, and the embedded miniature end to end at toy sizes."""

import json
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
    tokenizer = shapes_miniature.build_processor().tokenizer
    texts = [shapes_miniature.caption(scene)]
    texts += [text for question in shapes_miniature.QUESTIONS.values() for text in question(scene, rng)]
    texts += [example["text_input"] for example in shapes_miniature.described_scene_texts(50, rng)]
    assert all(tokenizer.unk_token_id not in tokenizer(text)["input_ids"] for text in texts)


def held_out_questions() -> set[str]:
    """Every question a held-out task can ask, from the miniature's own question makers."""
    import numpy as np

    rng = np.random.default_rng(0)
    scenes = [shapes_miniature.random_scene(rng) for _ in range(3000)]
    questions = {shapes_miniature.QUESTIONS[task](scene, rng)[0] for task in shapes_miniature.HELD_OUT_TASKS
                 for scene in scenes}
    colours, shapes = len(shapes_miniature.COLOURS), len(shapes_miniature.SHAPES)
    assert len(questions) == 2 * colours * shapes + shapes  # where / is there (each pair), which colour (each shape)
    return questions


def held_out_in(texts) -> list[str]:
    questions = held_out_questions()
    return [text for text in texts if any(question in text.lower() for question in questions)]


def test_miniature_end_to_end_at_toy_size(tmp_path, capsys, monkeypatch):
    """The whole pipeline (stage 0 on the shipped LLM, BLIP-2 row, two stage-1 seeds, both ablations, save,
    reload) at toy sizes; records what each stage trained on: no image-grounded held-out question anywhere."""
    stage0, stage1 = [], []

    def recorded(batches, seen):
        def recording(settings):
            for batch in batches(settings):
                seen.append(batch)
                yield batch

        return recording

    class RecordingTrainer(shapes_miniature.InstructBlipTrainer):
        def __init__(self, *args, train_datasets, **kwargs):
            stage1.append(train_datasets)
            super().__init__(*args, train_datasets=train_datasets, **kwargs)

    monkeypatch.setattr(shapes_miniature, "vision_batches", recorded(shapes_miniature.vision_batches, stage0))
    monkeypatch.setattr(shapes_miniature, "InstructBlipTrainer", RecordingTrainer)
    run_instruct_tuning.main([
        "--output_dir", str(tmp_path / "out"), "--miniature_cache_dir", str(tmp_path / "cache"),
        "--miniature_pretraining_steps", "3", "--max_steps", "2", "--miniature_eval_examples", "6",
        "--miniature_seeds", "2", "--miniature_ablations", "--disable_tqdm", "true",
    ])
    printed = capsys.readouterr().out
    assert f"saved in {tmp_path / 'out'}" in printed
    assert "| BLIP-2 zero-shot (stage 0) |" in printed
    assert "| InstructBLIP, no balancing (sampling ∝ size) |" in printed
    assert "pipeline('image-text-to-text')" in printed
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")

    results = json.loads((tmp_path / "out" / "miniature_results.json").read_text())
    assert set(results) == {"tasks", "ablations", "seconds"} and results["seconds"] > 0
    tasks = shapes_miniature.TASKS
    assert list(results["tasks"]) == list(tasks)
    for task, entry in results["tasks"].items():
        assert set(entry) == {"split", "chance", "blip2", "instructblip", "instructblip_seeds"}
        assert entry["split"] == ("held-out" if task in shapes_miniature.HELD_OUT_TASKS else "held-in")
        assert len(entry["instructblip_seeds"]) == 2
        assert entry["instructblip"] == pytest.approx(sum(entry["instructblip_seeds"]) / 2)
        assert all(0 <= value <= 1 for value in (entry["chance"], entry["blip2"], *entry["instructblip_seeds"]))
    assert set(results["ablations"]) == {"no_instruction_aware", "no_balancing"}
    assert all(list(scores) == list(tasks) for scores in results["ablations"].values())

    # Stage 0 saw images with captions only (the LLM's questions came as text without image: the test below).
    assert len(stage0) == 3 and all(set(captioned) == {"image", "caption"} for captioned in stage0)
    assert not held_out_in(caption for captioned in stage0 for caption in captioned["caption"])
    # Stage 1 (2 seeds x 3 runs) trained on the held-in tasks only, none of whose texts holds a held-out question.
    assert len(stage1) == 6 and all(list(datasets) == list(shapes_miniature.TRAIN_SIZES) for datasets in stage1)
    for datasets in stage1:
        for dataset in datasets.values():
            columns = dataset.data.drop(["image"]).to_pydict()
            assert not held_out_in(str(value) for values in columns.values() for value in values)


def test_language_model_rebuilds_from_text_alone_and_round_trips(tmp_path, monkeypatch, capsys):
    """The shipped LLM's recipe at toy size: described scenes as text only, never an image; saved with its tokenizer,
    read back by the miniature, and refused with the fix when the vocabulary has changed since."""
    seen = []
    original = shapes_miniature.language_batches

    def recording(settings):
        for batch in original(settings):
            seen.append(batch)
            yield batch

    monkeypatch.setattr(shapes_miniature, "language_batches", recording)
    shapes_miniature.main([str(tmp_path / "llm"), "--steps", "2", "--batch_size", "4"])
    assert "Text probe (validation scenes): caption" in capsys.readouterr().out
    assert len(seen) == 2 and all(set(example) == {"caption", "text_input", "text_output"}
                                  for described in seen for example in described)
    processor = shapes_miniature.build_processor()
    reloaded = shapes_miniature.load_language_model(str(tmp_path / "llm"), processor.tokenizer)
    assert reloaded.config.hidden_size == shapes_miniature.language_model_config(processor.tokenizer).hidden_size

    vocabulary = json.loads((tmp_path / "llm" / "tokenizer.json").read_text())
    vocabulary["model"]["vocab"]["zebra"] = vocabulary["model"]["vocab"].pop("circle")
    (tmp_path / "llm" / "tokenizer.json").write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError, match=r"another vocabulary than today's \(differing: circle, zebra\); rebuild it"):
        shapes_miniature.load_language_model(str(tmp_path / "llm"), processor.tokenizer)
    with pytest.raises(FileNotFoundError, match="No pre-trained miniature LLM in .*rebuild it with"):
        shapes_miniature.load_language_model(str(tmp_path / "nothing"), processor.tokenizer)


def test_shipped_language_model_answers_every_question_type_from_text():
    """The skill that held-out transfer rests on, and the reason the LLM ships: told a fresh scene in text, it answers
    every task, held-out types included (the text-only pre-training saw them; no image ever did)."""
    processor = shapes_miniature.build_processor()
    language_model = shapes_miniature.load_language_model(shapes_miniature.LANGUAGE_MODEL_DIR, processor.tokenizer)
    sets = shapes_miniature.evaluation_sets(40, seed=2)
    scores = shapes_miniature.text_probe(language_model, processor.tokenizer, sets)
    assert min(scores.values()) >= 0.95, scores


def test_held_out_questions_are_found_where_they_are_allowed():
    """The check above can fail: held-out questions are found in the evaluation sets and in the LLM's text."""
    sets = shapes_miniature.evaluation_sets(20)
    for task in shapes_miniature.HELD_OUT_TASKS:
        assert len(held_out_in(sets[task]["instructions"])) == 20
    assert not held_out_in(sets["colour_vqa"]["instructions"])
    import numpy as np

    described = shapes_miniature.described_scene_texts(200, np.random.default_rng(0))
    assert len(held_out_in(example["text_input"] for example in described)) > 30


def test_help_opens_with_the_miniature_and_its_defaults(capsys):
    with pytest.raises(SystemExit):
        run_instruct_tuning.main(["--help"])
    printed = capsys.readouterr().out
    description = printed[printed.index("\n\n") :][:1200]
    defaults = shapes_miniature.TRAINING_DEFAULTS
    assert "the paper in miniature" in description
    for value in ("max_steps", "per_device_train_batch_size", "learning_rate", "output_dir"):
        assert str(defaults[value]) in description
    assert "OMP_NUM_THREADS" in description


def test_miniature_flags_are_refused_in_real_runs():
    with pytest.raises(ValueError, match="apply to the miniature only"):
        run_instruct_tuning.main(["--model_name_or_path", "m", "--datasets", "vqav2=d", "--miniature_seeds", "2"])


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
