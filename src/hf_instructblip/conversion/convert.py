"""LAVIS InstructBLIP checkpoint + EVA ViT file + Hugging Face LLM → a hf_instructblip model directory."""

import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedConfig
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils.hub import convert_file_size_to_int

from ..configuration_instructblip import PRESETS, InstructBlipConfig
from ..modeling_instructblip import InstructBlipForConditionalGeneration
from ..processing_instructblip import InstructBlipProcessor
from .errors import ConversionError
from .config_from_shapes import bert_settings_from_config, infer_qformer_config, infer_vision_config, num_query_tokens
from .families import LlmFamily, family_of
from .loading import WeightFile, load_state_dict, open_llm_weights, resolve_llm
from .mapping import IGNORED_SUFFIXES, check_state_dict, drop_ignored_keys, rename_state_dict, select_eva_blocks
from .text import lavis_generation_config, lavis_processor
from .writing import LazyTensor, converted_model_card, output_dtype, write_weights

logger = logging.getLogger(__name__)

LLM_PREFIX = "language_model."


def convert_lavis_checkpoint(
    lavis_checkpoint: str | Path,
    llm: str,
    output_dir: str | Path,
    *,
    vit_checkpoint: str | Path | None = None,
    qformer_tokenizer: str = "bert-base-uncased",
    variant: str | None = None,
    vision_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    vision_attention_heads: int | None = None,
    qformer_overrides: dict | None = None,
) -> Path:
    """Convert a LAVIS InstructBLIP checkpoint into `output_dir` (weights, config, generation config, processor,
    model card and the package's model code for `trust_remote_code`).

    All or nothing: every input is checked (names, shapes, file integrity) before anything is written, and the
    output is written into `<output_dir>.partial` beside it, which becomes `output_dir` only once complete
    (`config.json` last). A run that fails removes it; a killed run leaves it, never `output_dir`, and the next
    run replaces it.

    Args:
        lavis_checkpoint: LAVIS `.pth`, `{"model": state_dict}` or a raw state dict, trimmed or with the ViT.
        llm: directory or Hub repo of the LLM the checkpoint was trained with (weights and tokenizer).
        output_dir: where to write; created if needed. An existing non-empty folder is refused unless `overwrite`.
        vit_checkpoint: raw EVA-CLIP ViT file (`eva_vit_g.pth`), for checkpoints without `visual_encoder.*`.
        qformer_tokenizer: BERT tokenizer (and config, for the head count) of the Q-Former.
        variant: released model (`vicuna7b`, `vicuna13b`, `flant5xl`, `flant5xxl`) the shapes must match; its
            Q-Former settings are used when the Q-Former tokenizer comes without a BERT config.
        vision_layers: ViT blocks to take from `vit_checkpoint` (default: all but the last if it has `norm.*`).
        dtype: dtype of the floating-point weights (modules the model keeps in float32 stay float32).
        max_shard_size: largest safetensors shard, e.g. `"5GB"` or a byte count.
        overwrite: replace an existing non-empty `output_dir` whole (only once the new one is complete).
        vision_attention_heads: overrides `vision width / 88`.
        qformer_overrides: overrides of the BERT settings (`num_attention_heads`, `layer_norm_eps`, ...).
    """
    if variant is not None and variant not in PRESETS:
        raise ConversionError(f"Unknown variant {variant!r}; choose one of {sorted(PRESETS)}.")
    try:
        max_shard_size = convert_file_size_to_int(max_shard_size)
    except ValueError as error:
        raise ConversionError(f"--max-shard-size {max_shard_size!r}: {error}") from error
    if max_shard_size <= 0:
        raise ConversionError(f"--max-shard-size must be positive, got {max_shard_size}.")
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    vit_path = Path(vit_checkpoint) if vit_checkpoint is not None else None
    renamed, origins = rename_state_dict(read_lavis_weights(Path(lavis_checkpoint), vit_path, vision_layers))
    llm_dir = resolve_llm(llm)
    qformer_settings = {**read_qformer_settings(qformer_tokenizer, variant), **(qformer_overrides or {})}
    try:
        llm_config = AutoConfig.from_pretrained(llm_dir)
    except (OSError, ValueError) as error:
        raise ConversionError(f"--llm {llm}: no readable config.json in {llm_dir} ({error}).") from error
    family = family_of(origins.values(), llm_config, llm)
    config, processor = lavis_config(
        renamed, llm_dir, llm_config, family, qformer_tokenizer, qformer_settings, vision_attention_heads
    )
    if variant is not None:
        check_variant(config, variant)
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(config)
    llm_files = open_llm_weights(llm_dir)
    inputs = ", ".join(str(path) for path in (lavis_checkpoint, vit_path, llm_dir) if path is not None)
    tensors, notes = assemble(renamed, origins, llm_files, model, family, inputs)
    keep_in_fp32 = float32_modules(model, dtype)
    dtypes = {key: output_dtype(key, tensor, dtype, keep_in_fp32) for key, tensor in tensors.items()}
    notes.insert(
        0,
        f"Vision tower: {config.vision_config.num_hidden_layers} EVA blocks, final LayerNorm from LAVIS's `ln_vision` "
        f"(eps {config.vision_config.post_layernorm_eps}); weights written in {config.dtype}.",
    )
    sources = {
        "LAVIS checkpoint": [Path(lavis_checkpoint)],
        "ViT": [vit_path] if vit_path else [],
        "LLM": [file.path for file in llm_files],
    }
    with written_atomically(output_dir) as staging:
        write_weights(staging, tensors, dtypes, max_shard_size)
        card = converted_model_card(
            sources, llm, variant, notes, Path(output_dir).resolve(), config.use_decoder_only_language_model
        )
        card.save(staging / "README.md")
        save_configs_and_code(staging, model, processor, dtype)  # config.json last: only a complete folder loads
    return output_dir


