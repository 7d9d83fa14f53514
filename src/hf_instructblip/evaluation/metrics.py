"""Metrics of the zero-shot protocol: pure functions over Python lists, each returning a float.

Accuracies, MRR and AUC are proportions in [0, 1]; [`cider_d`] keeps pycocoevalcap's ×10 scale. The paper's tables
show all of them ×100: 0.452 MRR is 45.2, 1.2 CIDEr-D is 120.

| metric | tasks | source of truth |
|---|---|---|
| [`vqa_accuracy`] | TextVQA, VizWiz (VQAv2, OK-VQA held in) | the official VQA evaluation script |
| [`exact_match`] | GQA, VSR, IconQA (generated answers) | string equality after [`normalize_answer`] |
| [`ivqa_accuracy`] | iVQA | Just Ask (Yang et al., 2021): min(1, matches / 2) over 5 answers |
| [`multiple_choice_accuracy`] | ranked tasks (ScienceQA, IconQA, MSVD-QA, MSRVTT-QA) | equality of the chosen option |
| [`mean_reciprocal_rank`] | VisDial | mean of 1 / rank of the right answer among the 100 candidates |
| [`roc_auc`] | HatefulMemes | scikit-learn's `roc_auc_score` |
| [`cider_d`] | NoCaps, Flickr30K (COCO Caption held in) | pycocoevalcap's `PTBTokenizer` + `Cider` |

Nothing here imports torch or the model: ranked choice scores, metrics compare.
"""

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .ptb_tokenizer import ptb_tokenize

# --- the official VQA answer normalisation (VQA `vqaEval.py`, as vendored by LAVIS) ----------------------------------

# Removed outright when next to a space or when the text holds a digit-comma-digit ("1,000"), else replaced by a
# space ("black/white" → "black white"). The apostrophe is not in the list, so contractions survive to be mapped.
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The script's pattern reads "(?!<=\d)": a typo for the look-behind "(?<!\d)" that makes it a look-ahead which
# always succeeds, so every period not followed by a digit goes ("3.5" stays, "5." and "U.S." lose theirs).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The script passes `re.UNICODE` (= 32) where `sub` takes its `count`: at most 32 periods are removed.
_PERIODS_REMOVED_AT_MOST = int(re.UNICODE)
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# Apostrophe-less spelling → the script's spelling. Its capitalised keys ("Im", "Ive", "Id've", "I'dve") are left out:
# they are looked up after lower-casing and can never match. "somebody'd" → "somebodyd" is the script's own (reversed)
# entry, kept because it changes answers.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    remove_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    stripped = text
    for mark in _PUNCTUATION:
        # Tested on the input text, not on the text stripped so far, as the script does.
        next_to_space = f"{mark} " in text or f" {mark}" in text
        stripped = stripped.replace(mark, "" if remove_all or next_to_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", stripped, count=_PERIODS_REMOVED_AT_MOST)


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation, quirks included.

    Punctuation is removed or turned into spaces, periods not followed by a digit are dropped, the text is
    lower-cased and split on whitespace, number words up to ten become digits ("none" → "0"), articles go, and
    apostrophe-less contractions get their apostrophe back.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("black/white")
    'black white'
    >>> normalize_answer("It's the U.S. flag!")
    "it's us flag"
    >>> normalize_answer("1,000")
    '1000'
    >>> normalize_answer("dont know")
    "don't know"
    """
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


# --- accuracies over answers ----------------------------------------------------------------------------------------


def _check_aligned(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) must have one entry per example."
        )
    if len(predictions) == 0:
        raise ValueError("predictions and references are empty: a metric over no examples is undefined.")


def _answer_lists(references: Sequence, minimum: int = 1, fix: str = "") -> list[list[str]]:
    """Each example's reference answers as a list, rejecting lists too short to score."""
    lists = [[answers] if isinstance(answers, str) else list(answers) for answers in references]
    for index, answers in enumerate(lists):
        if len(answers) < minimum:
            raise ValueError(
                f"references[{index}] has {len(answers)} answer(s), fewer than the {minimum} this metric needs: "
                f"{fix if answers else 'count examples without references apart'}."
            )
    return lists


def exact_match(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Share of predictions equal to their reference after [`normalize_answer`] on both sides.

    `references[i]` is one answer or a list of acceptable answers (any match counts).

    >>> exact_match(["Two", "a cat"], ["2", ["dog", "cat"]])
    1.0
    """
    _check_aligned(predictions, references)
    hits = [
        normalize_answer(prediction) in {normalize_answer(answer) for answer in answers}
        for prediction, answers in zip(predictions, _answer_lists(references))
    ]
    return sum(hits) / len(hits)


def _leave_one_out_accuracy(prediction: str, answers: list[str]) -> float:
    """Mean over the n leave-one-out subsets of min(1, matches in the other n - 1 answers / 3)."""
    matches = sum(answer == prediction for answer in answers)
    # Leaving out a matching answer leaves matches - 1 of them; leaving out another one leaves all.
    total = matches * min(1.0, (matches - 1) / 3) + (len(answers) - matches) * min(1.0, matches / 3)
    return total / len(answers)


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The official VQA accuracy: per question, min(1, #humans who gave the answer / 3), averaged over the 10
    leave-one-out subsets of the 10 human answers, then over questions.

    Predictions and reference answers both go through [`normalize_answer`]. The VQA script normalises references
    only by punctuation and only when they disagree, because VQAv2's released answers are normalised already; for
    those the two agree, and TextVQA's evaluator normalises references fully, as here. The leave-one-out removes one
    answer by position (the script compares answer records, which differ by id), so 3 identical matching answers in
    10 give min(1, 2/3) × 3/10 + 1 × 7/10 = 0.9.

    Other list lengths n ≥ 2 use the same rule over their n subsets of n - 1 (OK-VQA's 5 answers are released
    doubled to 10); a single answer has no leave-one-out and raises: score such a task with [`exact_match`].

    >>> vqa_accuracy(["two"], [["2"] * 3 + ["3"] * 7])
    0.9
    """
    _check_aligned(predictions, references)
    scores = [
        _leave_one_out_accuracy(normalize_answer(prediction), [normalize_answer(answer) for answer in answers])
        for prediction, answers in zip(
            predictions, _answer_lists(references, minimum=2, fix="score single-answer tasks with exact_match")
        )
    ]
    return sum(scores) / len(scores)


def ivqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """iVQA accuracy: per question, min(1, #annotators who gave the answer / 2) over its 5 answers, then the mean.

    The definition of Just Ask (Yang et al., ICCV 2021), which introduced iVQA: an answer given by two of the five
    annotators is fully right. No leave-one-out. Both sides go through [`normalize_answer`] (iVQA's answers are
    short phrases; a generated prediction needs the same cleaning as in VQA).

    >>> ivqa_accuracy(["dog", "cat"], [["dog", "dog", "puppy", "dog", "pet"], ["cat", "kitten", "pet", "pet", "pet"]])
    0.75
    """
    _check_aligned(predictions, references)
    scores = []
    for prediction, answers in zip(predictions, _answer_lists(references)):
        prediction = normalize_answer(prediction)
        scores.append(min(1.0, sum(normalize_answer(answer) == prediction for answer in answers) / 2))
    return sum(scores) / len(scores)


# --- captioning: CIDEr-D as pycocoevalcap computes it -------------------------------------------------------------

CIDER_MAX_N = 4  # n-grams of 1 to 4 words
CIDER_SIGMA = 6.0  # width of the Gaussian length penalty


def _ngram_counts(tokens: list[str]) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, CIDER_MAX_N + 1) for i in range(len(tokens) - n + 1))


