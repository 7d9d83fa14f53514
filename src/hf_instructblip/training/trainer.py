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

Everything else (bf16, gradient checkpointing, DDP through `accelerate`, logging, checkpoints,
`push_to_hub`) is `Trainer`'s.
"""

import functools
import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors import SafetensorError
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.training_args import ParallelMode

from ..evaluation.metrics import answer_metrics
from ..model_card import model_card
from .collator import IGNORE_INDEX, InstructBlipDataCollator
from .mixture import ConcatenatedDatasets, MixtureSampler
from .recipes import as_training_dataset
from .vision_cache import VisionFeatureCache

logger = logging.getLogger(__name__)

# Checkpoints are written under this folder of `output_dir`, then renamed into place (see `_save_checkpoint`).
CHECKPOINT_STAGING_DIR = ".checkpoint-in-progress"
FREEZE_FLAGS = ("train_vision_model", "train_vision_post_layernorm", "train_qformer", "train_language_projection",
                "train_language_model")


@dataclass
class InstructBlipTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults and InstructBLIP's freezing, data and mixture options.

    Every training default of this package lives here; [`InstructBlipTrainer`] and the collator it builds read
    them from these fields only. A plain `TrainingArguments` is converted explicitly with
    [`~InstructBlipTrainingArguments.from_training_arguments`].
    """

    # Parent defaults changed to the paper's (§3, implementation details), and to what prepared datasets need.
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (paper: 1e-5)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay, not applied to biases/1-D."})
    warmup_steps: float = field(default=1000, metadata={"help": "Linear warmup steps (paper: 1000)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Decay after warmup (paper: cosine to 0)."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay False: prepared datasets compute their rows from source columns, which the "
                  "model's forward does not name."},
    )

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

    # Data. The Q-Former's instruction length is the processor's `qformer_max_length`, in training and inference.
    mixture_alpha: float = field(default=0.5, metadata={"help": "p_d ∝ size_d^alpha (paper: 0.5)."})
    max_instruction_length: int = field(
        default=128, metadata={"help": "LLM instruction tokens kept in training, from the end (LAVIS max_txt_len)."}
    )
    max_answer_length: int = field(
        default=256, metadata={"help": "Answer tokens kept, including </s> (LAVIS max_output_txt_len)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True would drop the source columns prepared datasets compute their rows "
                "from; InstructBlipTrainer needs remove_unused_columns=False."
            )
        if not math.isfinite(self.mixture_alpha) or self.mixture_alpha < 0:
            raise ValueError(f"mixture_alpha must be a finite number >= 0, got {self.mixture_alpha!r}.")
        for name in ("max_instruction_length", "max_answer_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}.")
        if not any(getattr(self, name) for name in FREEZE_FLAGS):
            raise ValueError(f"Every component is frozen ({', '.join(f'{n}=False' for n in FREEZE_FLAGS)}): "
                             "nothing would be trained.")
        if self.vision_cache_gb < 0:
            raise ValueError(f"vision_cache_gb must be >= 0 (0 turns the cache off), got {self.vision_cache_gb}.")
        if self.vision_cache_gb and self.train_vision_model:
            raise ValueError("vision_cache_gb needs a frozen vision tower (train_vision_model=False).")
        if self.fsdp and self.use_cpu:
            raise ValueError(
                "fsdp is not applied on CPU: accelerate runs CPU processes as DDP (MULTI_CPU) and would ignore it. "
                "Drop --fsdp, or run on GPUs."
            )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.parallel_mode != ParallelMode.DISTRIBUTED:
            # Without CUDA, `TrainingArguments` sets up distributed training only for `use_cpu`: each of the launched
            # processes would otherwise train a model of its own and write the same output folder.
            raise ValueError(
                f"Launched as {launched} processes, but Trainer would not train them together (DDP): without a GPU "
                "pass --use_cpu (or launch with `accelerate launch --multi_gpu --num_processes N --use_cpu`)."
            )

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments, **overrides) -> "InstructBlipTrainingArguments":
        """`args`' own values for every `TrainingArguments` field (its optimiser settings included, not the
        paper's), this class's defaults for the InstructBLIP fields, then `overrides`.

        `remove_unused_columns` is set to False (prepared datasets need their source columns).
        """
        values = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init}
        return cls(**{**values, "remove_unused_columns": False, **overrides})

    @property
    def freeze_flags(self) -> dict[str, bool]:
        """The keyword arguments of [`freeze_for_instruction_tuning`]."""
        return {name: getattr(self, name) for name in FREEZE_FLAGS}


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


class MixtureCheckpointCallback(TrainerCallback, ExportableState):
    """Saves the mixture that fixes the data stream in each checkpoint's `trainer_state.json` (as a stateful
    callback) and, on resume, refuses a checkpoint whose mixture differs from the current one.

    A changed mixture would replay another stream while `Trainer` skips the batches it believes were consumed.
    """

    def __init__(self, sampler: MixtureSampler):
        self.sampler = sampler

    def state(self) -> dict:
        return {"args": {}, "attributes": {"mixture": self.sampler.state_dict()}}

    def on_train_begin(self, args, state, control, **kwargs):
        # `Trainer` has loaded the checkpoint's state before this event; a fresh run holds this callback's own.
        saved = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and saved is not None:
            self.sampler.check_resumable_from(saved["attributes"]["mixture"])


