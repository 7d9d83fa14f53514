"""`InstructBlipTrainer`: `transformers.Trainer` with the paper's mixture sampling, freezing and optimiser defaults.

```python
trainer = InstructBlipTrainer(
    model=model,
    args=InstructBlipTrainingArguments(output_dir="out", per_device_train_batch_size=16, max_steps=60_000, bf16=True),
    processing_class=processor,
    train_datasets={"coco_caption": coco, "vqav2": vqav2, "okvqa": okvqa},  # prepared with `prepare_dataset`
    mixture_multipliers={"okvqa": 2.0},
    eval_datasets={"okvqa": okvqa_val},
)
trainer.train()
```

Everything else (bf16, gradient checkpointing, DDP/FSDP/DeepSpeed through `accelerate`, logging, checkpoints,
`push_to_hub`) is `Trainer`'s.
"""

import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .collator import IGNORE_INDEX, InstructBlipDataCollator
from .mixture import ConcatenatedDatasets, MixtureSampler
from .vision_cache import VisionFeatureCache

logger = logging.getLogger(__name__)

MIXTURE_STATE_FILE = "mixture_sampler.json"
# The raw columns the collator reads; `Trainer` would otherwise drop them as unknown to `model.forward`.
RAW_COLUMNS = ["image", "image_id", "text_input", "text_output"]


@dataclass
class InstructBlipTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults and InstructBLIP's freezing and mixture options."""

    # Parent defaults changed to the paper's (§3, implementation details).
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (paper: 1e-5)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay, not applied to biases/1-D."})
    warmup_steps: float = field(default=1000, metadata={"help": "Linear warmup steps (paper: 1000)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Decay after warmup (paper: cosine to 0)."})

    # What is trained. The paper: queries + Q-Former + final vision LayerNorm + projection.
    train_vision_model: bool = field(default=False, metadata={"help": "Train the whole vision tower."})
    train_vision_post_layernorm: bool = field(
        default=True, metadata={"help": "Train the vision tower's final LayerNorm (LAVIS's `ln_vision`)."}
    )
    train_qformer: bool = field(default=True, metadata={"help": "Train the Q-Former and its query tokens."})
    train_language_projection: bool = field(default=True, metadata={"help": "Train the Q-Former → LLM projection."})
    train_language_model: bool = field(default=False, metadata={"help": "Train the whole LLM."})

    vision_cache_gb: float = field(
        default=0.0,
        metadata={"help": "Keep up to this many GB of the frozen vision tower's outputs, keyed by image identity, "
                  "least recently used first out (0: off). Needs a frozen vision tower and no random augmentation; "
                  "see VisionFeatureCache."},
    )

    # Data.
    mixture_alpha: float = field(default=0.5, metadata={"help": "p_d ∝ size_d^alpha (paper: 0.5)."})
    max_instruction_length: int = field(default=128, metadata={"help": "Instruction tokens kept (from the end)."})
    max_answer_length: int = field(default=256, metadata={"help": "Answer tokens kept, including </s>."})


def upcast_trainable(model: nn.Module) -> None:
    """Trainable parameters in float32, frozen ones as loaded (e.g. bfloat16), as LAVIS keeps its Q-Former.

    Under `--bf16`/`--fp16` mixed precision the optimiser then updates float32 weights, while the frozen towers
    (most of the memory) stay in half precision.
    """
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point():
            parameter.data = parameter.data.float()


def add_lora(model: nn.Module, lora_config) -> None:
    """LoRA adapters (a `peft.LoraConfig`) on the language model, trained alongside the Q-Former.

    Call after [`freeze_for_instruction_tuning`]: peft makes only the adapters of the (frozen) LLM trainable.
    Checkpoints hold the adapter layout and resume as usual; [`merge_lora`] folds the adapters into the LLM weights
    before the final `save_pretrained`, so the export loads as a plain InstructBLIP checkpoint.
    """
    import peft

    model.language_model = peft.get_peft_model(model.language_model, lora_config)


def merge_lora(model: nn.Module) -> None:
    """Fold LoRA adapters into the language model's weights (no-op without adapters)."""
    if hasattr(model.language_model, "merge_and_unload"):
        model.language_model = model.language_model.merge_and_unload()


def freeze_for_instruction_tuning(
    model: nn.Module,
    *,
    train_vision_model: bool = False,
    train_vision_post_layernorm: bool = True,
    train_qformer: bool = True,
    train_language_projection: bool = True,
    train_language_model: bool = False,
) -> list[nn.Module]:
    """Set `requires_grad` per component and put the frozen ones in eval mode; returns the frozen modules.

    A frozen module gets no gradient and, since `Trainer` builds its optimiser from parameters that require
    gradients, no optimiser state either.
    """
    parts = {
        "vision_model": (model.vision_model, train_vision_model),
        "qformer": (model.qformer, train_qformer),
        "language_projection": (model.language_projection, train_language_projection),
        "language_model": (model.language_model, train_language_model),
    }
    for module, trainable in parts.values():
        module.requires_grad_(trainable)
    model.query_tokens.requires_grad_(train_qformer)
    # Set after the tower, which contains it.
    model.vision_model.post_layernorm.requires_grad_(train_vision_model or train_vision_post_layernorm)
    frozen = [module for module, trainable in parts.values() if not trainable]
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("Every component is frozen: nothing would be trained.")
    for module in frozen:
        module.eval()
    return frozen