def read_lavis_weights(
    lavis_checkpoint: Path, vit_checkpoint: Path | None, vision_layers: int | None
) -> dict[str, torch.Tensor]:
    """LAVIS-named weights: the ViT file's blocks (if given) under the instruct checkpoint, which wins where both
    hold a tensor because LAVIS loads it on top of the ViT file."""
    weights = drop_ignored_keys(load_state_dict(lavis_checkpoint))
    if vit_checkpoint is None:
        if vision_layers is not None:
            raise ConversionError("--vision-layers selects blocks of a raw ViT file; no --vit-checkpoint was given.")
        return weights
    vision = select_eva_blocks(load_state_dict(vit_checkpoint), vision_layers)
    overridden = vision.keys() & weights.keys()
    if overridden:
        logger.info(
            "%d vision tensors of %s are taken from %s instead.", len(overridden), vit_checkpoint, lavis_checkpoint
        )
    return {**vision, **weights}


def read_qformer_settings(qformer_tokenizer: str, variant: str | None) -> dict:
    """Q-Former head count etc. from the BERT config next to its tokenizer, else the released models' values."""
    try:
        return bert_settings_from_config(AutoConfig.from_pretrained(qformer_tokenizer))
    except (OSError, ValueError) as error:
        if variant is None:
            raise ConversionError(
                f"No BERT config found for the Q-Former tokenizer {qformer_tokenizer!r} ({error}); it gives the "
                f"Q-Former's attention heads. Point --qformer-tokenizer at a directory with config.json or pass --variant."
            ) from error
        return bert_settings_from_config(InstructBlipConfig.from_preset(variant).qformer_config)


def check_variant(config: InstructBlipConfig, variant: str) -> None:
    """Fail early when the tensors do not have the shapes of the released model named by `--variant`."""
    preset = InstructBlipConfig.from_preset(variant)
    fields = {
        "vision width": lambda c: c.vision_config.hidden_size,
        "vision layers": lambda c: c.vision_config.num_hidden_layers,
        "image size": lambda c: c.vision_config.image_size,
        "Q-Former width": lambda c: c.qformer_config.hidden_size,
        "Q-Former layers": lambda c: c.qformer_config.num_hidden_layers,
        "query tokens": lambda c: c.num_query_tokens,
        "LLM width": lambda c: c.text_config.hidden_size,
        "LLM type": lambda c: c.text_config.model_type,
    }
    mismatches = [
        f"{name}: {get(config)} (expected {get(preset)})" for name, get in fields.items() if get(config) != get(preset)
    ]
    if mismatches:
        raise ConversionError(f"The inputs do not look like the released {variant} model: " + "; ".join(mismatches))


