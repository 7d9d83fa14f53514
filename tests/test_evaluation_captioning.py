"""`ptb_tokenize` and `cider_d` against pycocoevalcap's Java PTBTokenizer and its Cider (the test-only oracle).

The Java tests share one JVM call (module fixture) and skip where `java` or pycocoevalcap is missing.
"""

import random
import shutil

import pytest
from ptb_cases import CASES, coco_like

from hf_instructblip.evaluation.metrics import cider_d, ptb_tokenize

# Each CIDEr scenario: (predictions, references) on raw strings.
_rng = random.Random(0)
_CAPTIONS = coco_like(200, seed=1)
CIDER_SCENARIOS = {
    "coco-like": (
        _rng.sample(_CAPTIONS, 60),
        [_rng.sample(_CAPTIONS, _rng.randint(1, 6)) for _ in range(60)],
    ),
    "exact hits, repetitions, empty and one-word predictions": (
        ["a dog runs on the grass", "dog dog dog dog dog", "", "cat", "A cat is sleeping on a bed.",
         "the the the the", "Two men riding horses!"],
        [["A dog runs on grass.", "a dog is running"], ["a dog"], ["a bird flies"], ["a cat"],
         ["A cat is sleeping on a bed."], ["the end"], ["Two men riding horses.", "people on horses", "horses"]],
    ),
    "tricky strings": (CASES[:40], [[CASES[40 + i], CASES[80 + i]] for i in range(40)]),
}


@pytest.fixture(scope="module")
def java_ptb():
    """pycocoevalcap's tokenizer, run once over every caption these tests need: caption → tokens."""
    if shutil.which("java") is None:
        pytest.skip("java is not installed: the Stanford PTBTokenizer oracle needs it")
    tokenizer = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer", reason="pycocoevalcap (dev extra) missing")
    scenario_captions = [caption for predictions, references in CIDER_SCENARIOS.values()
                         for caption in [*predictions, *sum(references, [])]]
    captions = list(dict.fromkeys(["he is I.", *CASES, *scenario_captions]))
    # A neutral line after each caption: the lexer's look-ahead would otherwise read into the next caption.
    lines = {}
    for index, caption in enumerate(captions):
        lines[2 * index] = [{"caption": caption}]
        lines[2 * index + 1] = [{"caption": "x"}]
    tokenized = tokenizer.PTBTokenizer().tokenize(lines)
    return {caption: tokenized[2 * index][0] for index, caption in enumerate(captions)}


def test_ptb_tokenize_gives_the_java_tokenizer_s_tokens_on_every_case(java_ptb):
    ours = ptb_tokenize(CASES)
    differences = [(case, java_ptb[case], mine) for case, mine in zip(CASES, ours) if java_ptb[case] != mine]
    assert not differences, f"{len(differences)} of {len(CASES)} differ, e.g. (case, java, ours): {differences[:5]}"


@pytest.mark.parametrize("scenario", list(CIDER_SCENARIOS))
def test_cider_d_equals_pycocoevalcap_on_raw_strings(java_ptb, scenario):
    from pycocoevalcap.cider.cider import Cider

    predictions, references = CIDER_SCENARIOS[scenario]
    gts = {i: [java_ptb[r] for r in refs] for i, refs in enumerate(references)}
    res = {i: [java_ptb[p]] for i, p in enumerate(predictions)}
    expected, _ = Cider().compute_score(gts, res)
    assert cider_d(predictions, references) == pytest.approx(expected, abs=1e-6)


def test_known_difference_the_java_lexer_reads_into_the_next_caption(java_ptb):
    """Documented in ptb_tokenizer: "I." at a caption's end before a caption starting with "The" (one of ~40 words)
    loses its period in pycocoevalcap's one-file run; each caption here is tokenized on its own."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({0: [{"caption": "he is I."}], 1: [{"caption": "The end"}]})
    assert java[0] == ["he is i"] and java_ptb["he is I."] == "he is i."
    assert ptb_tokenize(["he is I."]) == ["he is i."]


def test_ptb_tokenize_examples_without_java():
    # What the Java tokenizer gives (checked above); brackets survive lower-cased, as in every published COCO score.
    captions = ["A man's \"big\" dog can't stop... (really)", "I'm gonna eat ½ a pie.", "U.S. e.g. Mr. Smith"]
    assert ptb_tokenize(captions) == [
        "a man 's big dog ca n't stop -lrb- really -rrb-", "i 'm gon na eat 1/2 a pie", "u.s. e.g. mr. smith"]
    assert ptb_tokenize(["", "...", "😀"]) == ["", "", ""]
    with pytest.raises(TypeError, match="list of strings"):
        ptb_tokenize("a caption")


def test_cider_d_exact_values_and_quirks():
    # Two examples, each prediction equal to its only reference, no shared n-gram: idf = log 2 for all; the cosine is
    # 1 for unigrams and bigrams, 0 for the absent 3- and 4-grams: 10 × (1 + 1 + 0 + 0) / 4 = 5.
    assert cider_d(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx(5.0)
    # One example: idf = log(1 / 1) = 0 for every n-gram, so CIDEr-D is 0 whatever the caption.
    assert cider_d(["a dog"], [["a dog"]]) == 0.0
    with pytest.raises(ValueError, match=r"references\[1\] has 0 answer"):
        cider_d(["a", "b"], [["a"], []])
