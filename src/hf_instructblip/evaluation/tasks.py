"""The paper's zero-shot protocol, one small dataclass per task: `TASKS[name]`.

Each entry says which dataset columns it reads (overridable), how a row becomes the instruction (the paper's
Appendix E template, or LAVIS's where they differ and LAVIS's reproduces Table 1), how the answer is predicted
(`"generate"` with LAVIS's decoding settings for that task, or `"rank"`: ranked choice over a closed candidate set),
the metric, and Table 1's numbers for the four released models and BLIP-2.

Where the paper is ambiguous the choice is a field, documented at the entry and in docs/EVALUATION.md, and every
field can be changed with `dataclasses.replace(TASKS["scienceqa"], context_columns=("hint", "lecture"))` or the
CLI's `--task_option scienceqa.context_columns=hint,lecture`.
"""

import math
from string import Formatter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


# --- Table 1 of the paper (zero-shot, held-out; ×100 as printed) -----------------------------------------------------

TABLE_1_TASKS = ("nocaps", "flickr30k", "gqa", "vsr", "iconqa", "textvqa", "visdial", "hatefulmemes", "vizwiz",
                 "scienceqa", "msvd_qa", "msrvtt_qa", "ivqa")
TABLE_1 = {
    "flant5xl": (119.9, 84.5, 48.4, 64.8, 50.0, 46.6, 46.6, 56.6, 32.7, 70.4, 43.4, 25.0, 53.1),
    "flant5xxl": (120.0, 83.5, 47.9, 65.6, 51.2, 46.6, 48.5, 54.1, 30.9, 70.6, 44.3, 25.6, 53.8),
    "vicuna7b": (123.1, 82.4, 49.2, 54.3, 43.1, 50.1, 45.2, 59.6, 34.5, 60.5, 41.8, 22.1, 52.2),
    "vicuna13b": (121.9, 82.8, 49.5, 52.1, 44.8, 50.7, 45.4, 57.5, 33.4, 63.1, 41.2, 24.8, 51.0),
    "blip2_flant5xl": (104.5, 76.1, 44.0, 60.5, 45.5, 43.1, 45.7, 53.0, 29.8, 54.9, 33.7, 16.2, 40.4),
    "blip2_flant5xxl": (98.4, 73.7, 44.6, 68.2, 45.4, 44.1, 46.9, 52.0, 29.4, 64.5, 34.4, 17.4, 45.8),
    "blip2_vicuna7b": (107.5, 74.9, 38.6, 50.0, 39.7, 40.1, 44.9, 50.6, 25.3, 53.8, 18.3, 9.2, 27.5),
    "blip2_vicuna13b": (103.9, 71.6, 41.0, 50.9, 40.6, 42.5, 45.1, 53.7, 19.6, 61.0, 20.3, 10.3, 23.5),
}
PAPER_MODELS = tuple(TABLE_1)


def table_1(task: str) -> dict[str, float]:
    column = TABLE_1_TASKS.index(task)
    return {model: row[column] for model, row in TABLE_1.items()}


def paper_model(config) -> str | None:
    """The Table 1 row of a released model, recognised by its LLM's type and width; None for anything else."""
    text = config.text_config
    width = getattr(text, "hidden_size", None) or getattr(text, "d_model", None)
    return {("llama", 4096): "vicuna7b", ("llama", 5120): "vicuna13b",
            ("t5", 2048): "flant5xl", ("t5", 4096): "flant5xxl"}.get((text.model_type, width))


# --- decoding settings, as LAVIS passes them --------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoding:
    """LAVIS's generation settings for a task, in LAVIS's terms.

    LAVIS ran on transformers 4.28-4.33, where `max_length`/`min_length` of a Vicuna `generate(inputs_embeds=...)`
    counted one placeholder token, and its T5 path passed `max_len` as `max_new_tokens` and `min_len` as
    `min_length` (which counts the decoder start token); `generate_kwargs` turns both into today's new-token counts.
    """

    num_beams: int = 5
    max_len: int = 10
    min_len: int = 1
    length_penalty_vicuna: float = 0.0
    length_penalty_t5: float = -1.0
    repetition_penalty: float = 1.5

    def generate_kwargs(self, decoder_only: bool) -> dict:
        return dict(
            do_sample=False,
            num_beams=self.num_beams,
            max_new_tokens=self.max_len - 1 if decoder_only else self.max_len,
            min_new_tokens=max(self.min_len - 1, 0),
            length_penalty=self.length_penalty_vicuna if decoder_only else self.length_penalty_t5,
            repetition_penalty=self.repetition_penalty,
        )


