"""Evaluate filtered subsets of a predict run: keep the K best by each score, compare with random.

Three parts and the evaluation that runs them:

- ``selection``: which samples each method keeps (pure functions, typed ``Method`` records);
- ``measurement``: the package's Metrics against one reference set, torchmetrics' AUROC and Spearman;
- ``report``: ``evaluation.json``, Markdown and plots, shared with the demo;
- ``gate``: the real-vs-real noise floor, the gate and the verdicts (``heldout=``);
- ``evaluate``: ``Evaluation``, which loads a run and a reference set and runs the parts.
"""

from genunc_lightning.evaluation.evaluate import Evaluation, EvaluationError, load_run
from genunc_lightning.evaluation.measurement import auroc, spearman
from genunc_lightning.evaluation.report import markdown_table, result_rows
from genunc_lightning.evaluation.selection import (
    HIGHER_IS_BETTER,
    Method,
    class_balanced_keep,
    combined_ranks,
    keep_best,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "Evaluation",
    "EvaluationError",
    "Method",
    "auroc",
    "class_balanced_keep",
    "combined_ranks",
    "keep_best",
    "load_run",
    "markdown_table",
    "result_rows",
    "spearman",
]
