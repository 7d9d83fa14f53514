"""InstructBlipTrainer on tiny models: what is trained, what stays frozen, resume, eval, model card, TRL."""

import errno
import json
import os
import shutil
import subprocess
import sys

import datasets
import pytest
import tiny
import torch
from huggingface_hub import ModelCard
from launch import run_script
from safetensors.torch import load_file
from transformers import TrainingArguments

from hf_instructblip.training.collator import InstructBlipDataCollator
from hf_instructblip.training.recipes import prepare_dataset
from hf_instructblip.training.trainer import (
    CHECKPOINT_STAGING_DIR,
    InstructBlipTrainer,
    InstructBlipTrainingArguments,
    freeze_for_instruction_tuning,
    predicted_answer_tokens,
)
from hf_instructblip.training.vision_cache import VisionFeatureCache, frozen_vision_features

PAPER_TRAINABLE_PREFIXES = ("query_tokens", "qformer.", "vision_model.post_layernorm.", "language_projection.")


def dataset(name, n, answer="red"):
    rows = {"image": [tiny.image(i) for i in range(n)], "text_input": [f"{name} {i}?" for i in range(n)],
            "text_output": [answer] * n}
    return prepare_dataset(datasets.Dataset.from_dict(rows), "custom", name=name)


def arguments(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
                    warmup_steps=0, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                    disable_tqdm=True)
    return InstructBlipTrainingArguments(**{**defaults, **overrides})


def trainer(tmp_path, kind="llama", model=None, **overrides):
    return InstructBlipTrainer(
        model=model or tiny.model(kind),
        args=arguments(tmp_path, **overrides),
        processing_class=tiny.processor(kind),
        train_datasets={"colour": dataset("colour", 12), "shape": dataset("shape", 3, "circle")},
        mixture_multipliers={"shape": 2.0},
        eval_datasets={"colour": dataset("colour", 4), "shape": dataset("shape", 4, "circle")},
    )


def trainable_names(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_paper_defaults_train_queries_qformer_final_layernorm_and_projection(tmp_path):
    run = trainer(tmp_path)
    names = trainable_names(run.model)
    assert names and all(name.startswith(PAPER_TRAINABLE_PREFIXES) for name in names)
    assert {n for n, _ in run.model.named_parameters() if n.startswith(PAPER_TRAINABLE_PREFIXES)} == names
    optimizer = run.create_optimizer()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in run.model.parameters() if p.requires_grad}
    decay_by_param = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    params = dict(run.model.named_parameters())
    assert decay_by_param[id(params["query_tokens"])] == 0.05
    assert decay_by_param[id(params["language_projection.weight"])] == 0.05
    assert decay_by_param[id(params["language_projection.bias"])] == 0.0
    assert decay_by_param[id(params["vision_model.post_layernorm.weight"])] == 0.0
    assert (optimizer.defaults["betas"], run.args.lr_scheduler_type.value) == ((0.9, 0.999), "cosine")


