"""The digits experiment that can decide the paper's claim (docs/digits_experiment_rules.md).

``HeldOutEvaluation`` is the fixed evaluation: two feature spaces (a classifier the scorer never saw,
and label-free pixel PCA), the held-out reference, the real-vs-real noise floor at the experiment's
sizes, and the two failure types. ``score_samples`` draws one sweep point's samples with every score,
and ``HeldOutEvaluation.evaluate`` turns them into a report whose verdicts are computed from its numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from genunc_lightning.evaluation import HIGHER_IS_BETTER, Method, load_run
from genunc_lightning.evaluation.gate import judged_space, noise_floor, verdicts
from genunc_lightning.evaluation.measurement import ReferenceMeasure, auroc, network_outputs
from genunc_lightning.evaluation.selection import random_kept_sets
from genunc_lightning.experiments.runs import fit_posterior, load_adapter, scored_run
from genunc_lightning.metrics import functional as MF
from genunc_lightning.uncertainty.writer import TABLE_COLUMNS

SWEEP_TRAINING_STEPS = (150, 300, 600, 1500, 6000)
SWEEP_SAMPLER_STEPS = (5, 10, 50)
PRIMARY_SAMPLER_STEPS = 50
# Chosen by the rule of docs/digits_experiment_rules.md §10 from `make experiments` (docs/experiments_results.md).
PRIMARY_TRAINING_STEPS = 6000
UNCERTAINTY_SCORES = ("semantic", "semantic_paper", "pixel", "bayesdiff", "au")
OURS, PAPER = "semantic", "semantic_paper"


@dataclass
class ExperimentSizes:
    """The rules' sizes (§2, §5); tests use smaller ones."""

    samples: int = 300
    keep: int = 250
    reference: int = 400
    null_sets: int = 200
    floor_draws: int = 200
    kid_subsets: int = 10
    k: int = 3
    members: int = 5
    pca_components: int = 16
    off_manifold_quantile: float = 0.95


def unet_asset(training_steps: int) -> str:
    """The shipped file of the digits UNet after ``training_steps`` steps (`make assets`)."""
    return f"digits_unet_s{training_steps}.safetensors"


def digits_adapter(training_steps: int, sampler_steps: int = PRIMARY_SAMPLER_STEPS) -> Any:
    """The shipped digits UNet after ``training_steps`` steps, with DDIM at ``sampler_steps``."""
    from genunc_lightning.adapters import GaussianDiffusionAdapter
    from genunc_lightning.models import SmallUNet

    unet = SmallUNet(in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_classes=10)
    adapter = GaussianDiffusionAdapter(
        unet,
        "out.2",
        (1, 8, 8),
        num_classes=10,
        schedule="cosine",
        sampler="ddim",
        steps=sampler_steps,
        clip_denoised=True,
        image_range=(-1.0, 1.0),
    )
    return load_adapter(adapter, unet_asset(training_steps))


def images01(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [0, 1], labels) of a digits split."""
    from genunc_lightning.data import DigitsDataset

    data = DigitsDataset(split)
    return (data.images + 1) / 2, data.labels


def apply_network(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A network's outputs [N, D] on the experiment's images, in batches of 512 (float32, CPU)."""
    return network_outputs(network, images, batch_size=512)


