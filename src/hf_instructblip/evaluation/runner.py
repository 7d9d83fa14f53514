"""Run one task of the protocol over a dataset: batched, resumable, every example accounted for.

`evaluate_task` writes `<task>.predictions.jsonl` (one record per example, in dataset order, flushed batch by
batch) and returns the task's summary; an interrupted run continues after the last complete record and ends with
the same files as an uninterrupted one. Examples that cannot be scored (missing or unreadable image or video, no
reference, no choices) get a record saying why, are counted in the summary, and are left out of the metric.
"""

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..processing_instructblip import to_rgb
from . import metrics
from .generation import generate_answers
from .ranking import score_candidates
from .tasks import EvalTask
from .video import sample_frames


class Unscorable(Exception):
    """An example the task cannot score; its message is the reason counted in the summary."""


def evaluate_task(
    model,
    processor,
    task: EvalTask,
    dataset,
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    image_root: str | None = None,
    paper_model: str | None = None,
    progress: bool = True,
) -> dict:
    """Predict and score `task` on `dataset` (a `datasets.Dataset` or any sequence of row dicts).

    Returns the summary: `{"task", "metric", "score", "paper_model", "paper", "difference", "examples", "scored",
    "skipped": {reason: count}}`; scores are ×100 as in the paper's table. Where the metric is undefined (nothing
    scored, a single class for the AUC) the score is None and `"metric_error"` says why.
    """
    check_columns(task, dataset)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{task.name}.predictions.jsonl"
    check_settings(output_dir / f"{task.name}.settings.json", task, model, dataset)
    records = read_records(path)
    vocabulary = answer_vocabulary(task, dataset) if task.candidates == "answer_vocabulary" else []

    with open(path, "a", encoding="utf-8") as sink, tqdm(
        total=total, initial=min(len(records), total), desc=task.name, disable=not progress, unit="example"
    ) as bar:
        for start in range(len(records), total, batch_size):
            batch = predict_batch(model, processor, task, dataset, range(start, min(start + batch_size, total)),
                                  batch_size=batch_size, image_root=image_root, vocabulary=vocabulary)
            sink.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in batch)
            sink.flush()
            os.fsync(sink.fileno())
            records += batch
            bar.update(len(batch))
    return summarize(task, records[:total], paper_model)


# --- checks and resume ------------------------------------------------------------------------------------------------


def required_columns(task: EvalTask) -> list[str]:
    unused = {"history": task.history in ("caption", "none"), "caption": task.history in ("rounds", "none")}
    return [column for role, column in task.columns.items() if not unused.get(role)] + list(task.context_columns)


def check_columns(task: EvalTask, dataset) -> None:
    names = getattr(dataset, "column_names", None) or (list(dataset[0]) if len(dataset) else [])
    missing = [column for column in required_columns(task) if column not in names]
    if missing:
        raise ValueError(
            f"Task {task.name}: the dataset has no column {missing} (it has {sorted(names)}). Rename them, or map "
            f"the task's roles {dict(task.columns)} to yours with --columns {task.name}.ROLE=COLUMN."
        )


