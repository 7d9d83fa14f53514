"""examples/run_zero_shot_eval.py end to end, offline: synthetic stand-ins of the 13 held-out tasks in the column
schemas of their public copies (save_to_disk folders, jsonl and parquet files, images and mp4 videos by path),
a tiny LLaMA-based model, and resume after an interruption."""

import json
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

import tiny
from hf_instructblip.evaluation import runner
from hf_instructblip.evaluation.tasks import HELD_OUT_TASKS, TASKS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import run_zero_shot_eval  # noqa: E402


av = pytest.importorskip("av")


def write_video(path: Path, seed: int, frames: int = 6, size: int = 32) -> str:
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path.name


def save_image(root: Path, seed: int) -> str:
    name = f"img_{seed}.png"
    tiny.image(seed).save(root / name)
    return name


def standins(root: Path) -> tuple[list[str], list[str]]:
    """Write one small dataset per held-out task; return the `--tasks` and `--image_roots` arguments."""
    media = root / "media"
    media.mkdir()
    image = [tiny.image(seed) for seed in range(4)]
    videos = [write_video(media / f"clip_{seed}.mp4", seed) for seed in range(2)]
    rows = {
        # lmms-lab/NoCaps, lmms-lab/flickr30k
        "nocaps": {"image": image[:3], "image_id": [1, 2, 3],
                   "annotations_captions": [["a red thing", "a thing"], ["blue sky"], ["a dog on grass", "a dog"]]},
        "flickr30k": {"image": image[:2], "caption": [["two men talk", "men"], ["a cat sleeps"]],
                      "sentids": [["1", "2"], ["3"]], "img_id": ["0", "1"], "filename": ["0.jpg", "1.jpg"]},
        # lmms-lab/GQA questions joined with their images, as a jsonl file of image paths
        "gqa": {"image": [save_image(media, s) for s in range(3)], "question": ["is it red?", "what is it?", "where?"],
                "answer": ["yes", "ball", "left"], "imageId": ["n1", "n2", "n3"], "id": ["q1", "q2", "q3"]},
        # cambridgeltl/vsr_zeroshot (image file names)
        "vsr": {"image": [save_image(media, s) for s in range(3)],
                "caption": ["the cat is on the bed.", "the dog is left of the car.", "the cup is in the box."],
                "label": [1, 0, 1], "relation": ["on", "left of", "in"]},
        # lmms-lab/ICON-QA multiple choice (text choices, answer as text)
        "iconqa": {"image": image[:3], "question": ["how many?", "which shape?", "what time?"],
                   "choices": [["1", "2", "3"], ["circle", "square"], ["3:00", "4:00", "5:00", "6:00"]],
                   "answer": ["2", "square", "6:00"], "ques_type": ["choose_txt"] * 3},
        # lmms-lab/textvqa; the third example has no answers
        "textvqa": {"image": image[:3], "question": ["what does it say?", "what brand?", "which year?"],
                    "answers": [["stop"] * 10, ["nike"] * 7 + ["adidas"] * 3, []],
                    "ocr_tokens": [[f"w{i}" for i in range(40)], ["nike"], []], "question_id": [1, 2, 3]},
        # VisDial v1.0 val flattened to one row per round
        "visdial": {"image": image[:2], "caption": ["a man riding a horse", "a kitchen"],
                    "history": [[["is it sunny?", "yes"]], []], "question": ["is he young?", "any people?"],
                    "options": [["yes", "no", "maybe", "i can't tell"], ["no", "yes", "2"]], "answer": [0, 1]},
        # facebook Hateful Memes (img paths; the second image is missing on disk)
        "hatefulmemes": {"id": [42953, 23058, 13894], "img": ["img_0.png", "img/missing.png", "img_2.png"],
                         "text": ["its their character", "don't be afraid", "putting bows on your pet"],
                         "label": [1, 1, 0]},
        # lmms-lab/VizWiz-VQA
        "vizwiz": {"image": image[:2], "question": ["what is this?", "what colour?"],
                   "answers": [["unanswerable"] * 6 + ["bottle"] * 4, ["blue"] * 10],
                   "category": ["other", "other"], "answerable": [0, 1]},
        # derek-thomas/ScienceQA; the second question has no image (text-only question)
        "scienceqa": {"image": [image[0], None, image[2]], "question": ["Which is a mammal?", "What is 2+2?",
                                                                        "Which is colder?"],
                      "choices": [["whale", "shark"], ["3", "4"], ["ice", "fire", "sun"]], "answer": [0, 1, 0],
                      "hint": ["Whales breathe air.", "", ""], "lecture": ["Mammals...", "", "Heat..."],
                      "solution": ["", "", ""], "subject": ["natural science"] * 3, "grade": ["grade4"] * 3},
        # MSVD-QA / MSRVTT-QA / iVQA annotations with video file names
        "msvd_qa": {"video": [videos[0], videos[1], videos[0]], "question": ["what is a man doing?", "who sings?",
                                                                            "what is cut?"],
                    "answer": ["dance", "woman", "onion"]},
        "msrvtt_qa": {"video": videos, "question": ["what is shown?", "who talks?"], "answer": ["car", "man"]},
        "ivqa": {"video": [videos[1], "missing.mp4"], "question": ["what tool is used?", "what is cooked?"],
                 "answers": [["knife", "knife", "blade", "knife", "spoon"], ["egg"] * 5]},
    }
    file_formats = {"gqa": "jsonl", "vsr": "jsonl", "hatefulmemes": "jsonl", "msvd_qa": "jsonl",
                    "msrvtt_qa": "parquet", "ivqa": "jsonl"}
    tasks, image_roots = [], []
    for name, columns in rows.items():
        dataset = datasets.Dataset.from_dict(columns)
        if name in file_formats:
            path = root / f"{name}.{file_formats[name]}"
            dataset.to_json(path) if file_formats[name] == "jsonl" else dataset.to_parquet(path)
            image_roots.append(f"{name}={media}")
        else:
            path = root / name
            dataset.save_to_disk(path)
        tasks.append(f"{name}={path}")
    return tasks, image_roots


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero-shot")
    model_dir = root / "model"
    tiny.model("llama").save_pretrained(model_dir)
    tiny.processor("llama").save_pretrained(model_dir)
    tasks, image_roots = standins(root)
    return root, str(model_dir), tasks, image_roots


