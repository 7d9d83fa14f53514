"""Caption metrics without Java against pycocoevalcap (Java PTBTokenizer + Cider), side by side, in one run.

    python benchmarks/bench_caption_metrics.py --images 5000 --references 5

Synthetic COCO-like captions (the COCO Karpathy test split has 5000 images × 5 references). Prints the wall time of
each step for both, their ratio, whether the tokens are identical and the CIDEr-D difference. Needs `java` and
pycocoevalcap (the dev extra) for the reference column.
"""

import argparse
import random
import shutil
import time

from hf_instructblip.evaluation import ptb_tokenizer
from hf_instructblip.evaluation.metrics import cider_d, ptb_tokenize

SUBJECTS = ["A man", "a woman", "Two dogs", "A group of people", "The cat", "a young boy", "An elephant",
            "A red double-decker bus", "Three giraffes", "A plate of food", "A skateboarder", "a little girl",
            "A black-and-white photo of a train", "The kitchen", "A baseball player", "Some kids"]
VERBS = ["is sitting on", "are standing near", "riding", "holds", "looking at", "walks across", "is eating",
         "parked next to", "playing with", "flying over", "stands in front of", "lying on", "next to"]
OBJECTS = ["a bench.", "the beach", "a surfboard in the ocean.", "a pizza with cheese and pepperoni.",
           "a laptop computer", "the street, near a building.", "a kite!", "some grass (green).", "a stop sign",
           "the tennis court", "a large clock tower", "two plates of food...", "a frisbee in the park.",
           "the U.S. Capitol.", "a hot dog and fries", "his cell phone", "a 'no parking' sign.",
           "a \"Welcome\" banner.", "their owner's car", "a wooden table; it's old."]


def caption(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--references", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    predictions = [caption(rng) for _ in range(args.images)]
    references = [[caption(rng) for _ in range(args.references)] for _ in range(args.images)]
    texts = predictions + [r for refs in references for r in refs]

    # These synthetic captions repeat (as model predictions do); real references mostly do not, so the tokenizer
    # is also timed with its per-caption cache bypassed.
    _, uncached_s = timed(lambda: [ptb_tokenizer._tokenize_one.__wrapped__(text) for text in texts])
    ptb_tokenizer._tokenize_one.cache_clear()
    ours_tokens, ours_tokenize_s = timed(ptb_tokenize, texts)
    ptb_tokenizer._tokenize_one.cache_clear()
    ours_cider, ours_cider_s = timed(cider_d, predictions, references)

    rows = [("captions tokenized (distinct)", f"{len(texts):,} ({len(set(texts)):,})", "", "")]
    if shutil.which("java") is None:
        rows.append(("pycocoevalcap", "skipped: java is not installed", "", ""))
    else:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # One caption per key, so that each line is one caption as in ptb_tokenize.
        lines = {i: [{"caption": t}] for i, t in enumerate(texts)}
        java, java_tokenize_s = timed(PTBTokenizer().tokenize, lines)
        same = sum(java[i][0] == ours_tokens[i] for i in range(len(texts)))

        def java_cider():
            tokenizer = PTBTokenizer()
            gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
            res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
            return Cider().compute_score(gts, res)[0]

        java_score, java_cider_s = timed(java_cider)
        rows += [
            ("PTB tokenization (s)", f"{ours_tokenize_s:.2f}", f"{java_tokenize_s:.2f}",
             f"{java_tokenize_s / ours_tokenize_s:.2f}x"),
            ("PTB tokenization, cache bypassed (s)", f"{uncached_s:.2f}", f"{java_tokenize_s:.2f}",
             f"{java_tokenize_s / uncached_s:.2f}x"),
            ("identical token strings", f"{same:,} / {len(texts):,}", "", ""),
            ("CIDEr-D, raw strings end to end (s)", f"{ours_cider_s:.2f}", f"{java_cider_s:.2f}",
             f"{java_cider_s / ours_cider_s:.2f}x"),
            ("CIDEr-D", f"{ours_cider:.8f}", f"{java_score:.8f}", f"diff {abs(ours_cider - java_score):.1e}"),
        ]
    print("| quantity | hf_instructblip (Python) | pycocoevalcap (Java) | Java time / ours |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