def llm_weights(files: list[WeightFile], aliases: set[str], ignored_patterns: list[str]) -> dict[str, LazyTensor]:
    """The LLM's tensors under `language_model.`, read lazily. Skipped: `aliases` (re-tied on load), rotary
    `inv_freq` buffers of older LLaMA files, and what the LLM class itself ignores when loading (`ignored_patterns`,
    e.g. an unused relative-attention bias in old T5 files)."""
    tensors = {}
    for file in files:
        for key in file.names():
            name = LLM_PREFIX + key
            ignored = key.endswith(IGNORED_SUFFIXES) or any(re.search(pattern, key) for pattern in ignored_patterns)
            if name not in aliases and not ignored:
                tensors[name] = LazyTensor(
                    file.shape(key), file.dtype(key), partial(file.read, key), f"{file.path.name}: {key}"
                )
    return tensors


def check_embedding_copies(
    copies: dict[str, torch.Tensor], tensors: dict[str, LazyTensor], tied: dict[str, str], origins: dict[str, str]
) -> None:
    """LAVIS T5 checkpoints hold `t5_model.{encoder,decoder}.embed_tokens.weight`, copies of the frozen shared
    embedding (cast to bfloat16 by LAVIS, hence compared in the copy's dtype). The LLM's weights are kept; a copy
    that differs means the checkpoint was trained with another LLM than `--llm`."""
    for key, copy in copies.items():
        if tied[key] not in tensors:
            continue  # the strict check reports the missing tensor
        reference = tensors[tied[key]].load()
        if reference.shape != copy.shape or not torch.equal(reference.to(copy.dtype), copy):
            logger.warning(
                "%s differs from the LLM's %s: was the checkpoint trained with another LLM than --llm? "
                "Keeping the LLM's weights.",
                origins[key],
                tied[key].removeprefix(LLM_PREFIX),
            )