def check_settings(path: Path, task: EvalTask, model, dataset) -> None:
    """Predictions already in `path`'s folder may only be continued by the same task settings, model and dataset
    size."""
    settings = {"task": json.loads(json.dumps(asdict(task), default=str)),
                "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
                "dataset_examples": len(dataset)}
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != settings:
            raise ValueError(
                f"{path.parent} holds predictions of {task.name} made with other settings, model or dataset "
                f"({path.name} differs); use another --output_dir, or delete {task.name}.* there to start over."
            )
        return
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_records(path: Path) -> list[dict]:
    """The complete records of an earlier run; a last line cut off by an interruption is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as file:
            file.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines()]


def answer_vocabulary(task: EvalTask, dataset) -> list[str]:
    """Every distinct first reference answer of the whole split, sorted: the closed set MSVD/MSRVTT rank over."""
    column = task.columns["references"]
    answers = dataset[column] if hasattr(dataset, "column_names") else [row[column] for row in dataset]
    rows = ({task.columns["references"]: answer} for answer in answers)
    return sorted({references[0] for references in map(task.references, rows) if references})


# --- prediction -------------------------------------------------------------------------------------------------------


def predict_batch(model, processor, task, dataset, indices, *, batch_size, image_root, vocabulary) -> list[dict]:
    records, ready = {}, []
    for index in indices:
        row = dataset[index]
        try:
            ready.append((index, row, load_visual(task, row, image_root), gold(task, row, vocabulary)))
        except Unscorable as reason:
            records[index] = {"index": index, "skipped": str(reason)}
    if ready:
        visuals = [visual for _, _, visual, _ in ready]
        instructions = [task.instruction(row) for _, row, _, _ in ready]
        prompts = {"instruction": instructions}
        qformer_instructions = None
        if task.qformer_template:
            qformer_instructions = [task.qformer_instruction(row) for _, row, _, _ in ready]
            prompts["qformer_instruction"] = qformer_instructions
        if task.method == "generate":
            decoder_only = model.config.use_decoder_only_language_model
            predictions = [{"prediction": answer} for answer in generate_answers(
                model, processor, visuals, instructions, batch_size=batch_size,
                qformer_instructions=qformer_instructions, **task.decoding.generate_kwargs(decoder_only))]
        else:
            candidates = [task.row_candidates(row, vocabulary) for _, row, _, _ in ready]
            scores = score_candidates(model, processor, visuals, instructions, candidates, batch_size=batch_size,
                                      reduction=task.reduction, qformer_instructions=qformer_instructions)
            predictions = [ranked_prediction(task, cands, row_scores, target)
                           for (_, _, _, target), cands, row_scores in zip(ready, candidates, scores)]
        for k, ((index, _, _, target), prediction) in enumerate(zip(ready, predictions)):
            records[index] = {"index": index, **{key: texts[k] for key, texts in prompts.items()}, **prediction,
                              **target}
    return [records[index] for index in indices]


def load_visual(task: EvalTask, row: Mapping, image_root: str | None):
    value = row.get(task.visual_column)
    if isinstance(value, Mapping):  # a `datasets` Image/Video record that was not decoded
        value = value.get("bytes") or value.get("path")
    if value is None or (isinstance(value, (str, bytes)) and not value):
        raise Unscorable(f"missing {'video' if task.video else 'image'}")
    if isinstance(value, str) and image_root and not os.path.isabs(value):
        value = os.path.join(image_root, value)
    if isinstance(value, str) and not os.path.exists(value) and "://" not in value:
        raise Unscorable(f"missing {'video' if task.video else 'image'}")
    if task.video and not isinstance(value, (str, bytes, bytearray, os.PathLike)):
        raise ValueError(
            f"Task {task.name}: column {task.visual_column!r} holds {type(value).__name__}; give video paths or bytes "
            "(for a datasets Video column: dataset.cast_column(column, datasets.Video(decode=False)))."
        )
    try:
        return sample_frames(value, task.num_frames) if task.video else to_rgb(value)
    except ValueError:
        raise Unscorable(f"unreadable {'video' if task.video else 'image'}") from None


def gold(task: EvalTask, row: Mapping, vocabulary: Sequence[str]) -> dict:
    """What the prediction is scored against, or `Unscorable` when there is nothing to score against."""
    if task.method == "generate" or task.candidates == "answer_vocabulary":
        references = task.references(row)
        if not references:
            raise Unscorable("empty references")
        return {"references": references}
    candidates = task.row_candidates(row, vocabulary)
    if not candidates:
        raise Unscorable("no choices")
    answer = task.answer_index(row, candidates)
    if task.candidates == "choices" and not 0 <= answer < len(candidates):
        raise ValueError(f"Task {task.name}: answer index {answer} is out of range for {len(candidates)} choices.")
    return {"answer_index": answer}


def ranked_prediction(task: EvalTask, candidates: Sequence[str], scores: Sequence[float], target: dict) -> dict:
    if task.candidates == "verbalizers":
        classes = task.class_scores(scores)
        positive = 1.0 / (1.0 + math.exp(min(classes[0] - classes[1], 700.0)))  # softmax over the two classes
        choice = int(classes[1] > classes[0])
        return {"prediction": task.verbalizers[choice][0], "prediction_index": choice, "positive_score": positive,
                "class_scores": classes}
    best = max(range(len(scores)), key=scores.__getitem__)
    record = {"prediction": candidates[best], "prediction_index": best}
    if task.candidates == "choices":
        gold_score = scores[target["answer_index"]]
        record["gold_rank"] = 1 + sum(score > gold_score for score in scores)
        record["scores"] = list(scores)
    return record


# --- scoring ----------------------------------------------------------------------------------------------------------


def metric_arguments(metric: str, records: list[dict]) -> tuple:
    """The metric's inputs, read from the scored records."""
    if metric == "multiple_choice_accuracy":
        return [r["prediction_index"] for r in records], [r["answer_index"] for r in records]
    if metric == "mean_reciprocal_rank":
        return ([r["gold_rank"] for r in records],)
    if metric == "roc_auc":
        return [r["positive_score"] for r in records], [r["answer_index"] for r in records]
    return [r["prediction"] for r in records], [r["references"] for r in records]


def summarize(task: EvalTask, records: list[dict], paper_model: str | None) -> dict:
    scored = [record for record in records if "skipped" not in record]
    score, error = None, None
    try:
        score = 100 * float(getattr(metrics, task.metric)(*metric_arguments(task.metric, scored)))
    except ValueError as undefined:  # e.g. no scored example, or one class only for the AUC: report, keep the rest
        error = str(undefined)
    paper = task.paper.get(paper_model) if paper_model else None
    summary = {
        "task": task.name,
        "metric": task.metric,
        "score": score,
        "paper_model": paper_model,
        "paper": paper,
        "difference": None if score is None or paper is None else score - paper,
        "examples": len(records),
        "scored": len(scored),
        "skipped": dict(sorted(Counter(record["skipped"] for record in records if "skipped" in record).items())),
    }
    return {**summary, "metric_error": error} if error else summary


def markdown_table(summaries: list[dict]) -> str:
    paper_models = {summary["paper_model"] for summary in summaries}
    paper_model = paper_models.pop() if len(paper_models) == 1 else None
    lines = [
        f"| task | metric | this model | paper ({paper_model or 'no Table 1 row'}) | difference | scored / examples "
        "| skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        skipped = ", ".join(f"{reason}: {count}" for reason, count in s["skipped"].items()) or "0"
        lines.append(
            f"| {s['task']} | {s['metric']} | {_number(s['score'])} | {_number(s['paper'])} | "
            f"{_number(s['difference'], signed=True)} | {s['scored']} / {s['examples']} | {skipped} |"
        )
    undefined = [f"- {s['task']}: no score, {s['metric_error']}" for s in summaries if s.get("metric_error")]
    return "\n".join(lines + ([""] + undefined if undefined else [])) + "\n"


def _number(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else f"{value:+.1f}" if signed else f"{value:.1f}"