def _tf_idf(counts: Counter, document_frequency: Counter, log_corpus_size: float):
    """Per n: the tf-idf vector and its norm, and the caption's "length" (see [`cider_d`])."""
    vectors = [{} for _ in range(CIDER_MAX_N)]
    for ngram, term_frequency in counts.items():
        idf = log_corpus_size - math.log(max(1.0, document_frequency[ngram]))
        vectors[len(ngram) - 1][ngram] = term_frequency * idf
    norms = [math.sqrt(sum(weight * weight for weight in vector.values())) for vector in vectors]
    # pycocoevalcap counts the term frequencies of n-gram index 1, i.e. of bigrams: words - 1 (0 for one word).
    length = sum(count for ngram, count in counts.items() if len(ngram) == 2)
    return vectors, norms, length


def _cider_d_per_example(candidates: list[list[str]], references: list[list[list[str]]]) -> list[float]:
    reference_counts = [[_ngram_counts(reference) for reference in refs] for refs in references]
    # Document frequency: in how many examples' reference sets an n-gram occurs; idf = log(#examples / df).
    document_frequency = Counter(ngram for counts in reference_counts for ngram in set().union(*counts))
    log_corpus_size = math.log(len(references))
    scores = []
    for candidate, counts_per_reference in zip(candidates, reference_counts):
        vectors, norms, length = _tf_idf(_ngram_counts(candidate), document_frequency, log_corpus_size)
        total = 0.0
        for reference_counts_one in counts_per_reference:
            ref_vectors, ref_norms, ref_length = _tf_idf(reference_counts_one, document_frequency, log_corpus_size)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(CIDER_MAX_N):
                # CIDEr-D clips the candidate's weight at the reference's ("gaming" by repetition).
                dot = sum(min(weight, ref_vectors[n].get(ngram, 0.0)) * ref_vectors[n].get(ngram, 0.0)
                          for ngram, weight in vectors[n].items())
                if norms[n] != 0 and ref_norms[n] != 0:
                    dot /= norms[n] * ref_norms[n]
                total += dot * penalty
        scores.append(10.0 * total / CIDER_MAX_N / len(counts_per_reference))
    return scores


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D (Vedantam et al., 2015) exactly as pycocoevalcap's `Cider` scores raw captions after `PTBTokenizer`.

    Both sides go through [`ptb_tokenize`]. Per example, for n = 1..4: the cosine of tf-idf n-gram vectors, the
    candidate's weights clipped at the reference's, times exp(-(l_c - l_r)² / (2·6²)); averaged over n and over the
    references, times 10. The mean over examples is returned: 1.2 here is 120 in the paper's tables.

    pycocoevalcap's quirks, kept: the idf comes from the evaluated references themselves (log(#examples / df)), so
    scores depend on the whole set and a set of one example scores 0; the "length" l in the penalty counts bigrams
    (words - 1), not words; n-grams absent from every reference get idf log(#examples).

    >>> predictions = ["a dog runs on the grass", "a cat sleeps", "two men ride horses"]
    >>> references = [["A dog runs on grass.", "a dog is running"], ["A cat is sleeping on a bed."],
    ...               ["Two men riding horses.", "people on horses"]]
    >>> round(cider_d(predictions, references), 6)  # pycocoevalcap: 2.378395 (a tiny corpus: large idf weights)
    2.378395
    """
    _check_aligned(predictions, references)
    reference_lists = _answer_lists(references)
    tokenized = ptb_tokenize([*predictions, *(reference for refs in reference_lists for reference in refs)])
    candidates = [caption.split() for caption in tokenized[: len(predictions)]]
    flat_references = iter(tokenized[len(predictions) :])
    grouped = [[next(flat_references).split() for _ in refs] for refs in reference_lists]
    scores = _cider_d_per_example(candidates, grouped)
    return sum(scores) / len(scores)


# --- ranked tasks -----------------------------------------------------------------------------------------------


def multiple_choice_accuracy(predictions: Sequence, references: Sequence) -> float:
    """Share of examples whose chosen option (an index or a label) equals the right one; no normalisation.

    >>> multiple_choice_accuracy([0, 2, 1], [0, 1, 1])
    0.6666666666666666
    """
    _check_aligned(predictions, references)
    return sum(prediction == reference for prediction, reference in zip(predictions, references)) / len(predictions)


def mean_reciprocal_rank(ranks: Sequence[int]) -> float:
    """Mean of 1 / rank, ranks 1-based (VisDial: the right answer's rank among the 100 candidates).

    >>> mean_reciprocal_rank([1, 2, 4])
    0.5833333333333334
    """
    if len(ranks) == 0:
        raise ValueError("ranks is empty: a metric over no examples is undefined.")
    for index, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"ranks[{index}] is {rank!r}; ranks are 1-based integers (1 = ranked first).")
    return sum(1 / rank for rank in ranks) / len(ranks)


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of `scores` (higher = more likely positive) against binary `labels`.

    scikit-learn's `roc_auc_score` (ties count one half), the implementation the Hateful Memes challenge scored with.
    Needs both classes among the labels.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    from sklearn.metrics import roc_auc_score

    _check_aligned(scores, labels)
    if set(labels) - {0, 1}:
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(labels) - {0, 1})!r} among them.")
    if len(set(labels)) < 2:
        raise ValueError(f"labels are all {labels[0]}: the ROC AUC needs positive and negative examples.")
    return float(roc_auc_score(labels, scores))


# --- training-time answer metrics (teacher-forced) -------------------------------------------------------------------


def answer_metrics(eval_prediction, *, ignore_index: int = -100) -> dict[str, float]:
    """Teacher-forced answer metrics over the loss positions (answer tokens and `</s>`), as `compute_metrics`.

    `eval_prediction` is `Trainer`'s `EvalPrediction`: greedy token ids aligned with the labels (see
    `training.trainer.predicted_answer_tokens`) and the labels, `ignore_index` (PyTorch's cross-entropy default,
    which the collator writes) where there is no loss.

    `answer_token_accuracy`: the share of those tokens predicted right. `answer_exact_match`: the share of examples
    with all of them right, i.e. whose answer greedy decoding would reproduce exactly; examples without answer tokens
    are not counted.
    """
    predictions, labels = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
    scored = labels != ignore_index
    right = (predictions == labels) & scored
    has_answer = scored.any(axis=1)
    return {
        "answer_token_accuracy": float(right.sum() / max(scored.sum(), 1)),
        "answer_exact_match": float((right.sum(axis=1) == scored.sum(axis=1))[has_answer].mean()),
    }


__all__ = [
    "answer_metrics",
    "cider_d",
    "exact_match",
    "ivqa_accuracy",
    "mean_reciprocal_rank",
    "multiple_choice_accuracy",
    "normalize_answer",
    "ptb_tokenize",
    "roc_auc",
    "vqa_accuracy",
]