def test_freeze_flags():
    model = tiny.model("llama")
    freeze_for_instruction_tuning(model, train_qformer=False, train_language_model=True, train_vision_post_layernorm=False)
    names = trainable_names(model)
    assert any(n.startswith("language_model.") for n in names)
    assert not any(n.startswith(("qformer.", "query_tokens", "vision_model.")) for n in names)
    with pytest.raises(ValueError, match="nothing would be trained"):
        freeze_for_instruction_tuning(model, train_qformer=False, train_language_projection=False,
                                      train_vision_post_layernorm=False)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_training_moves_only_trainable_weights_and_frozen_towers_run_in_eval_mode(tmp_path, kind):
    run = trainer(tmp_path, kind, max_steps=3)
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    modes = []
    run.model.language_model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    run.model.vision_model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    run.train()
    unchanged = {name for name, parameter in run.model.named_parameters() if torch.equal(before[name], parameter)}
    frozen = {name for name, parameter in run.model.named_parameters() if not parameter.requires_grad}
    assert frozen <= unchanged
    # The last Q-Former layer's text FFN feeds nothing (only query outputs leave the Q-Former): zero gradient.
    last = f"qformer.encoder.layer.{run.model.config.qformer_config.num_hidden_layers - 1}."
    assert all(name.startswith((f"{last}intermediate.", f"{last}output.")) for name in unchanged - frozen)
    assert run.model.qformer.training and modes and not any(modes)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_loss_decreases(tmp_path, kind):
    # A random tiny LLaMA barely reacts to its soft prompt, so the LLM trains too here; the vision tower stays frozen.
    run = trainer(tmp_path, kind, max_steps=20, learning_rate=1e-2, train_language_model=True)
    run.train()
    losses = [log["loss"] for log in run.state.log_history if "loss" in log]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_predictions_are_aligned_with_unshifted_decoder_only_labels():
    logits = torch.nn.functional.one_hot(torch.tensor([[3, 1, 4, 1]]), num_classes=6).float()
    labels = torch.tensor([[-100, 3, 1, 4]])
    assert predicted_answer_tokens(logits, labels, decoder_only=True).tolist() == [[-100, 3, 1, 4]]
    assert predicted_answer_tokens(logits, labels, decoder_only=False).tolist() == [[3, 1, 4, 1]]


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_per_dataset_eval_losses_and_answer_metrics(tmp_path, kind):
    run = trainer(tmp_path, kind, max_steps=1, per_device_eval_batch_size=3)
    metrics = run.evaluate()
    # Recompute each dataset's numbers by hand, over the same batches of 3 and 1 (Trainer weights batch losses by
    # batch size; predictions of different lengths are padded with -100 when gathered).
    for name, eval_set in run.eval_dataset.items():
        scored, right, weighted_losses = [], [], []
        for start in (0, 3):
            batch = run.data_collator([eval_set[i] for i in range(start, min(start + 3, len(eval_set)))])
            with torch.no_grad():
                outputs = run.model(**batch)
            logits, labels = outputs.logits, batch["labels"]
            if kind == "llama":
                logits, labels = logits[:, :-1], labels[:, 1:]
            scored += list(labels != -100)
            right += list((logits.argmax(-1) == labels) & (labels != -100))
            weighted_losses.append(outputs.loss.item() * len(labels))
        assert metrics[f"eval_{name}_loss"] == pytest.approx(sum(weighted_losses) / len(eval_set), rel=1e-4)
        scored = torch.stack([s.sum() for s in scored])
        right = torch.stack([r.sum() for r in right])
        assert metrics[f"eval_{name}_answer_token_accuracy"] == pytest.approx(right.sum().item() / scored.sum().item())
        exact = (right == scored).float().mean().item()
        assert metrics[f"eval_{name}_answer_exact_match"] == pytest.approx(exact)


def test_plain_training_arguments_are_refused_and_converted_explicitly(tmp_path):
    plain = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, learning_rate=3e-4,
                              lr_scheduler_type="linear")
    with pytest.raises(TypeError, match=r"got TrainingArguments\. Convert it explicitly.*from_training_arguments"):
        InstructBlipTrainer(model=tiny.model("llama"), args=plain, processing_class=tiny.processor("llama"),
                            train_datasets={"colour": dataset("colour", 4)})
    args = InstructBlipTrainingArguments.from_training_arguments(plain, mixture_alpha=0.3)
    # The plain arguments' own values stay (not the paper's 1e-5 / cosine); the InstructBLIP fields get theirs.
    assert (args.learning_rate, args.lr_scheduler_type.value, args.weight_decay) == (3e-4, "linear", 0.0)
    assert (args.mixture_alpha, args.max_instruction_length, args.max_answer_length) == (0.3, 128, 256)
    assert args.remove_unused_columns is False
    run = InstructBlipTrainer(model=tiny.model("llama"), args=args, processing_class=tiny.processor("llama"),
                              train_datasets={"colour": dataset("colour", 4)})
    assert all(name.startswith(PAPER_TRAINABLE_PREFIXES) for name in trainable_names(run.model))
    assert (run.data_collator.max_instruction_length, run.mixture_sampler.alpha) == (128, 0.3)