# `predict_answers` (short-answer VQA): 5 beams, max_len 10, min_len 1, length penalty 0 (Vicuna) / -1 (T5); it does
# not pass repetition_penalty, so `generate`'s default 1.5 applies.
SHORT_ANSWER = Decoding()
# The caption yamls (`caption_*_eval.yaml`) with CaptionTask: max_len 80, min_len 10, length penalty 1, repetition 1.15.
CAPTION = Decoding(max_len=80, min_len=10, length_penalty_vicuna=1.0, length_penalty_t5=1.0, repetition_penalty=1.15)


# --- the task entry -------------------------------------------------------------------------------------------------


LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class EvalTask:
    """One evaluation protocol.

    Args:
        name: the key in `TASKS`.
        template: the instruction, a `str.format` template over the fields `instruction_fields` builds:
            `{question}`, `{text}`, `{ocr_tokens}`, `{options}`, `{context}`, `{history}`.
        method: `"generate"` (the answer is generated with `decoding`) or `"rank"` (ranked choice, `candidates`).
        metric: the name of the function in `hf_instructblip.evaluation.metrics` that scores the predictions.
        columns: role → dataset column. Roles: `image` (or `video`), `question`, `text`, `references`, `answer`,
            `choices`, `ocr_tokens`, `caption`, `history`, `label`, plus the `context_columns`.
        paper: Table 1's score (×100) per model key (`vicuna7b`, `vicuna13b`, `flant5xl`, `flant5xxl`, `blip2_*`);
            empty for held-in tasks.
        decoding: generation settings (method `"generate"`).
        candidates: for `"rank"`: `"choices"` (the row's own options, gold = `answer`), `"verbalizers"` (the binary
            sets below, gold = `label`), or `"answer_vocabulary"` (every distinct answer of the evaluated split, gold
            = the row's answer).
        verbalizers: for binary tasks, the words of class 0 and of class 1; a class scores the log of the summed
            probability of its words (logsumexp of their log-likelihoods).
        reduction: ranked-choice aggregation, `"sum"` (LAVIS) or `"mean"`.
        video: the visual input is a video, sampled to `num_frames` frames.
        ocr_tokens: how many OCR tokens enter `{ocr_tokens}` (LAVIS: the first 30, joined by ", ").
        context_columns: ScienceQA's "Context": the columns joined into `{context}`.
        history: VisDial's dialog history: `"caption+rounds"`, `"rounds"`, `"caption"` or `"none"`.
        qformer_template: what the Q-Former reads, when it should differ from the LLM's instruction (same fields);
            "" means the same text, as LAVIS passes its prompt to both (e.g. `"Question: {question} Short answer:"`
            keeps TextVQA's OCR tokens from the Q-Former, as a commented-out LAVIS line suggests).
        held_in: a training task (VQAv2, OK-VQA, COCO), for checking a fine-tune rather than zero-shot transfer.
        split: the split the paper reports (`datasets` naming), read from Hub sources unless told otherwise.
        source: where the template and settings come from.
    """

    name: str
    template: str
    method: str
    metric: str
    columns: Mapping[str, str]
    paper: Mapping[str, float] = field(default_factory=dict)
    decoding: Decoding = SHORT_ANSWER
    candidates: str = ""
    verbalizers: tuple[tuple[str, ...], tuple[str, ...]] = (("no", "false"), ("yes", "true"))
    reduction: str = "sum"
    video: bool = False
    num_frames: int = 4
    ocr_tokens: int = 30
    context_columns: tuple[str, ...] = ()
    history: str = "caption+rounds"
    qformer_template: str = ""
    held_in: bool = False
    split: str = "test"
    source: str = ""

    def __post_init__(self):
        if self.method not in ("generate", "rank"):
            raise ValueError(f"Task {self.name!r}: method must be 'generate' or 'rank', got {self.method!r}.")
        if self.method == "rank" and self.candidates not in ("choices", "verbalizers", "answer_vocabulary"):
            raise ValueError(
                f"Task {self.name!r}: a ranked task needs candidates='choices', 'verbalizers' or 'answer_vocabulary'."
            )
        if self.history not in ("caption+rounds", "rounds", "caption", "none"):
            raise ValueError(f"Task {self.name!r}: history must be caption+rounds, rounds, caption or none.")

    @property
    def visual_column(self) -> str:
        return self.columns["video" if self.video else "image"]

    def with_columns(self, overrides: Mapping[str, str] | None) -> "EvalTask":
        return replace(self, columns={**self.columns, **(overrides or {})})

    def with_options(self, options: Mapping[str, str]) -> "EvalTask":
        """Change fields from strings, as the CLI gets them: `{"template": "...", "context_columns": "hint,lecture",
        "reduction": "mean", "decoding.num_beams": "1"}`; values take the type of the field they replace."""
        task = self
        for key, text in options.items():
            owner_name, _, name = key.rpartition(".")
            owner = task.decoding if owner_name == "decoding" else task
            if owner_name not in ("", "decoding") or name not in owner.__dataclass_fields__ or name in FIXED_FIELDS:
                editable = sorted(set(self.__dataclass_fields__) - FIXED_FIELDS)
                raise ValueError(f"Task {self.name}: unknown option {key!r}; options: {editable} and decoding.FIELD "
                                 "(columns are changed with --columns).")
            value = _parse_like(getattr(owner, name), text, f"{self.name}.{key}")
            if owner_name:
                task = replace(task, decoding=replace(owner, **{name: value}))
            else:
                task = replace(task, **{name: value})
        return task

    # --- row → instruction ---------------------------------------------------------------------------------------

    def instruction(self, row: Mapping, template: str | None = None) -> str:
        template = template or self.template
        return template.format(**self.instruction_fields(row, template))

    def qformer_instruction(self, row: Mapping) -> str:
        return self.instruction(row, self.qformer_template) if self.qformer_template else self.instruction(row)

    def instruction_fields(self, row: Mapping, template: str | None = None) -> dict[str, str]:
        """The values of the fields the template names, read from the row."""
        builders = {
            "question": lambda: str(row[self.columns["question"]]).strip(),
            "text": lambda: str(row[self.columns["text"]]).strip(),
            "ocr_tokens": lambda: ", ".join(list(row[self.columns["ocr_tokens"]] or [])[: self.ocr_tokens]),
            "options": lambda: " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(self.choices(row))),
            # Blank context reads "N/A", as ScienceQA's own prompts write it.
            "context": lambda: " ".join(str(row[c]).strip() for c in self.context_columns if row.get(c)) or "N/A",
            "history": lambda: self.dialog_history(row),
        }
        names = {name for _, name, _, _ in Formatter().parse(template or self.template) if name is not None}
        if names - set(builders):
            raise ValueError(f"Task {self.name}: the template names {sorted(names - set(builders))}; it may use "
                             f"{sorted(builders)}.")
        return {name: builders[name]() for name in names}

    def dialog_history(self, row: Mapping) -> str:
        parts = []
        if self.history in ("caption+rounds", "caption"):
            parts.append(str(row[self.columns["caption"]]).strip().rstrip(".") + ".")
        if self.history in ("caption+rounds", "rounds"):
            for turn in row[self.columns["history"]] or []:
                question, answer = (turn["question"], turn["answer"]) if isinstance(turn, Mapping) else turn
                parts.append(f"Q: {question} A: {answer}")
        return " ".join(parts)

    # --- row → gold ------------------------------------------------------------------------------------------------

    def references(self, row: Mapping) -> list[str]:
        """Reference answers or captions: a string, a list of strings, or VQAv2-style `[{"answer": ...}]`."""
        value = row[self.columns["references"]]
        values = [value] if isinstance(value, str) else list(value or [])
        return [str(v["answer"] if isinstance(v, Mapping) else v).strip() for v in values]

    def choices(self, row: Mapping) -> list[str]:
        value = row[self.columns["choices"]]
        return [str(c).strip() for c in (value.split(",") if isinstance(value, str) else value)]

    def answer_index(self, row: Mapping, candidates: Sequence[str]) -> int | None:
        """The gold candidate: an index, or the text of one of `candidates`; None if the text is not among them."""
        if self.candidates == "verbalizers":
            return int(row[self.columns["label"]])
        if self.candidates == "answer_vocabulary":
            references = self.references(row)
            return candidates.index(references[0]) if references and references[0] in candidates else None
        answer = row[self.columns["answer"]]
        if isinstance(answer, str) and not answer.strip().isdigit():
            answer = answer.strip()
            if answer not in candidates:
                raise ValueError(f"Task {self.name}: the answer {answer!r} is none of the choices {list(candidates)}.")
            return list(candidates).index(answer)
        return int(answer)

    def row_candidates(self, row: Mapping, vocabulary: Sequence[str] = ()) -> list[str]:
        if self.candidates == "choices":
            return self.choices(row)
        if self.candidates == "verbalizers":
            return [word for words in self.verbalizers for word in words]
        return list(vocabulary)

    def class_scores(self, scores: Sequence[float]) -> list[float]:
        """Binary tasks: per class, the log of the summed probability of its verbalizers (`row_candidates` order)."""
        remaining = iter(scores)
        return [_logsumexp([next(remaining) for _ in words]) for words in self.verbalizers]