class HeldOutEvaluation:
    """The experiment's fixed evaluation, built once and applied to every sweep point.

    Args:
        sizes: the experiment's sizes.
        evaluator: feature network of the ``classifier`` space (default: the shipped evaluator MLP).
        evaluator_classifier: its logits, for the off-class failures (default: the shipped MLP's head).
        scorer: the scorer's feature network, for realism and rarity (default: the shipped CNN).
        scorer_classifier: the scorer's logits, for its held-out accuracy (default: the shipped CNN's head).
        seed: seed of the floor's partitions, the null's kept sets and the KID subsets.
    """

    def __init__(
        self,
        sizes: ExperimentSizes | None = None,
        evaluator: torch.nn.Module | None = None,
        evaluator_classifier: torch.nn.Module | None = None,
        scorer: torch.nn.Module | None = None,
        scorer_classifier: torch.nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        from genunc_lightning.encoders import PixelPCA
        from genunc_lightning.experiments.digits import DigitsClassifier, DigitsFeatureEncoder

        self.sizes, self.seed = sizes or ExperimentSizes(), seed
        self.scorer = scorer if scorer is not None else DigitsFeatureEncoder("cnn")
        self.classifier = evaluator_classifier if evaluator_classifier is not None else DigitsClassifier("mlp")
        scorer_classifier = scorer_classifier if scorer_classifier is not None else DigitsClassifier("cnn")
        train, _ = images01("train")
        reference, reference_labels = images01("reference")
        if self.sizes.reference > len(reference):
            raise ValueError(
                f"reference = {self.sizes.reference}, but the reference split holds {len(reference)} digits."
            )
        calibration, calibration_labels = images01("calibration")
        if self.sizes.keep > len(calibration):
            raise ValueError(f"keep = {self.sizes.keep}, but the calibration split holds {len(calibration)} digits.")
        heldout = torch.cat([reference, calibration])
        heldout_labels = torch.cat([reference_labels, calibration_labels])
        self.spaces = {
            "classifier": evaluator if evaluator is not None else DigitsFeatureEncoder("mlp"),
            "pixel-pca": PixelPCA(train, self.sizes.pca_components),
        }
        s = self.sizes
        self.reference = {name: apply_network(net, reference[: s.reference]) for name, net in self.spaces.items()}
        # Real sets of the floor: the calibration digits' features in each space.
        self.calibration_features = {name: apply_network(net, calibration) for name, net in self.spaces.items()}
        self.floor = {
            name: {
                **noise_floor(self.reference[name], real, s.keep, s.floor_draws, s.k, s.kid_subsets, seed),
                "reference_size": s.reference,
                "kept_size": s.keep,
                "split": "calibration, against the fixed reference",
            }
            for name, real in self.calibration_features.items()
        }
        self.accuracy = {
            "scorer": (apply_network(scorer_classifier, heldout).argmax(1) == heldout_labels).double().mean().item(),
            "evaluator": (apply_network(self.classifier, heldout).argmax(1) == heldout_labels).double().mean().item(),
            "heldout_images": len(heldout),
        }
        # Off-manifold: farther from the reference than 95% of real held-out images (calibration) are.
        self.off_manifold_radius = torch.quantile(
            self._distance_to_reference(self.spaces["pixel-pca"](calibration)), s.off_manifold_quantile
        ).item()
        self.train_scorer_features = apply_network(self.scorer, train)
        self.train_scorer_radii = MF.knn_radii(self.train_scorer_features, s.k)

    def _distance_to_reference(self, pca_features: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(pca_features.double(), self.reference["pixel-pca"].double())
        return d.kthvalue(self.sizes.k, dim=1).values

    def failures(self, samples: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Which samples are off-manifold (pixel PCA) and off-class (the evaluator classifier)."""
        off_manifold = self._distance_to_reference(self.spaces["pixel-pca"](samples)) > self.off_manifold_radius
        return {"off_manifold": off_manifold, "off_class": apply_network(self.classifier, samples).argmax(1) != classes}

    def realism_columns(self, samples: torch.Tensor) -> dict[str, torch.Tensor]:
        """Realism and rarity in the scorer's features, against the training split (not the evaluation reference)."""
        fake, real, radii = apply_network(self.scorer, samples), self.train_scorer_features, self.train_scorer_radii
        return {
            "realism": MF.realism_score(real, fake, self.sizes.k, real_radii=radii),
            "rarity": MF.rarity_score(real, fake, self.sizes.k, real_radii=radii),
        }

    def methods(self, columns: dict[str, torch.Tensor]) -> list[Method]:
        """Every score present, realism and rarity, and each uncertainty score's rank sum with realism."""
        singles = [c for c in (*UNCERTAINTY_SCORES, "realism", "rarity") if c in columns]
        return [Method((c,)) for c in singles] + [Method((c, "realism")) for c in UNCERTAINTY_SCORES if c in columns]

    def evaluate(self, samples: torch.Tensor, classes: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict:
        """The report of one set of N scored samples: floor, null, gate, every method, failures, verdicts."""
        s = self.sizes
        n = len(samples)
        if n < s.keep:
            raise ValueError(f"{n} samples cannot give kept sets of {s.keep}: draw more samples.")
        failures = self.failures(samples, classes)
        columns = {**scores, **self.realism_columns(samples)}
        methods = self.methods(columns)
        kept = {m.label: m.keep(columns, classes, s.keep) for m in methods}
        null_sets = random_kept_sets(n, s.keep, s.null_sets, torch.Generator().manual_seed(self.seed))
        spaces = {}
        for name, net in self.spaces.items():
            measure = ReferenceMeasure(
                self.reference[name], apply_network(net, samples), s.k, failures, s.kid_subsets, s.keep, seed=self.seed
            )
            methods_measured = {m: measure(i) for m, i in kept.items()}
            space = judged_space(self.floor[name], [measure(i) for i in null_sets], methods_measured)
            space["all samples"] = measure(torch.arange(n))
            spaces[name] = space
        singles = [m.columns[0] for m in methods if not m.is_combination]
        report = {
            "sizes": {**asdict(s), "samples": n},
            "accuracy": self.accuracy,
            "failure_rates": {f: mask.double().mean().item() for f, mask in failures.items()},
            "off_manifold_radius": self.off_manifold_radius,
            "auroc": {
                f: {c: auroc(-columns[c] if c in HIGHER_IS_BETTER else columns[c], mask) for c in singles}
                for f, mask in failures.items()
            },
            "spaces": spaces,
        }
        report["verdicts"] = verdicts(spaces)
        return report


def score_samples(
    run_root: Path,
    adapter: Any,
    posterior: Any,
    scorer: torch.nn.Module,
    sizes: ExperimentSizes,
    sampler_steps: int,
    seed: int = 0,
    extra_likelihoods: Sequence[Any] = (),
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """One sweep point's N samples with every score: ours, pixel, BayesDiff and AU, then the paper preset.

    Two predict runs with the same seeds; the pretrained weights are member 0 in both, so both draw the
    same samples (checked). ``seed`` is the data seed of the pool; ``extra_likelihoods`` score the same
    members in the main run (the replication's relative-noise variants).

    Returns:
        (samples in [0, 1], the classes asked for, the score columns, each run's seconds).
    """
    from genunc_lightning.uncertainty import AleatoricUncertainty, BayesDiff, PixelLikelihood, SemanticLikelihood

    common = dict(
        num_samples=sizes.samples,
        batch_size=sizes.samples,
        num_classes=10,
        num_members=sizes.members,
        steps=sampler_steps,
        seed=seed,
    )
    _, main_seconds = scored_run(
        run_root / "scores",
        adapter,
        posterior,
        [SemanticLikelihood(scorer), PixelLikelihood(), *extra_likelihoods],
        baselines=[BayesDiff(), AleatoricUncertainty(every=5)],
        **common,
    )
    _, paper_seconds = scored_run(
        run_root / "paper_preset", adapter, posterior.paper(), [SemanticLikelihood(scorer, name=PAPER)], **common
    )
    table, samples = load_run(run_root / "scores")
    paper_table, paper_samples = load_run(run_root / "paper_preset")
    if not torch.equal(samples, paper_samples) or not torch.equal(table["index"], paper_table["index"]):
        raise RuntimeError(
            "The paper-preset run drew other samples than the main run: the comparison would be unpaired."
        )
    scores = {c: v for c, v in table.items() if c not in TABLE_COLUMNS} | {PAPER: paper_table[PAPER]}
    return samples, table["class"], scores, {"main": main_seconds, "paper_preset": paper_seconds}


def run_point(
    out: Path, evaluation: HeldOutEvaluation, training_steps: int, sampler_steps: int, posterior: Any = None
) -> tuple[dict, Any, dict]:
    """One sweep point (training length × sampler steps), scored and evaluated.

    Returns:
        (the point's report, the posterior (reused across sampler steps), the samples, classes and columns).
    """
    from genunc_lightning.data import DigitsDataset

    adapter = digits_adapter(training_steps, sampler_steps)
    if posterior is None:
        posterior = fit_posterior(adapter, DigitsDataset("train"))
    run_root = out / f"s{training_steps}_t{sampler_steps}"
    samples, classes, scores, seconds = score_samples(
        run_root, adapter, posterior, evaluation.scorer, evaluation.sizes, sampler_steps
    )
    report = {
        "training_steps": training_steps,
        "sampler_steps": sampler_steps,
        "seconds": seconds,
        "posterior": posterior.summary(),
        **evaluation.evaluate(samples, classes, scores),
    }
    return report, posterior, {"samples": samples, "classes": classes, "scores": scores}