@pytest.mark.parametrize("field, value, message", [
    ("mixture_alpha", -1.0, "mixture_alpha must be a finite number >= 0"),
    ("max_answer_length", 1, "max_answer_length must be >= 2"),
    ("remove_unused_columns", True, "needs remove_unused_columns=False"),
    ("vision_cache_gb", 1.0, "needs a frozen vision tower"),
    ("vision_cache_gb", -1.0, "vision_cache_gb must be >= 0"),
    ("fsdp", "full_shard", "fsdp is not applied on CPU"),
])
def test_training_arguments_are_validated_when_built(tmp_path, field, value, message):
    extra = {"train_vision_model": True} if field == "vision_cache_gb" else {}
    with pytest.raises(ValueError, match=message):
        InstructBlipTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **{field: value}, **extra)
    with pytest.raises(ValueError, match="nothing would be trained"):
        InstructBlipTrainingArguments(output_dir=str(tmp_path), report_to=[], train_qformer=False,
                                      train_language_projection=False, train_vision_post_layernorm=False)


def test_resume_continues_the_same_stream_and_reaches_the_same_weights(tmp_path):
    def run(output_dir, resume=None):
        seen = []
        collator = InstructBlipDataCollator(tiny.processor("llama"), max_instruction_length=128, max_answer_length=256)

        def recording_collator(examples):
            seen.append([example["text_input"] for example in examples])
            return collator(examples)

        instance = InstructBlipTrainer(
            model=tiny.model("llama"),
            args=arguments(output_dir, max_steps=6, save_strategy="steps", save_steps=3),
            train_datasets={"colour": dataset("colour", 12), "shape": dataset("shape", 3, "circle")},
            data_collator=recording_collator,
        )
        instance.train(resume_from_checkpoint=resume)
        return instance, seen

    full, full_batches = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "out" / "checkpoint-3"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["MixtureCheckpointCallback"]["attributes"]["mixture"]["sizes"] == {"colour": 12, "shape": 3}
    interrupted = tmp_path / "interrupted.ckpt"
    shutil.copytree(checkpoint, interrupted)  # what an interrupted run leaves behind
    resumed, resumed_batches = run(tmp_path / "resumed", resume=str(interrupted))
    assert resumed_batches == full_batches[3:]
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_changed_mixture(tmp_path):
    run = trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    run.train()
    checkpoint = os.path.join(run.args.output_dir, "checkpoint-2")
    changed = InstructBlipTrainer(
        model=tiny.model("llama"), args=arguments(tmp_path, max_steps=4), processing_class=tiny.processor("llama"),
        train_datasets={"colour": dataset("colour", 12), "shape": dataset("shape", 3, "circle")},  # multiplier gone
    )
    with pytest.raises(ValueError, match="mixture changed since the checkpoint"):
        changed.train(resume_from_checkpoint=checkpoint)


def test_model_card_lists_the_mixture(tmp_path):
    run = trainer(tmp_path, max_steps=1)
    run.train()
    run.save_model()
    run.create_model_card(dataset_tags=["org/colours"])
    card = (tmp_path / "out" / "README.md").read_text()
    weights = run.mixture_sampler.weights
    assert f"| colour | 12 | 1 | {weights['colour']:.4f} |" in card
    assert f"| shape | 3 | 2 | {weights['shape']:.4f} |" in card
    assert "learning_rate: 0.001" in card
    metadata = ModelCard.load(tmp_path / "out" / "README.md").data
    assert metadata.library_name == "transformers" and metadata.pipeline_tag == "image-text-to-text"
    assert metadata.datasets == ["org/colours"] and {"instructblip", "hf_instructblip"} <= set(metadata.tags)
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_named_datasets_only(tmp_path):
    with pytest.raises(ValueError, match="train_datasets="):
        InstructBlipTrainer(model=tiny.model("llama"), args=arguments(tmp_path), train_dataset=dataset("a", 2),
                            processing_class=tiny.processor("llama"))


def sft_trainer(tmp_path, model, processor, train_dataset, data_collator=None, **config):
    from trl import SFTConfig, SFTTrainer

    # bf16=False: TRL's default would leave autocast state behind for later tests on CPU.
    args = SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                     report_to=[], use_cpu=True, disable_tqdm=True, bf16=False, **config)
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=processor,
                      data_collator=data_collator)


