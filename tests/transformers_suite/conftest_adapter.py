"""Pytest plugin for transformers' own InstructBLIP tests: runs them on the built-in or on hf_instructblip.

Loaded with `-p conftest_adapter` by `run.py`. With `INSTRUCTBLIP_UNDER_TEST=ours`, transformers' InstructBLIP
classes are replaced by this package's before the test module imports them, so the unchanged test code builds,
saves, loads and generates with hf_instructblip. transformers' bare `InstructBlipModel` (no LM head) has no
counterpart here: where a test class lists it, only the model with the head is tested.
"""

import os

import transformers


UNDER_TEST = os.environ.get("INSTRUCTBLIP_UNDER_TEST", "builtin")
REPLACED = (
    "InstructBlipConfig",
    "InstructBlipVisionConfig",
    "InstructBlipQFormerConfig",
    "InstructBlipForConditionalGeneration",
    "InstructBlipVisionModel",
    "InstructBlipQFormerModel",
)

if UNDER_TEST == "ours":
    import hf_instructblip
    from transformers.models.instructblip import configuration_instructblip, modeling_instructblip

    # `from transformers import X` resolves X lazily in the module that defines it: replace it there.
    replacements = {name: getattr(hf_instructblip, name) for name in REPLACED}
    replacements["InstructBlipModel"] = hf_instructblip.InstructBlipForConditionalGeneration
    for name, replacement in replacements.items():
        module = configuration_instructblip if name.endswith("Config") else modeling_instructblip
        setattr(module, name, replacement)
        transformers.__dict__.pop(name, None)
elif UNDER_TEST != "builtin":
    raise ValueError(f"INSTRUCTBLIP_UNDER_TEST must be 'builtin' or 'ours', got {UNDER_TEST!r}.")


def pytest_collection_modifyitems(items):
    if UNDER_TEST != "ours":
        return
    for item in items:
        cls = getattr(item, "cls", None)
        classes = getattr(cls, "all_model_classes", None)
        if isinstance(classes, tuple):  # InstructBlipModel stands for ours with the head: test that class once
            cls.all_model_classes = tuple(dict.fromkeys(classes))
