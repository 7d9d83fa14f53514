"""Mixture weights and the mixture sampler: exact weights, frequencies, determinism, distributed shares, resume."""

import json
from collections import Counter

import datasets
import numpy as np
import pytest
from launch import run_script

from hf_instructblip.training.mixture import MixtureSampler, interleave_mixture, mixture_weights

SIZES = {"coco_caption": 82_783, "vqav2": 82_774, "okvqa": 9_009, "aokvqa": 17_056, "ocrvqa": 800_000}


def test_sqrt_weights_exact():
    assert mixture_weights({"a": 100, "b": 400}) == {"a": 10 / 30, "b": 20 / 30}
    assert mixture_weights({"a": 100, "b": 400}, alpha=1.0) == {"a": 0.2, "b": 0.8}
    assert mixture_weights({"a": 100, "b": 400}, alpha=0.0) == {"a": 0.5, "b": 0.5}
    assert mixture_weights({"a": 100, "b": 400}, multipliers={"a": 2.0}) == {"a": 0.5, "b": 0.5}
    assert mixture_weights({"a": 100, "b": 400}, multipliers={"b": 0.0}) == {"a": 1.0, "b": 0.0}
    assert list(mixture_weights({"z": 1, "a": 1})) == ["z", "a"]  # concatenation order is kept


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": {}}, "at least one"),
        ({"sizes": {"a": 0}}, "Size of dataset 'a'"),
        ({"sizes": {"a": 2.5}}, "Size of dataset 'a'"),
        ({"sizes": {"a": 1}, "alpha": -1.0}, "alpha"),
        ({"sizes": {"a": 1}, "multipliers": {"b": 2.0}}, r"unknown datasets \['b'\]"),
        ({"sizes": {"a": 1}, "multipliers": {"a": -1.0}}, "Multiplier of dataset 'a'"),
        ({"sizes": {"a": 1}, "multipliers": {"a": 0.0}}, "All multipliers are 0"),
    ],
)
def test_bad_weights_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mixture_weights(**kwargs)


def test_sampler_frequencies_match_weights_chi_square():
    sampler = MixtureSampler(SIZES, multipliers={"okvqa": 2.0, "aokvqa": 0.5}, num_samples=60_000, seed=1234)
    boundaries = np.cumsum(list(SIZES.values()))
    counts = np.bincount(np.searchsorted(boundaries, list(sampler), side="right"), minlength=len(SIZES))
    expected = np.array(list(sampler.weights.values())) * sampler.num_samples
    statistic = ((counts - expected) ** 2 / expected).sum()
    assert statistic < 13.28  # chi-square critical value for 4 degrees of freedom at p = 0.01
    # The sqrt rule is far from proportional sampling: OK-VQA gets ~5% of draws, not ~1%.
    assert counts[2] / sampler.num_samples > 0.04


def test_sampler_is_deterministic_per_seed_and_epoch():
    a = MixtureSampler({"a": 50, "b": 20}, seed=0)
    first = list(a)
    assert first == list(MixtureSampler({"a": 50, "b": 20}, seed=0))
    assert first != list(MixtureSampler({"a": 50, "b": 20}, seed=1))
    a.set_epoch(1)
    assert list(a) != first
    assert len(first) == len(a) == 70


def test_each_example_seen_once_before_repeats():
    sampler = MixtureSampler({"a": 30, "b": 7}, num_samples=300, seed=5)
    b_draws = [i - 30 for i in sampler if i >= 30]
    for start in range(0, len(b_draws) - 7, 7):
        assert sorted(b_draws[start : start + 7]) == list(range(7))


def test_resume_check_refuses_a_changed_mixture():
    sampler = MixtureSampler(SIZES, seed=3)
    state = json.loads(json.dumps(sampler.state_dict()))
    MixtureSampler(SIZES, seed=3).check_resumable_from(state)
    with pytest.raises(ValueError, match="seed differ"):
        MixtureSampler(SIZES, seed=4).check_resumable_from(state)
    with pytest.raises(ValueError, match="weights differ"):
        MixtureSampler(SIZES, seed=3, multipliers={"okvqa": 3.0}).check_resumable_from(state)


def test_streaming_mixture_uses_the_same_weights():
    def stream(tag, n):
        return datasets.Dataset.from_dict({"tag": [tag] * n}).to_iterable_dataset()

    sizes = {"big": 3600, "small": 400}
    mixed = interleave_mixture({"big": stream("big", 3600), "small": stream("small", 400)}, sizes, seed=0)
    tags = [row["tag"] for _, row in zip(range(4000), mixed)]
    share = Counter(tags)["small"] / len(tags)
    assert abs(share - mixture_weights(sizes)["small"]) < 0.03  # 0.25, not 0.1
    with pytest.raises(ValueError, match="same datasets"):
        interleave_mixture({"big": stream("big", 3)}, sizes)


def test_two_ranks_get_disjoint_shares_of_the_single_process_stream(tmp_path):
    run_script("mixture_ranks.py", str(tmp_path), processes=2, timeout=120)
    run_script("mixture_ranks.py", str(tmp_path), timeout=120)
    shares = [json.loads((tmp_path / f"rank{r}_of2.json").read_text()) for r in range(2)]
    stream = json.loads((tmp_path / "rank0_of1.json").read_text())
    assert not set(map(tuple, shares[0])) & set(map(tuple, shares[1]))  # batches hold distinct positions anyway
    flat = [[i for batch in share for i in batch] for share in shares]
    assert sorted(flat[0] + flat[1]) == sorted(i for batch in stream for i in batch)
    interleaved = [batch for pair in zip(*shares) for batch in pair]
    assert interleaved == stream  # rank r gets batches r, r + 2, ... of the one global stream


def test_concatenation_reads_batches_like_rows():
    from hf_instructblip.training.mixture import ConcatenatedDatasets

    a = datasets.Dataset.from_dict({"x": list(range(5))}).with_transform(lambda b: {"y": [v * 10 for v in b["x"]]})
    both = ConcatenatedDatasets([a, [{"y": -1}, {"y": -2}]])
    indices = [6, 0, 4, 5, 2, 2]
    assert both.__getitems__(indices) == [both[i] for i in indices] == [
        {"y": -2}, {"y": 0}, {"y": 40}, {"y": -1}, {"y": 20}, {"y": 20}]