def run(setup, output_dir, tasks=None, *extra):
    root, model_dir, all_tasks, image_roots = setup
    return run_zero_shot_eval.main(["--model", model_dir, "--tasks", *(tasks or all_tasks), "--image_roots",
                                    *image_roots, "--output_dir", str(output_dir), "--paper_model", "vicuna7b",
                                    "--batch_size", "2", *extra])


def test_all_held_out_tasks_end_to_end(setup, tmp_path):
    summaries = {s["task"]: s for s in run(setup, tmp_path)}
    assert list(summaries) == list(HELD_OUT_TASKS)

    skipped = {name: s["skipped"] for name, s in summaries.items() if s["skipped"]}
    assert skipped == {"textvqa": {"empty references": 1}, "hatefulmemes": {"missing image": 1},
                       "scienceqa": {"missing image": 1}, "ivqa": {"missing video": 1}}
    for name, summary in summaries.items():
        records = [json.loads(line) for line in (tmp_path / f"{name}.predictions.jsonl").read_text().splitlines()]
        assert [r["index"] for r in records] == list(range(summary["examples"]))  # every example, in order
        assert summary["scored"] == summary["examples"] - sum(summary["skipped"].values())
        assert summary["paper"] == TASKS[name].paper["vicuna7b"]
        assert summary["difference"] == pytest.approx(summary["score"] - summary["paper"])
        assert 0 <= summary["score"] <= (1000 if name in ("nocaps", "flickr30k") else 100)

    table = (tmp_path / "results.md").read_text()
    assert table.splitlines()[0].startswith("| task | metric | this model | paper (vicuna7b) | difference |")
    assert "| textvqa | vqa_accuracy |" in table and "empty references: 1" in table
    assert json.loads((tmp_path / "metrics.json").read_text())["tasks"]["gqa"] == summaries["gqa"]

    records = {name: [json.loads(line) for line in (tmp_path / f"{name}.predictions.jsonl").read_text().splitlines()]
               for name in ("textvqa", "scienceqa", "msvd_qa", "vsr", "visdial")}
    assert records["textvqa"][0]["instruction"] == (
        f"OCR tokens: {', '.join(f'w{i}' for i in range(30))}. Question: what does it say? Short answer:")
    assert records["scienceqa"][0]["instruction"] == (
        "Context: Whales breathe air. Question: Which is a mammal? Options: (a) whale (b) shark. Answer:")
    assert records["scienceqa"][1] == {"index": 1, "skipped": "missing image"}
    assert {r["prediction"] for r in records["msvd_qa"]} <= {"dance", "onion", "woman"}  # the split's answers
    assert all(r["prediction"] in ("yes", "no") and 0 < r["positive_score"] < 1 for r in records["vsr"])
    assert records["visdial"][0]["instruction"] == (
        "Dialog history: a man riding a horse. Q: is it sunny? A: yes\nQuestion: is he young? Short answer:")
    assert all(1 <= r["gold_rank"] <= len(r["scores"]) for r in records["visdial"])