class InstructBlipTrainer(Trainer):
    """`Trainer` over a mixture of named datasets, training the paper's components by default.

    Args:
        model: an [`InstructBlipForConditionalGeneration`].
        args: [`InstructBlipTrainingArguments`], which hold every default. A plain `TrainingArguments` is
            refused: convert it with `InstructBlipTrainingArguments.from_training_arguments(args)`.
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
        args: InstructBlipTrainingArguments | None = None,
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
        train_datasets = {name: as_training_dataset(ds, name) for name, ds in (train_datasets or {}).items()}
        eval_datasets = {name: as_training_dataset(ds, name) for name, ds in (eval_datasets or {}).items()}
        args = args if args is not None else InstructBlipTrainingArguments(output_dir="instructblip-tuned")
        if not isinstance(args, InstructBlipTrainingArguments):
            raise TypeError(
                f"InstructBlipTrainer takes InstructBlipTrainingArguments (the paper's optimiser, freezing, mixture "
                f"and length defaults), got {type(args).__name__}. Convert it explicitly, keeping its values: "
                "args = InstructBlipTrainingArguments.from_training_arguments(args)."
            )
        self.frozen_modules = freeze_for_instruction_tuning(model, **args.freeze_flags)
        self.vision_cache = None
        if args.vision_cache_gb > 0:
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
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if self.mixture_sizes:
            # Validates names and sizes now rather than at the first step.
            callbacks.append(MixtureCheckpointCallback(self._new_mixture_sampler(args)))
        if data_collator is None:
            if processing_class is None:
                raise ValueError("Pass processing_class=<InstructBlipProcessor> (or a data_collator).")
            data_collator = InstructBlipDataCollator(
                processing_class,
                decoder_only=model.config.use_decoder_only_language_model,
                max_instruction_length=args.max_instruction_length,
                max_answer_length=args.max_answer_length,
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
            callbacks=callbacks,
            **kwargs,
        )

    def _new_mixture_sampler(self, args: InstructBlipTrainingArguments) -> MixtureSampler:
        self.mixture_sampler = MixtureSampler(
            self.mixture_sizes,
            alpha=args.mixture_alpha,
            multipliers=self.mixture_multipliers,
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )
        return self.mixture_sampler

    # --- data ------------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> MixtureSampler:
        """Indices into the concatenation of `train_datasets`, in the order they were given.

        (`Trainer` has no public way to give its train DataLoader a sampler; TRL overrides this hook too.)
        """
        return self._new_mixture_sampler(self.args)

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
        """`Trainer`'s checkpoint, written into a staging folder and renamed to `checkpoint-<step>` only once
        complete, so that `resume_from_checkpoint=True` never picks a half-written one (full disk, killed job). A
        failed write removes the staging folder and says which checkpoint failed; earlier ones are untouched.
        (`Trainer` has no public hook around its checkpoint writes.)"""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root, final = os.path.join(run_dir, CHECKPOINT_STAGING_DIR), os.path.join(run_dir, name)
        staged = os.path.join(staging_root, name)
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # left by a killed run
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, SafetensorError) as error:  # safetensors reports a full disk as its own error
            shutil.rmtree(staging_root, ignore_errors=True)
            raise OSError(
                getattr(error, "errno", None),
                f"Could not save checkpoint {final}: {getattr(error, 'strerror', None) or error}. Checkpoints saved "
                f"before it in {run_dir} are complete; free space (or lower save_total_limit) and resume.",
            ) from error
        finally:
            self._checkpoint_staging_root = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            shutil.rmtree(final, ignore_errors=True)  # the same step saved again
            os.rename(staged, final)
            os.rmdir(staging_root)
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(final, TRAINER_STATE_NAME))
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial):
        # While a checkpoint is saved, `Trainer` writes it under the staging folder (see `_save_checkpoint`).
        return getattr(self, "_checkpoint_staging_root", None) or super()._get_output_dir(trial)

    def create_model_card(self, *args, **kwargs):
        """`Trainer`'s card (hyper-parameters, evaluation results; `dataset_tags` become `datasets`) plus the
        training mixture, InstructBLIP's Hub metadata and a usage snippet for the saved model."""
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        trainer_card = ModelCard.load(path)
        body = trainer_card.text
        if self.mixture_sampler is not None:
            body += "\n" + mixture_card_section(self.mixture_sampler, self.mixture_multipliers, self.model)
        model = self.accelerator.unwrap_model(self.model)
        card = model_card(
            body,
            model_id=self.args.hub_model_id or os.path.abspath(self.args.output_dir),
            decoder_only=model.config.use_decoder_only_language_model,
            tags=list(trainer_card.data.tags or []),
        )
        card.data = ModelCardData(**{**trainer_card.data.to_dict(), **card.data.to_dict()})
        card.save(path)


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
    "MixtureCheckpointCallback",
    "InstructBlipTrainer",
    "InstructBlipTrainingArguments",
    "add_lora",
    "freeze_for_instruction_tuning",
    "merge_lora",
    "mixture_card_section",
]