def chat_dataset(n, layout):
    """TRL's conversational vision formats: one image and one user/assistant exchange per row, either as
    `messages` or split into `prompt` and `completion`."""
    def user(i):
        return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"colour {i}?"}]}

    answer = {"role": "assistant", "content": [{"type": "text", "text": "red"}]}
    columns = {"images": [[tiny.image(i)] for i in range(n)]}
    if layout == "messages":
        columns["messages"] = [[user(i), answer] for i in range(n)]
    else:
        columns.update(prompt=[[user(i)] for i in range(n)], completion=[[answer]] * n)
    return datasets.Dataset.from_dict(columns)


@pytest.mark.parametrize("layout", ["messages", "prompt_completion"])
def test_trl_sft_trainer_on_chat_data_builds_the_lavis_layout_and_trains(tmp_path, layout):
    model, processor = tiny.model("llama"), tiny.processor("llama")
    freeze_for_instruction_tuning(model)
    frozen = {name: p.detach().clone() for name, p in model.language_model.named_parameters()}
    # Loss on the answer only: TRL's assistant-only loss for messages, its default completion-only loss otherwise.
    config = {"assistant_only_loss": True} if layout == "messages" else {}
    sft = sft_trainer(tmp_path, model, processor, chat_dataset(8, layout), logging_steps=1, **config)

    trl_batch = next(iter(sft.get_train_dataloader()))
    rows = [{"image": tiny.image(int(text.split()[1][:-1])), "text_input": text, "text_output": "red"}
            for text in processor.qformer_tokenizer.batch_decode(trl_batch["qformer_input_ids"],
                                                                   skip_special_tokens=True)]
    ours = InstructBlipDataCollator(processor, max_instruction_length=128, max_answer_length=256)(rows)
    # TRL's collator pads on the right like ours here; same tokens, same loss positions, same Q-Former instruction.
    for key in ("input_ids", "labels", "qformer_input_ids", "pixel_values"):
        torch.testing.assert_close(trl_batch[key], ours[key], rtol=0, atol=1e-6, msg=key)
    with torch.no_grad():  # TRL's fused LM head reads `last_hidden_state` and must give the model's own loss
        fused = model(**trl_batch, fused_lm_head=True).loss
        plain = model(**trl_batch).loss
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)

    before = model.query_tokens.detach().clone()
    sft.train()
    assert not torch.equal(before, model.query_tokens)
    assert all(torch.equal(p, frozen[name]) for name, p in model.language_model.named_parameters())
    losses = [entry["loss"] for entry in sft.state.log_history if "loss" in entry]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_trl_sft_trainer_takes_the_lavis_collator(tmp_path):
    model, processor = tiny.model("llama"), tiny.processor("llama")
    freeze_for_instruction_tuning(model)
    sft = sft_trainer(tmp_path, model, processor, dataset("colour", 8),
                      InstructBlipDataCollator(processor, max_instruction_length=128, max_answer_length=256),
                      remove_unused_columns=False)
    before = model.query_tokens.detach().clone()
    sft.train()
    assert not torch.equal(before, model.query_tokens)


@pytest.mark.parametrize("kind, targets", [("llama", ["q_proj", "v_proj"]), ("t5", ["q", "v"])])
def test_lora_on_the_language_model_trains_adapters_and_merges_into_a_plain_checkpoint(tmp_path, kind, targets):
    from peft import LoraConfig

    from hf_instructblip import InstructBlipForConditionalGeneration
    from hf_instructblip.training.trainer import merge_lora

    model = tiny.model(kind)
    base_lm = {name: p.detach().clone() for name, p in model.language_model.named_parameters()}
    run = InstructBlipTrainer(
        model=model, args=arguments(tmp_path, max_steps=2), processing_class=tiny.processor(kind),
        train_datasets={"colour": dataset("colour", 8)},
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
    )
    names = trainable_names(run.model)
    assert any("lora_" in name for name in names) and all(
        "lora_" in name or name.startswith(PAPER_TRAINABLE_PREFIXES) for name in names
    )
    run.train()
    batch = run.data_collator([dataset("colour", 2)[i] for i in range(2)])
    with torch.no_grad():
        expected = run.model.eval()(**batch).logits
    merge_lora(run.model)
    run.model.save_pretrained(tmp_path / "merged")
    reloaded = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    assert any(not torch.equal(base_lm[n], p) for n, p in reloaded.language_model.named_parameters())