def predicted_answer_tokens(logits: torch.Tensor, labels: torch.Tensor, decoder_only: bool) -> torch.Tensor:
    """Greedy (teacher-forced) predictions aligned with `labels`, -100 where nothing is predicted.

    A decoder-only LLM's labels are not shifted, so position t is predicted by the logits at t - 1. Reducing the
    logits `(batch, length, vocab)` to token ids here keeps evaluation from gathering them whole.
    """
    predicted = logits.argmax(dim=-1)
    if not decoder_only:
        return predicted
    aligned = torch.full_like(labels, IGNORE_INDEX)
    aligned[:, 1:] = predicted[:, :-1]
    return aligned


def answer_metrics(eval_prediction) -> dict[str, float]:
    """Teacher-forced answer metrics over the loss positions (answer tokens and `</s>`).

    `answer_token_accuracy`: the share of those tokens predicted right. `answer_exact_match`: the share of examples
    with all of them right, i.e. whose answer greedy decoding would reproduce exactly.
    """
    predictions, labels = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
    scored = labels != IGNORE_INDEX
    right = (predictions == labels) & scored
    has_answer = scored.any(axis=1)
    return {
        "answer_token_accuracy": float(right.sum() / max(scored.sum(), 1)),
        "answer_exact_match": float((right.sum(axis=1) == scored.sum(axis=1))[has_answer].mean()),
    }