FIXED_FIELDS = frozenset({"name", "columns", "paper", "decoding"})


def _parse_like(current, text: str, name: str):
    """`text` converted to the type of `current` (tuples from comma-separated lists)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        if isinstance(current, tuple) and current and isinstance(current[0], tuple):  # "no,false;yes,true"
            return tuple(_parse_like(current[0], part, name) for part in text.split(";"))
        if isinstance(current, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return type(current)(text) if isinstance(current, (int, float)) else text
    except ValueError as error:
        raise ValueError(f"Option {name}={text!r}: {error}.") from error


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))


# --- the registry ---------------------------------------------------------------------------------------------------

SHORT_ANSWER_TEMPLATE = "Question: {question} Short answer:"  # Appendix E
LAVIS_SHORT_ANSWER_TEMPLATE = "Question: {question} Short Answer:"  # LAVIS's qa_okvqa / qa_msvd eval yamls
CAPTION_TEMPLATE = "A short image caption."


def generated(name: str, template: str, metric: str, columns: dict, **kwargs) -> EvalTask:
    return EvalTask(name=name, template=template, method="generate", metric=metric, columns=columns,
                    paper=table_1(name) if name in TABLE_1_TASKS else {}, **kwargs)


def ranked(name: str, template: str, metric: str, candidates: str, columns: dict, **kwargs) -> EvalTask:
    return EvalTask(name=name, template=template, method="rank", metric=metric, candidates=candidates,
                    columns=columns, paper=table_1(name), **kwargs)


IMAGE_QA = {"image": "image", "question": "question", "references": "answers"}
VIDEO_QA = {"video": "video", "question": "question", "references": "answer"}
MULTIPLE_CHOICE = {"image": "image", "question": "question", "choices": "choices", "answer": "answer"}

TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        # Captioning. The paper's Appendix E prompt is "A short image description:"; LAVIS's eval yamls use
        # "A short image caption.", which reproduces Table 1 (Flickr30K 83.1 vs 60.9 with the other, LAVIS#719).
        generated("nocaps", CAPTION_TEMPLATE, "cider_d", {"image": "image", "references": "annotations_captions"},
                  decoding=CAPTION, split="validation",
                  source="LAVIS caption_nocaps_*_eval.yaml prompt and decoding; CIDEr-D"),
        generated("flickr30k", CAPTION_TEMPLATE, "cider_d", {"image": "image", "references": "caption"},
                  decoding=CAPTION, source="LAVIS caption yamls' prompt and decoding; CIDEr-D on the 1K test images"),
        # Visual reasoning.
        generated("gqa", SHORT_ANSWER_TEMPLATE, "exact_match", {**IMAGE_QA, "references": "answer"}, split="testdev",
                  source="Appendix E template; LAVIS predict_answers decoding; exact match after VQA normalisation "
                         "(LAVIS GQATask)"),
        ranked("vsr", 'Based on the image, is this statement true or false? "{text}" Answer:',
               "multiple_choice_accuracy", "verbalizers", {"image": "image", "text": "caption", "label": "label"},
               source="Appendix E template; ranked with the paper's verbalizers yes/true vs no/false"),
        ranked("iconqa", "Question: {question} Options: {options}. Short answer:", "multiple_choice_accuracy",
               "choices", MULTIPLE_CHOICE,
               source="Appendix E template, options '(a) x (b) y' as LAVIS formats choices; ranked over the choices"),
        # Reading comprehension: LAVIS's first 30 OCR tokens, joined by ", ".
        generated("textvqa", "OCR tokens: {ocr_tokens}. Question: {question} Short answer:", "vqa_accuracy",
                  {**IMAGE_QA, "ocr_tokens": "ocr_tokens"}, split="validation",
                  source="Appendix E template; LAVIS: first 30 OCR tokens, predict_answers decoding; VQA accuracy"),
        # Dialog: ranked over the round's candidate answers (100 in VisDial), MRR of the right one.
        ranked("visdial", "Dialog history: {history}\nQuestion: {question} Short answer:", "mean_reciprocal_rank",
               "choices", {"image": "image", "caption": "caption", "history": "history", "question": "question",
                           "choices": "options", "answer": "answer"}, split="validation",
               source="Appendix E template shape, LAVIS _predict_class's dialog-history prefix; history format ours"),
        ranked("hatefulmemes", 'This is an image with: "{text}" written on it. Is it hateful? Answer:', "roc_auc",
               "verbalizers", {"image": "img", "text": "text", "label": "label"}, split="validation",
               source="Appendix E template; verbalizers yes/true (hateful) vs no/false; AUC of P(hateful)"),
        generated("vizwiz", SHORT_ANSWER_TEMPLATE, "vqa_accuracy", IMAGE_QA, split="validation",
                  source="Appendix E template; LAVIS predict_answers decoding; VQA accuracy ('unanswerable' is an "
                         "answer); validation because test-dev answers are hidden"),
        # ScienceQA (image subset): the authors' template (LAVIS#326), ranked over the options. "Context" is the
        # question's hint, as in ScienceQA's own prompt format (its lecture can be added: context_columns).
        ranked("scienceqa", "Context: {context} Question: {question} Options: {options}. Answer:",
               "multiple_choice_accuracy", "choices", MULTIPLE_CHOICE, context_columns=("hint",),
               source="template and ranking from the authors (LAVIS#326); Context = hint (ScienceQA's convention)"),
        # Video QA: 4 uniform frames; MSVD/MSRVTT ranked over the answer vocabulary, iVQA generated.
        ranked("msvd_qa", SHORT_ANSWER_TEMPLATE, "exact_match", "answer_vocabulary", VIDEO_QA, video=True,
               source="Appendix E template (LAVIS#333); ranked over the split's answers (paper §3); 4 frames"),
        ranked("msrvtt_qa", SHORT_ANSWER_TEMPLATE, "exact_match", "answer_vocabulary", VIDEO_QA, video=True,
               source="Appendix E template (LAVIS#333); ranked over the split's answers (paper §3); 4 frames"),
        generated("ivqa", SHORT_ANSWER_TEMPLATE, "ivqa_accuracy", {**VIDEO_QA, "references": "answers"}, video=True,
                  source="Appendix E template; predict_answers decoding; iVQA accuracy over its 5 answers; 4 frames"),
        # Held-in, for checking a fine-tune.
        generated("vqav2", LAVIS_SHORT_ANSWER_TEMPLATE, "vqa_accuracy", IMAGE_QA, held_in=True, split="validation",
                  source="LAVIS qa_okvqa_eval.yaml prompt and decoding; VQA accuracy"),
        generated("okvqa", LAVIS_SHORT_ANSWER_TEMPLATE, "vqa_accuracy", IMAGE_QA, held_in=True, split="validation",
                  source="LAVIS qa_okvqa_eval.yaml prompt and decoding; VQA accuracy"),
        generated("coco_caption", CAPTION_TEMPLATE, "cider_d", {"image": "image", "references": "captions"},
                  decoding=CAPTION, held_in=True,
                  source="LAVIS caption_coco_*_eval.yaml prompt and decoding; CIDEr-D (Karpathy test)"),
    )
}
HELD_OUT_TASKS = TABLE_1_TASKS
