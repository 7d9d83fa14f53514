"""Every metric loads with `evaluate.load(<local path>)` offline and computes what the pure function computes."""

import os

import evaluate
import pytest

from hf_instructblip.evaluation import metrics
from hf_instructblip.evaluation.evaluate_modules import MODULE_NAMES, evaluate_module_path

# name → keyword inputs, in the order `compute` takes them (the function's parameter names).
INPUTS = {
    "vqa_accuracy": dict(predictions=["Two", "red", "a cat"], references=[["2"] * 10, ["red"] * 2 + ["blue"] * 8,
                                                                          ["cat", "dog"] * 5]),
    "exact_match": dict(predictions=["Two", "the cat", "dog"], references=[["2"], ["dog", "cat"], ["cat"]]),
    "ivqa_accuracy": dict(predictions=["dog", "cat"],
                          references=[["dog", "dog", "puppy", "pet", "dog"], ["cat"] + ["kitten"] * 4]),
    "cider_d": dict(predictions=["a dog runs on the grass", "a cat sleeps", "two men ride horses"],
                    references=[["A dog runs on grass.", "a dog is running"], ["A cat is sleeping on a bed."],
                                ["Two men riding horses.", "people on horses"]]),
    "multiple_choice_accuracy": dict(predictions=[0, 2, 1, 3], references=[0, 1, 1, 3]),
    "mean_reciprocal_rank": dict(ranks=[1, 2, 4, 100]),
    "roc_auc": dict(scores=[0.1, 0.4, 0.35, 0.8, 0.5], labels=[0, 0, 1, 1, 1]),
}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_every_metric_has_a_module_and_test_inputs():
    assert set(MODULE_NAMES) == set(INPUTS)
    with pytest.raises(ValueError, match="choose one of"):
        evaluate_module_path("bleu")


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_evaluate_load_of_the_local_script_computes_the_pure_function(offline, name):
    module = evaluate.load(evaluate_module_path(name))
    expected = getattr(metrics, name)(**INPUTS[name])
    assert module.compute(**INPUTS[name]) == {name: pytest.approx(expected, abs=1e-12)}
    # Batches accumulate as in any `evaluate` loop.
    half = {key: values[:2] for key, values in INPUTS[name].items()}
    rest = {key: values[2:] for key, values in INPUTS[name].items()}
    for batch in (half, rest):
        module.add_batch(**batch)
    assert module.compute() == {name: pytest.approx(expected, abs=1e-12)}


def test_evaluate_load_takes_the_folder_too(offline):
    folder = os.path.dirname(evaluate_module_path("exact_match"))
    module = evaluate.load(folder)
    assert module.compute(predictions=["Two"], references=["2"]) == {"exact_match": 1.0}
    assert module.description.startswith("Share of predictions equal to their reference")