def test_bf16_keeps_frozen_towers_in_bf16_and_trains_float32_weights(tmp_path):
    model = tiny.model("llama").to(torch.bfloat16)
    run = trainer(tmp_path, model=model, max_steps=2, bf16=True)
    dtypes = {name: p.dtype for name, p in run.model.named_parameters()}
    assert {dtypes[n] for n in trainable_names(run.model)} == {torch.float32}
    assert dtypes["vision_model.embeddings.patch_embedding.weight"] == torch.bfloat16
    assert dtypes["language_model.lm_head.weight"] == torch.bfloat16
    run.train()
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_activation_checkpointing_trains(tmp_path):
    run = trainer(tmp_path, max_steps=2, activation_checkpointing=True)
    before = run.model.query_tokens.detach().clone()
    run.train()
    assert run.model.qformer.is_gradient_checkpointing
    assert not torch.equal(before, run.model.query_tokens)


def test_push_to_hub_publishes_the_mixture_card(tmp_path):
    from huggingface_hub import hf_hub_download

    repo_id = "org/instructblip-shapes-tuned"
    run = trainer(tmp_path, max_steps=1, push_to_hub=True, hub_model_id=repo_id)
    run.train()
    run.push_to_hub()
    with open(hf_hub_download(repo_id, "README.md")) as card:
        text = card.read()
    assert "## Instruction-tuning mixture" in text and "| shape | 3 | 2 |" in text
    assert hf_hub_download(repo_id, "model.safetensors")


def test_vision_cache_gives_the_same_training_within_its_bound(tmp_path):
    """Room for 4 images among 12 distinct ones: entries are evicted and recomputed, the weights are the same."""
    model = tiny.model("llama")
    entry_bytes = frozen_vision_features(model.vision_model, torch.zeros(1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)).nbytes
    plain = trainer(tmp_path / "plain", max_steps=6)
    plain.train()
    cached = trainer(tmp_path / "cached", model=model, max_steps=6, vision_cache_gb=4.5 * entry_bytes / 1e9)
    cache, seen, stored_bytes = cached.vision_cache, set(), []
    lookup = cache.image_embeds

    def recording_lookup(vision_model, pixel_values, image_ids):
        embeds = lookup(vision_model, pixel_values, image_ids)
        seen.update(image_ids)
        stored_bytes.append(cache.stored_bytes)
        return embeds

    cache.image_embeds = recording_lookup
    cached.train()
    assert len(stored_bytes) == 6 and max(stored_bytes) <= cache.max_bytes and len(cache.entries) == 4
    assert cache.hits > 0 and cache.misses > len(seen)  # evicted images came back
    for (name, a), b in zip(plain.model.named_parameters(), cached.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="needs a frozen vision tower"):
        trainer(tmp_path, vision_cache_gb=1, train_vision_model=True)


def test_vision_cache_is_least_recently_used_and_refuses_a_trainable_tower():
    model = tiny.model("llama")
    vision = model.vision_model.requires_grad_(False)
    pixel_values = torch.randn(3, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    entry_bytes = frozen_vision_features(vision, pixel_values[:1]).nbytes
    cache = VisionFeatureCache(2 * entry_bytes)
    embeds = cache.image_embeds(vision, pixel_values[[0, 1, 0]], ["a", "b", "a"])
    torch.testing.assert_close(embeds, vision(pixel_values[[0, 1, 0]]).last_hidden_state)
    assert (cache.hits, cache.misses, list(cache.entries)) == (1, 2, ["a", "b"])
    cache.image_embeds(vision, pixel_values[[0]], ["a"])  # "a" becomes the most recent
    cache.image_embeds(vision, pixel_values[[2]], ["c"])  # evicts "b"
    assert list(cache.entries) == ["a", "c"] and cache.stored_bytes == 2 * entry_bytes
    with pytest.raises(ValueError, match="one image_id per image"):
        cache.image_embeds(vision, pixel_values[:2], ["a", None])
    vision.encoder.layers[0].mlp.fc1.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen vision tower.*encoder.layers.0.mlp.fc1.weight"):
        cache.image_embeds(vision, pixel_values[:1], ["a"])


def test_ddp_on_two_processes_trains_like_one_process_on_the_whole_batch(tmp_path):
    """2 gloo ranks × 4 examples must reach the weights one process reaches with the same 8 examples per step:
    the ranks share one mixture stream and the loss is normalised by the tokens of all ranks."""
    run_script("ddp_training.py", str(tmp_path), "4", processes=2)
    run_script("ddp_training.py", str(tmp_path), "8")
    ranks = [load_file(tmp_path / f"rank{r}_of2.safetensors") for r in range(2)]
    single = load_file(tmp_path / "rank0_of1.safetensors")
    initial = dict(tiny.model("llama").named_parameters())
    assert set(single) == set(ranks[0]) and all(name.startswith(PAPER_TRAINABLE_PREFIXES) for name in single)
    for name, weight in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name])
        torch.testing.assert_close(ranks[0][name], weight, rtol=0, atol=2e-5)
    assert max((single[n] - initial[n]).abs().max().item() for n in single) > 1e-3  # it trained