def test_flan_t5_model_end_to_end(setup, tmp_path):
    model_dir = tmp_path / "t5"
    tiny.model("t5").save_pretrained(model_dir)
    tiny.processor("t5").save_pretrained(model_dir)
    tasks = [t for t in setup[2] if t.split("=")[0] in ("vizwiz", "iconqa", "msrvtt_qa")]
    summaries = run((setup[0], str(model_dir), *setup[2:]), tmp_path / "out", tasks,
                    "--task_options", "iconqa.qformer_template=Question: {question}")
    assert [(s["task"], s["scored"], s["skipped"]) for s in summaries] == [
        ("iconqa", 3, {}), ("vizwiz", 2, {}), ("msrvtt_qa", 2, {})]
    vizwiz = [json.loads(line) for line in (tmp_path / "out" / "vizwiz.predictions.jsonl").read_text().splitlines()]
    assert all(record["prediction"] for record in vizwiz)  # the tiny Flan-T5 does answer (min length 1)
    iconqa = [json.loads(line) for line in (tmp_path / "out" / "iconqa.predictions.jsonl").read_text().splitlines()]
    assert iconqa[0]["qformer_instruction"] == "Question: how many?"
    assert iconqa[0]["instruction"] == "Question: how many? Options: (a) 1 (b) 2 (c) 3. Short answer:"


def test_batch_size_does_not_change_predictions(setup, tmp_path):
    tasks = [t for t in setup[2] if t.split("=")[0] in ("gqa", "iconqa", "ivqa")]
    run(setup, tmp_path / "b1", tasks, "--batch_size", "1")
    run(setup, tmp_path / "b3", tasks, "--batch_size", "3")
    for name in ("gqa", "iconqa", "ivqa"):
        one = [json.loads(line) for line in (tmp_path / "b1" / f"{name}.predictions.jsonl").read_text().splitlines()]
        three = [json.loads(line) for line in (tmp_path / "b3" / f"{name}.predictions.jsonl").read_text().splitlines()]
        assert [r.get("prediction") for r in one] == [r.get("prediction") for r in three]


def test_resume_after_interruption_gives_the_same_files(setup, tmp_path, monkeypatch):
    tasks = [t for t in setup[2] if t.split("=")[0] in ("gqa", "scienceqa", "msvd_qa", "textvqa")]
    run(setup, tmp_path / "straight", tasks)

    calls = {"n": 0}

    def interrupt_on_third_call(original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(runner, "generate_answers", interrupt_on_third_call(runner.generate_answers))
    monkeypatch.setattr(runner, "score_candidates", interrupt_on_third_call(runner.score_candidates))
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "resumed", tasks)
    monkeypatch.undo()
    resumed = tmp_path / "resumed"
    assert not (resumed / "metrics.json").exists()  # nothing that looks complete
    with open(resumed / "scienceqa.predictions.jsonl", "a") as file:
        file.write('{"index": 2, "instruc')  # a record cut off mid-write
    run(setup, resumed, tasks)

    straight = sorted(p.name for p in (tmp_path / "straight").iterdir())
    assert straight == sorted(p.name for p in resumed.iterdir())
    for name in straight:
        assert (resumed / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_bad_arguments_name_the_problem(setup, tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        run(setup, tmp_path, ["coco=whatever"])
    gqa = [t for t in setup[2] if t.startswith("gqa=")]
    with pytest.raises(ValueError, match=r"no column \['query'\].*--columns gqa.ROLE=COLUMN"):
        run(setup, tmp_path / "a", gqa, "--columns", "gqa.question=query")
    with pytest.raises(ValueError, match="unknown option 'beams'"):
        run(setup, tmp_path / "b", gqa, "--task_options", "gqa.beams=1")
    hatefulmemes = [t for t in setup[2] if t.startswith("hatefulmemes=")]
    (summary,) = run(setup, tmp_path / "auc", hatefulmemes, "--limit", "1")  # one class: the AUC is undefined
    assert summary["score"] is None and "needs positive and negative" in summary["metric_error"]
    assert "- hatefulmemes: no score, labels are all 1" in (tmp_path / "auc" / "results.md").read_text()
    run(setup, tmp_path / "c", gqa, "--limit", "1")
    with pytest.raises(ValueError, match="other settings, model or dataset"):
        run(setup, tmp_path / "c", gqa, "--task_options", "gqa.template=Q: {question} A:")
