"""Zero-shot evaluation with the paper's protocol: our scores beside Table 1's.

    python examples/run_zero_shot_eval.py --model Salesforce/instructblip-vicuna-7b \
        --tasks gqa=/data/gqa_testdev textvqa=lmms-lab/textvqa scienceqa=/data/scienceqa_img.parquet \
        --output_dir eval-vicuna7b [--limit 500] [--batch_size 16]

`--tasks` takes `task=source`: a Hub dataset id (its `--splits` split, by default the one the paper reports), a
`save_to_disk` folder, or a json/jsonl/parquet/csv file, as in `run_instruct_tuning.py`. Each task's protocol
(template, ranked choice or generation with LAVIS's settings, metric, expected columns) is `TASKS[task]` in
`hf_instructblip.evaluation.tasks`; `--columns task.ROLE=COLUMN` maps its roles to other column names and
`--task_options task.FIELD=VALUE` changes a protocol choice (e.g. `scienceqa.context_columns=hint,lecture`).

Writes into `--output_dir`: `<task>.predictions.jsonl` (one record per example, flushed batch by batch: run the
same command again to continue an interrupted run), `metrics.json` and `results.md` (the table, also printed).
"""

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from hf_instructblip import InstructBlipForConditionalGeneration, InstructBlipProcessor
from hf_instructblip.evaluation.runner import evaluate_task, markdown_table
from hf_instructblip.evaluation.tasks import PAPER_MODELS, TASKS, paper_model
from hf_instructblip.training import load_source


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "Checkpoint directory or Hub id (hf_instructblip or transformers format)."})
    tasks: list[str] = field(metadata={"help": f"`task=source` pairs; tasks: {', '.join(TASKS)}."})
    output_dir: str = field(metadata={"help": "Predictions, metrics.json and results.md go here."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N examples of each task."})
    batch_size: int = field(default=8, metadata={"help": "Examples per batch (and candidate rows per ranking pass)."})
    splits: list[str] = field(default_factory=list, metadata={"help": "`task=split` for Hub sources."})
    columns: list[str] = field(default_factory=list, metadata={"help": "`task.ROLE=COLUMN` column overrides."})
    task_options: list[str] = field(default_factory=list, metadata={"help": "`task.FIELD=VALUE` protocol changes."})
    image_roots: list[str] = field(
        default_factory=list, metadata={"help": "`task=dir` for datasets whose images or videos are relative paths."}
    )
    paper_model: str | None = field(
        default=None, metadata={"help": f"Table 1 row to compare with ({', '.join(PAPER_MODELS)}); default: guessed "
                                        "from the LLM (Vicuna-7B/13B, Flan-T5-XL/XXL)."}
    )
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16 (never for Flan-T5)."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})


def pairs(entries: list[str], option: str) -> dict[str, str]:
    """["a=b", ...] → {"a": "b"}; a malformed entry is an error naming the option."""
    result = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} entry {entry!r} must look like KEY=VALUE.")
        result[key] = value
    return result


def per_task(entries: dict[str, str], option: str) -> dict[str, dict[str, str]]:
    """{"task.key": value} → {task: {key: value}}."""
    grouped = defaultdict(dict)
    for dotted, value in entries.items():
        task, sep, key = dotted.partition(".")
        if not sep or task not in TASKS:
            raise ValueError(f"{option} entry {dotted}={value} must start with a task name: one of {sorted(TASKS)}.")
        grouped[task][key] = value
    return grouped


def configured_tasks(args: EvalArguments) -> dict:
    """task name → (protocol with its overrides, source)."""
    sources = pairs(args.tasks, "--tasks")
    unknown = sorted(set(sources) - set(TASKS))
    if unknown or not sources:
        raise ValueError(f"--tasks: unknown task(s) {unknown}; choose among {sorted(TASKS)}.")
    columns = per_task(pairs(args.columns, "--columns"), "--columns")
    options = per_task(pairs(args.task_options, "--task_options"), "--task_options")
    splits = pairs(args.splits, "--splits")
    configured = {}
    for name, source in sources.items():
        task = TASKS[name].with_columns(columns.get(name)).with_options(options.get(name, {}))
        configured[name] = (task.with_options({"split": splits[name]}) if name in splits else task, source)
    return configured


def write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = HfArgumentParser(EvalArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    (args,) = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    tasks = configured_tasks(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = InstructBlipForConditionalGeneration.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(device).eval()
    processor = InstructBlipProcessor.from_pretrained(args.model)
    row = args.paper_model or paper_model(model.config)
    if row is not None and row not in PAPER_MODELS:
        raise ValueError(f"--paper_model {row!r} is not a Table 1 row; choose one of {PAPER_MODELS}.")
    image_roots = pairs(args.image_roots, "--image_roots")

    summaries = []
    for name, (task, source) in tasks.items():
        dataset = load_source(source, task.split)
        summaries.append(evaluate_task(model, processor, task, dataset, args.output_dir, batch_size=args.batch_size,
                                       limit=args.limit, image_root=image_roots.get(name), paper_model=row))
    table = markdown_table(summaries)
    write_atomically(os.path.join(args.output_dir, "metrics.json"),
                     json.dumps({"paper_model": row, "tasks": {s["task"]: s for s in summaries}}, indent=2) + "\n")
    write_atomically(os.path.join(args.output_dir, "results.md"), table)
    print("\n" + table)
    return summaries


if __name__ == "__main__":
    main()