@pytest.mark.parametrize("fault", ["full disk", "killed"])
def test_a_checkpoint_that_fails_part_way_is_never_resumed_from(tmp_path, monkeypatch, fault):
    """The optimizer write of the second checkpoint fails after half its bytes: ENOSPC from the writer (no small
    filesystem can be mounted here), or an interrupt that skips every clean-up (as a killed job does)."""
    save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            if fault == "full disk":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise KeyboardInterrupt
        return save(obj, path, *args, **kwargs)

    run = trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    output = run.args.output_dir
    monkeypatch.setattr(torch, "save", failing_save)
    if fault == "full disk":
        with pytest.raises(OSError, match=rf"Could not save checkpoint {output}/checkpoint-4: No space left on device"):
            run.train()
        assert not os.path.exists(os.path.join(output, CHECKPOINT_STAGING_DIR))  # its bytes are freed
    else:
        with pytest.raises(KeyboardInterrupt):
            run.train()
    monkeypatch.setattr(torch, "save", save)
    assert [name for name in os.listdir(output) if name.startswith("checkpoint")] == ["checkpoint-2"]
    assert {"trainer_state.json", "optimizer.pt", "model.safetensors"} <= set(os.listdir(f"{output}/checkpoint-2"))

    resumed = trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4 and len(resumed.state.log_history) < 2 * 4  # steps 3-4 only, + summary
    assert sorted(name for name in os.listdir(output) if name.startswith(".") or "checkpoint" in name) == [
        "checkpoint-2", "checkpoint-4"
    ]


def raw_dataset(**columns):
    rows = {"image": [tiny.image(i) for i in range(3)], "text_input": ["q?"] * 3, "text_output": ["a", "b", "c"]}
    return datasets.Dataset.from_dict({**rows, **columns})


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"text_output": None}, r"Training dataset 'mine' has no column\(s\) \['text_output'\]; its columns are"),
        ({"text_output": ["a", None, "c"]}, r"'mine', column 'text_output': 1 rows are not strings, e.g. rows \[1\]"),
        ({"text_input": [1, 2, 3]}, r"'mine', column 'text_input': 3 rows are not strings, e.g. rows \[0, 1, 2\]"),
    ],
)
def test_unprepared_datasets_are_checked_before_the_first_step(tmp_path, columns, message):
    data = raw_dataset(**{key: value for key, value in columns.items() if value is not None})
    if None in columns.values():
        data = data.remove_columns([key for key, value in columns.items() if value is None])
    with pytest.raises(ValueError, match=message):
        InstructBlipTrainer(model=tiny.model(), args=arguments(tmp_path), processing_class=tiny.processor(),
                            train_datasets={"mine": data})


def test_an_unreadable_image_of_an_unprepared_dataset_names_its_row_and_dataset(tmp_path, caplog):
    data = raw_dataset().cast_column("image", datasets.Image(decode=False))
    data = data.map(lambda row, i: {"image": {"bytes": b"not an image", "path": None}} if i == 1 else row,
                    with_indices=True)
    run = InstructBlipTrainer(model=tiny.model(), args=arguments(tmp_path, max_steps=1),
                              processing_class=tiny.processor(), train_datasets={"mine": data})
    with caplog.at_level("WARNING"):
        rows = [run.train_dataset[i] for i in range(3)]
    assert [row["image"] is None for row in rows] == [False, True, False]
    assert "Skipping row 1 of dataset 'mine': unreadable image" in caplog.text
