"""The metrics as `evaluate` modules, one script per metric, each a thin declaration over a pure function.

```python
import evaluate
from hf_instructblip.evaluation.evaluate_modules import evaluate_module_path

vqa = evaluate.load(evaluate_module_path("vqa_accuracy"))   # or the folder's path; works offline
vqa.add_batch(predictions=["two"], references=[["2"] * 10])
vqa.compute()  # {'vqa_accuracy': 1.0}
```

The numbers are those of `hf_instructblip.evaluation.metrics`; a script only names its inputs (as `datasets`
features, named like the function's parameters) and returns `{metric name: value}`.
"""

import os

import datasets
import evaluate

MODULE_NAMES = (
    "cider_d", "exact_match", "ivqa_accuracy", "mean_reciprocal_rank", "multiple_choice_accuracy", "roc_auc",
    "vqa_accuracy",
)
STRING = datasets.Value("string")
STRINGS = datasets.Sequence(datasets.Value("string"))


def evaluate_module_path(name: str) -> str:
    """The script `evaluate.load` takes for metric `name` (one of `MODULE_NAMES`)."""
    if name not in MODULE_NAMES:
        raise ValueError(f"No evaluate module {name!r}; choose one of {', '.join(MODULE_NAMES)}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name, f"{name}.py")


class MetricOverFunction(evaluate.Metric):
    """`evaluate.Metric` computing `function(**inputs)`; subclasses set `function`, `features` and `citation`.

    Scripts import this module, not this class: `evaluate` takes the first metric class in a script's namespace.
    """

    function = None
    features: datasets.Features | list[datasets.Features]
    citation = ""

    def _info(self) -> evaluate.MetricInfo:
        summary, _, details = self.function.__doc__.partition("\n\n")
        return evaluate.MetricInfo(
            description=" ".join(summary.split()),
            citation=self.citation,
            inputs_description=details,
            features=self.features,
        )

    def _compute(self, **inputs) -> dict[str, float]:
        return {self.function.__name__: self.function(**inputs)}