class InstructBlipTrainer(Trainer):
    """`Trainer` over a mixture of named datasets, training the paper's components by default.

    Args:
        model: an [`InstructBlipForConditionalGeneration`].
        args: [`InstructBlipTrainingArguments`] (a plain `TrainingArguments` gets the paper's freezing and mixture
            defaults, but keeps its own optimiser defaults).
        processing_class: the [`InstructBlipProcessor`]; builds the default [`InstructBlipDataCollator`].
        train_datasets: name → dataset of `{image, text_input, text_output}` rows (see `prepare_dataset`), drawn
            with probabilities ∝ size^alpha × multiplier by a [`MixtureSampler`] seeded from `args.data_seed` or
            `args.seed`.
        mixture_multipliers: name → factor on a dataset's weight (the paper raised OK-VQA, lowered A-OKVQA).
        eval_datasets: name → dataset; `evaluate()` reports for each `eval_<name>_loss` and, unless another
            `compute_metrics` is given, the teacher-forced `eval_<name>_answer_token_accuracy` and
            `eval_<name>_answer_exact_match` (see [`answer_metrics`]).
        peft_config: a `peft.LoraConfig` to train LoRA adapters on the (otherwise frozen) LLM; see [`add_lora`].
        kwargs: anything else `Trainer` takes (callbacks, `compute_metrics`, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments | None = None,
        *,
        processing_class=None,
        train_datasets: Mapping[str, torch.utils.data.Dataset] | None = None,
        mixture_multipliers: Mapping[str, float] | None = None,
        eval_datasets: Mapping[str, torch.utils.data.Dataset] | None = None,
        data_collator=None,
        peft_config=None,
        **kwargs,
    ):
        if "train_dataset" in kwargs or "eval_dataset" in kwargs:
            raise ValueError("Pass named datasets as train_datasets={name: ds} and eval_datasets={name: ds}.")
        args = args if args is not None else InstructBlipTrainingArguments(output_dir="instructblip-tuned")
        self.frozen_modules = freeze_for_instruction_tuning(model, **_freeze_flags(args))
        self.vision_cache = None
        if getattr(args, "vision_cache_gb", 0) > 0:
            if args.train_vision_model:
                raise ValueError("vision_cache_gb needs a frozen vision tower (train_vision_model=False).")
            self.vision_cache = VisionFeatureCache(int(args.vision_cache_gb * 1e9))
        if args.bf16 or args.fp16:
            upcast_trainable(model)
        if peft_config is not None:
            # The LLM now trains (its adapters), so it follows Trainer's train/eval switching (LoRA dropout).
            self.frozen_modules = [m for m in self.frozen_modules if m is not model.language_model]
            add_lora(model, peft_config)
        self.mixture_sizes = {name: len(dataset) for name, dataset in (train_datasets or {}).items()}
        self.mixture_multipliers = dict(mixture_multipliers or {})
        self.mixture_sampler = None
        if self.mixture_sizes:
            # Validates names and sizes now rather than at the first step.
            self._new_mixture_sampler(args)
        if data_collator is None:
            if processing_class is None:
                raise ValueError("Pass processing_class=<InstructBlipProcessor> (or a data_collator).")
            data_collator = InstructBlipDataCollator(
                processing_class,
                decoder_only=model.config.use_decoder_only_language_model,
                max_instruction_length=getattr(args, "max_instruction_length", 128),
                max_answer_length=getattr(args, "max_answer_length", 256),
                return_image_ids=self.vision_cache is not None,
            )
        if kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = answer_metrics
            kwargs["preprocess_logits_for_metrics"] = functools.partial(
                predicted_answer_tokens, decoder_only=model.config.use_decoder_only_language_model
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=ConcatenatedDatasets(list(train_datasets.values())) if train_datasets else None,
            eval_dataset=dict(eval_datasets) if eval_datasets else None,
            processing_class=processing_class,
            **kwargs,
        )

    def _new_mixture_sampler(self, args: TrainingArguments) -> MixtureSampler:
        self.mixture_sampler = MixtureSampler(
            self.mixture_sizes,
            alpha=getattr(args, "mixture_alpha", 0.5),
            multipliers=self.mixture_multipliers,
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )
        return self.mixture_sampler

    # --- data ------------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> MixtureSampler:
        """Indices into the concatenation of `train_datasets`, in the order they were given."""
        return self._new_mixture_sampler(self.args)

    def _set_signature_columns_if_needed(self):
        self._signature_columns = RAW_COLUMNS

    def _remove_unused_columns(self, dataset, description=None):
        # Prepared datasets compute their rows in a transform from source columns; removing those breaks them.
        return dataset

    # --- optimisation ----------------------------------------------------------------------------------------------

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Weight decay on matrices only, as LAVIS: not on biases or 1-D parameters (norms). `query_tokens`
        (1, Nq, C) is decayed."""
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2 and not name.endswith("bias")]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # `Trainer` switches the whole model to train mode every step; frozen towers stay feature extractors
        # (no dropout), as in the paper.
        for module in self.frozen_modules:
            module.eval()
        image_ids = inputs.pop("image_ids", None)
        if self.vision_cache is not None and model.training:
            if image_ids is None:
                raise ValueError(
                    "vision_cache_gb needs `image_ids` in every batch: use InstructBlipDataCollator (which adds them "
                    "under the cache) on datasets from prepare_dataset. A collator with random augmentation must "
                    "not use the cache."
                )
            vision_model = self.accelerator.unwrap_model(model).vision_model
            inputs["image_embeds"] = self.vision_cache.image_embeds(vision_model, inputs.pop("pixel_values"), image_ids)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    # --- checkpoints and model card ----------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.mixture_sampler is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            with open(os.path.join(folder, MIXTURE_STATE_FILE), "w") as f:
                json.dump(self.mixture_sampler.state_dict(), f, indent=2)

    def _load_rng_state(self, checkpoint):
        # Called on every resume: the replayed data stream is only the same if the mixture is.
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint, MIXTURE_STATE_FILE) if checkpoint else None
        if path and os.path.isfile(path) and self.mixture_sampler is not None:
            with open(path) as f:
                self.mixture_sampler.check_resumable_from(json.load(f))

    def create_model_card(self, *args, **kwargs):
        """`Trainer`'s card (hyper-parameters, evaluation results) plus the training mixture."""
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero() or self.mixture_sampler is None:
            return
        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, "a") as f:
            f.write("\n" + mixture_card_section(self.mixture_sampler, self.mixture_multipliers, self.model))


def _freeze_flags(args: TrainingArguments) -> dict:
    defaults = InstructBlipTrainingArguments.__dataclass_fields__
    names = ("train_vision_model", "train_vision_post_layernorm", "train_qformer", "train_language_projection",
             "train_language_model")
    return {name: getattr(args, name, defaults[name].default) for name in names}


def mixture_card_section(sampler: MixtureSampler, multipliers: Mapping[str, float], model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lines = [
        "## Instruction-tuning mixture",
        "",
        (
            f"Datasets drawn with p ∝ size^alpha × multiplier, alpha = {sampler.alpha:g} (InstructBLIP's "
            f"square-root rule is 0.5), seed {sampler.seed}. Trainable parameters: {trainable:,} of {total:,}."
        ),
        "",
        "| dataset | size | multiplier | sampling weight |",
        "|---|---|---|---|",
    ]
    for name, size in sampler.sizes.items():
        lines.append(f"| {name} | {size:,} | {multipliers.get(name, 1.0):g} | {sampler.weights[name]:.4f} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "InstructBlipTrainer",
    "InstructBlipTrainingArguments",
    "add_lora",
    "freeze_for_instruction_tuning",
    "merge_lora",
    "mixture_card_section",
]