def grow_rows(tensor: LazyTensor, rows: int) -> LazyTensor:
    """Rows for the tokens LAVIS and the processor add (`[PAD]`, `<image>`), set to the mean row. LAVIS re-draws
    the `[PAD]` row at random on every load, so no value is canonical; the mean is deterministic and gives the new
    ids an unremarkable logit."""

    def load() -> torch.Tensor:
        weight = tensor.load()
        extra = weight.float().mean(0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
        return torch.cat([weight, extra])

    return LazyTensor((rows, *tensor.shape[1:]), tensor.dtype, load, tensor.source)


def float32_modules(model: InstructBlipForConditionalGeneration, dtype: torch.dtype) -> set[str]:
    """Modules that `from_pretrained` upcasts to float32 when loading in `dtype` (`_keep_in_fp32_modules` under
    float16, `_keep_in_fp32_modules_strict` under both half precisions); writing them in float32 keeps their
    precision instead of rounding it away on disk."""
    modules = set()
    if dtype == torch.float16:
        modules |= set(model._keep_in_fp32_modules or ())
    if dtype in (torch.float16, torch.bfloat16):
        modules |= set(model._keep_in_fp32_modules_strict or ())
    return modules


def embedding_keys(model: InstructBlipForConditionalGeneration) -> list[str]:
    """State-dict names of the LLM's input and output embeddings (whatever the LLM calls them)."""
    names = {id(module): name for name, module in model.named_modules()}
    language_model = model.language_model
    return [
        f"{names[id(module)]}.weight"
        for module in (language_model.get_input_embeddings(), language_model.get_output_embeddings())
    ]


def assemble(
    renamed: dict[str, torch.Tensor],
    origins: dict[str, str],
    llm_files: list[WeightFile],
    model: InstructBlipForConditionalGeneration,
    family: LlmFamily,
    inputs: str,
) -> tuple[dict[str, LazyTensor], list[str]]:
    """Every tensor of the converted model, lazily, in write order, checked against `model` (on the meta device);
    plus notes for the model card. `renamed` are the HF-named LAVIS weights, `origins` their LAVIS names."""
    vocab_size = model.config.text_config.vocab_size
    input_embedding, output_embedding = embedding_keys(model)
    tied = model.all_tied_weights_keys
    # The output embedding stays when the LLM has one of its own: flan-t5 does not tie lm_head, though T5Config does.
    aliases = set(tied) - {output_embedding}
    tensors = {
        key: LazyTensor.of(tensor, origins[key]) for key, tensor in renamed.items() if not key.startswith(LLM_PREFIX)
    }
    llm = llm_weights(llm_files, aliases, model.language_model._keys_to_ignore_on_load_unexpected or [])
    check_embedding_copies({key: renamed[key] for key in renamed.keys() & aliases}, llm, tied, origins)
    overrides = {
        key: LazyTensor.of(renamed[key], origins[key]) for key in renamed.keys() - aliases if key.startswith(LLM_PREFIX)
    }
    notes = []
    if overrides:
        notes.append(f"{len(overrides)} language-model tensors were taken from the LAVIS checkpoint, not the LLM.")
    tensors.update({**llm, **overrides})
    for key in dict.fromkeys((input_embedding, output_embedding)):
        if key in tensors and tensors[key].shape[0] < vocab_size:
            notes.append(f"`{key}` grew from {tensors[key].shape[0]} to {vocab_size} rows (new rows: the mean row).")
            tensors[key] = grow_rows(tensors[key], vocab_size)
    shapes = {key: tensor.shape for key, tensor in tensors.items()}
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    origins = {key: tensor.source for key, tensor in tensors.items()}
    check_state_dict(shapes, expected, optional=set(tied), origins=origins, family=family, inputs=inputs)
    return tensors, notes


def lavis_config(
    renamed: dict[str, torch.Tensor],
    llm_dir: Path,
    llm_config: PreTrainedConfig,
    family: LlmFamily,
    qformer_tokenizer: str,
    qformer_settings: dict,
    vision_attention_heads: int | None,
) -> tuple[InstructBlipConfig, InstructBlipProcessor]:
    """The model configuration read off the tensors, and the LAVIS processor, whose tokenizer fixes the LLM
    vocabulary size and the image token."""
    vision_config = infer_vision_config(renamed, vision_attention_heads)
    queries = num_query_tokens(renamed)
    processor = lavis_processor(llm_dir, family, qformer_tokenizer, vision_config["image_size"], queries)
    vocab_size = max(llm_config.vocab_size, len(processor.tokenizer))
    config = InstructBlipConfig(
        vision_config=vision_config,
        qformer_config=infer_qformer_config(renamed, qformer_settings),
        text_config=family.text_config(llm_config, vocab_size, processor.tokenizer),
        num_query_tokens=queries,
        image_token_index=processor.image_token_id,
    )
    return config, processor


def save_configs_and_code(
    output_dir: Path, model: InstructBlipForConditionalGeneration, processor: InstructBlipProcessor, dtype: torch.dtype
) -> None:
    """Everything but the weights and the card: config, generation config, processor, and the model code that
    `trust_remote_code` loads where this package is not installed."""
    config = model.config
    config.dtype = str(dtype).removeprefix("torch.")
    config.architectures = [type(model).__name__]
    custom_object_save(model, output_dir, config=config)
    # GenerationConfig.save_pretrained rejects top_p without sampling; LAVIS keeps it as its sampling default.
    lavis_generation_config(config.text_config.to_dict()).to_json_file(output_dir / "generation_config.json")
    processor.save_pretrained(output_dir)
    config.save_pretrained(output_dir)


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a file or a non-empty folder (unless `overwrite`)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output {output_dir} is a file; give a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(
            f"--output {output_dir} exists and is not empty; pass --overwrite to replace it whole, or choose "
            "another folder."
        )


@contextmanager
def written_atomically(output_dir: Path) -> Iterator[Path]:
    """A staging folder `<output_dir>.partial` that replaces `output_dir` whole once the block completes.

    The staging folder is removed if the block fails; one left by a killed run is removed by the next, as is a
    `<output_dir>.replaced` left between the two renames at the end. A disk that fills up is reported with the
    folder being written.
    """
    staging, replaced = (output_dir.with_name(output_dir.name + suffix) for suffix in (".partial", ".replaced"))
    for leftover in (staging, replaced):
        if leftover.exists():
            logger.warning("Removing %s, left by an interrupted conversion.", leftover)
            shutil.rmtree(leftover)
    staging.mkdir(parents=True)
    try:
        yield staging
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError(f"Writing the converted model into {staging} failed: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output_dir.exists():  # an empty folder, or one --overwrite replaces
        output_dir.rename(replaced)
        staging.rename(output_dir)
        shutil.rmtree(replaced)
    else:
        staging.rename(output_dir)


def push_to_hub(output_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a converted directory to `repo_id` (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(output_dir), repo_id=repo_id, commit_message="Convert from LAVIS")
