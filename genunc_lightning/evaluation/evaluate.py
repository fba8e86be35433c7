"""``Evaluation``: a predict run and a reference set through selection, measurement and report.

Reads what `genunc predict` wrote (scores table, shards with the decoded samples), computes
features of the samples and of a reference set, adds the realism and rarity scores, and for every
score column, every rank-sum combination and R random subsets keeps K samples. It computes the
Fréchet distance, precision and recall of each kept set against the reference set and writes
``evaluation.json``, ``evaluation.md`` and plots into the output directory.

Given a classifier, a class-conditional run also gets each kept set's off-class rate (the share of
samples the classifier puts in another class than the one asked for: the failures a person would
reject at a glance), each score's AUROC for telling those samples from the rest, and an oracle row:
random kept sets that drop every off-class sample first, i.e. what a perfect detector of those
failures would give.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from genunc_lightning.data.batches import unpack_batch
from genunc_lightning.data.datamodule import fraction_or_count
from genunc_lightning.evaluation.decision import reject_threshold
from genunc_lightning.evaluation.gate import (
    MIN_NULL_SETS,
    SIGNIFICANCE,
    check_floor_sizes,
    judged_space,
    noise_floor,
    verdicts,
)
from genunc_lightning.evaluation.measurement import (
    ReferenceMeasure,
    auroc,
    mean_and_std,
    network_outputs,
    spearman,
)
from genunc_lightning.evaluation.report import write_evaluation
from genunc_lightning.evaluation.selection import (
    HIGHER_IS_BETTER,
    ORACLE,
    Method,
    class_balanced_random_kept_sets,
    oracle_kept_sets,
    random_kept_sets,
)
from genunc_lightning.fingerprints import manifest_entry_of, scalar_settings
from genunc_lightning.io import save_safetensors_atomic, write_csv_atomic, write_text_atomic
from genunc_lightning.metrics import functional as MF
from genunc_lightning.uncertainty.run_directory import (
    SCORES,
    TABLE_COLUMNS,
    RunDirectoryError,
    RunSamples,
    RunShards,
    first_missing,
    read_manifest,
    read_prompts,
    read_scores,
    run_id,
)
from genunc_lightning.uncertainty.writer import EVALUATION_COLUMNS

CACHE_FORMAT = "genunc-lightning/reference-features"
CACHE_PROBE = 4  # reference items recomputed to check a cache file against the extractor


def _digest(features: torch.Tensor) -> str:
    return hashlib.sha256(features.contiguous().numpy().tobytes()).hexdigest()


class EvaluationError(ValueError):
    """The evaluation cannot run on these inputs."""


def open_run(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], RunSamples]:
    """A finished predict run: (the scores table, its samples in table order, read from the shards on demand).

    Checks, before reading any sample, that the manifest, the table and the shards agree: nothing
    missing, every table row in a shard of this run.
    """
    run_dir = Path(run_dir)
    try:
        manifest = read_manifest(run_dir)
        if not (run_dir / SCORES).is_file():
            raise EvaluationError(
                f"{run_dir} has no {SCORES}: the run did not finish. Re-run the same `genunc predict` command; "
                "it generates only what is missing and writes the table."
            )
        table = read_scores(run_dir)
        expected = manifest.get("num_samples")
        if expected is not None:
            count, first = first_missing(table["index"], expected)
            if count:
                raise EvaluationError(
                    f"{run_dir} is missing {count} of {expected} indices (first: {first}): re-run the same "
                    "`genunc predict` command to finish it."
                )
        shards = RunShards(run_dir, run_id(manifest["identity"]))
        if not len(shards):
            raise EvaluationError(
                f"{run_dir / 'shards'} holds no shards, though {SCORES} lists {len(table['index'])} samples: the "
                "samples were deleted or moved. Re-run the same `genunc predict` command to generate them again."
            )
    except RunDirectoryError as err:
        raise EvaluationError(f"{err} Re-run the same `genunc predict` command to repair the run.") from err
    try:
        samples = RunSamples(shards, table["index"])
    except RunDirectoryError as err:  # no samples: its own fix, not a repair
        raise EvaluationError(str(err)) from err
    absent = table["index"][~torch.isin(table["index"], shards.index())]
    if absent.numel():
        raise EvaluationError(
            f"The shards of {run_dir} lack {absent.numel()} samples of {SCORES} (first: {absent[:10].tolist()}): a "
            "shard was deleted or moved. Re-run the same `genunc predict` command to regenerate them."
        )
    return table, samples


def read_failure_labels(path: Path, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(table positions, failed) of a labels CSV with columns ``index`` and ``failure`` (0/1, true/false).

    Raises:
        EvaluationError: no file, no such columns, a value that is not 0/1, an index twice or not in the run.
    """
    if not path.is_file():
        raise EvaluationError(f"No labels file at {path}: give a CSV with columns index,failure (0 or 1).")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "failure"} <= set(rows[0]):
        raise EvaluationError(f"{path} needs a header with the columns index and failure, and at least one row.")
    truth = {"0": False, "1": True, "false": False, "true": True}
    position = {int(i): p for p, i in enumerate(index.tolist())}
    positions, failed = [], []
    for line, row in enumerate(rows, start=2):
        value = str(row["failure"]).strip().lower()
        try:
            sample = int(row["index"])
        except ValueError:
            sample = None
        if value not in truth or sample not in position:
            what = f"failure {row['failure']!r} is not 0 or 1" if value not in truth else (
                f"index {row['index']!r} is not a sample of this run")  # fmt: skip
            raise EvaluationError(f"{path}, line {line}: {what}.")
        positions.append(position[sample])
        failed.append(truth[value])
    if len(set(positions)) != len(positions):
        raise EvaluationError(f"{path} labels some index more than once: give each sample one label.")
    return torch.tensor(positions), torch.tensor(failed)


def load_run(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A finished predict run: (the scores table, the decoded samples in table order, all in memory)."""
    table, samples = open_run(run_dir)
    return table, samples[torch.arange(len(samples))]


# --- the evaluation -------------------------------------------------------------------------


class Evaluation:
    """One evaluation of a predict run directory.

    Args:
        run_dir: the predict run directory.
        reference: the real data (items as in training: a tensor, ``(x, y)`` or a dict).
        feature_extractor: maps samples to features (e.g. ``InceptionEncoder`` for FID on images);
            ``None`` uses the samples themselves (the 2D toy).
        reference_range: the reference data's range, mapped to [0, 1] like the model's ``decode``
            (``[-1, 1]`` for pixel diffusion data); ``None`` leaves it as it is.
        keep: K, as a count, or as a fraction of the samples (a float in (0, 1]).
        scores: score columns to evaluate (all in the table when ``None``).
        combinations: lists of columns combined by summing their ranks, e.g. [[semantic, realism]];
            combinations naming an absent column are skipped.
        class_balanced: also keep the K best within each class (for a prompt run: within each prompt), in
            proportion, and measure random kept sets chosen the same way (``random (per class)`` or
            ``random (per prompt)``) as their null.
        random_subsets: R random kept sets (mean ± std).
        k: neighbourhood size of precision, recall, realism and rarity.
        fractions: kept fractions for the metric-against-fraction plot.
        output_dir: where to write (default ``<run_dir>/evaluation``).
        cache_dir: reference-feature cache, keyed by extractor and data fingerprint (``None``: off).
        batch_size: feature-extraction batch.
        device: feature-extraction device.
        seed: seed of the random subsets.
        classifier: maps samples (like ``feature_extractor``) to class logits, for the off-class
            rate of class-conditional runs; it should not be the network that scores.
        kid_subsets: also KID (torchmetrics' polynomial kernel), averaged over this many reference
            subsets of size K drawn once (0: no KID).
        heldout: real data disjoint from the reference (and from what the model, the scorer and the
            feature extractor trained on), at least K + the reference's size. Turns on the noise-floor
            gate of ``evaluation.gate``: the real-vs-real floor at these sizes, whether the random kept
            sets are far enough above it for a claim to be tested, and each score's verdict.
        floor_draws: the floor's real-vs-real draws.
        labels: a CSV file with columns ``index`` and ``failure`` (0/1): samples of this run that a person
            (or a held-out classifier) labelled. Turns on each score's reject threshold with a guarantee
            (``evaluation.decision.reject_threshold``): keeping the samples on the good side of it, the
            failure rate among them is at most ``alpha`` with probability at least 1 − ``delta``, for new
            samples of the same run settings.
        alpha: the failure rate allowed among kept samples.
        delta: the probability that the guarantee fails.
        reject_fraction: without a reference: the share of each prompt's samples to reject (its most
            uncertain), per score.
        reject_threshold: without a reference: instead, a threshold per score (``{name: value}``); samples
            beyond it are rejected.
    """

    def __init__(
        self,
        run_dir: str,
        reference: Dataset | None = None,
        feature_extractor: nn.Module | None = None,
        reference_range: tuple[float, float] | None = None,
        keep: int | float = 0.8333333333333334,
        scores: list[str] | None = None,
        combinations: list[list[str]] | None = None,
        class_balanced: bool = False,
        random_subsets: int = 5,
        k: int = 3,
        fractions: list[float] | None = None,
        output_dir: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        seed: int = 0,
        classifier: nn.Module | None = None,
        kid_subsets: int = 0,
        heldout: Dataset | None = None,
        floor_draws: int = 200,
        labels: str | None = None,
        alpha: float = 0.1,
        delta: float = 0.1,
        reject_fraction: float | None = 0.2,
        reject_threshold: dict[str, float] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        if reject_threshold is not None:
            reject_fraction = None
        self.reject_fraction, self.reject_threshold = reject_fraction, reject_threshold
        self.reference = reference
        self.feature_extractor = feature_extractor
        self.reference_range = reference_range
        self.keep = keep
        self.scores = scores
        self.combinations = combinations if combinations is not None else [["semantic", "realism"]]
        self.class_balanced = class_balanced
        self.random_subsets = random_subsets
        self.k = k
        self.fractions = fractions or [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        self.output_dir = Path(output_dir) if output_dir else self.run_dir / "evaluation"
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.classifier = classifier
        self.kid_subsets = kid_subsets
        self.heldout = heldout
        self.floor_draws = floor_draws
        self.labels = Path(labels) if labels is not None else None
        self.alpha, self.delta = alpha, delta

    # -- without a reference: ranking within prompts ---------------------------------------

    def rank_within_prompts(self, table: dict[str, torch.Tensor], samples: RunSamples) -> dict[str, Any]:
        """Per prompt (or class): each score's ranking, reject list and best of N, and a gallery per prompt.

        Writes ``prompt_rankings.csv`` (every sample: its prompt, and per score its value, rank within its
        prompt and whether it is rejected), ``rejected.csv``, ``best_of_n.csv``, ``galleries/<score>/
        prompt_<k>.png`` (a prompt's samples sorted by score, captioned with the prompt and each score),
        ``evaluation.json`` and ``evaluation.md``.
        """
        from genunc_lightning import plots
        from genunc_lightning.evaluation.prompt_sets import (
            best_of_n,
            ranks_within_groups,
            rejected_fraction,
            rejected_threshold,
        )

        prompts = read_prompts(self.run_dir)
        groups = table["class"]
        names = [c for c in table if c not in TABLE_COLUMNS and (self.scores is None or c in self.scores)]
        if not names:
            asked = f" among {self.scores}" if self.scores else ""
            raise EvaluationError(f"{self.run_dir} has no score columns to rank by{asked}.")
        unknown = sorted(set(self.reject_threshold or {}) - set(names))
        if unknown:
            raise EvaluationError(
                f"reject_threshold names {unknown}, which are not score columns of {self.run_dir}: {names}."
            )

        def label(g: int) -> str:
            return prompts[g] if prompts is not None else ("all samples" if g < 0 else f"class {g}")

        out = self.output_dir
        per_score = {}
        for name in names:
            higher, values = name in HIGHER_IS_BETTER, table[name]
            ranks = ranks_within_groups(values, groups, higher)
            threshold = (self.reject_threshold or {}).get(name)
            if threshold is None:  # with thresholds given, a score without one rejects nothing
                fraction = self.reject_fraction or 0.0
                flags, rule = rejected_fraction(ranks, groups, fraction), {"fraction": fraction}
            else:
                flags, rule = rejected_threshold(values, threshold, higher), {"threshold": threshold}
            per_score[name] = {"ranks": ranks, "rejected": flags, "best": best_of_n(ranks, groups), "rule": rule}
        header = ["index", "seed", "class", "prompt"]
        for name in names:
            header += [name, f"{name}_rank", f"{name}_rejected"]
        rows = []
        for i in range(len(groups)):
            row = [int(table["index"][i]), int(table["seed"][i]), int(groups[i]), label(int(groups[i]))]
            for name in names:
                p = per_score[name]
                row += [repr(float(table[name][i])), int(p["ranks"][i]), int(p["rejected"][i])]
            rows.append(row)
        write_csv_atomic(out / "prompt_rankings.csv", header, rows)
        write_csv_atomic(out / "rejected.csv", ["score", "index", "seed", "class", "prompt", "value"], [
            [name, int(table["index"][i]), int(table["seed"][i]), int(groups[i]), label(int(groups[i])),
             repr(float(table[name][i]))]
            for name in names for i in per_score[name]["rejected"].nonzero().flatten().tolist()
        ])  # fmt: skip
        best_rows = []
        for g in sorted(per_score[names[0]]["best"]):
            row = [g, label(g)]
            for name in names:
                i = per_score[name]["best"][g]
                row += [int(table["index"][i]), int(table["seed"][i]), repr(float(table[name][i]))]
            best_rows.append(row)
        best_header = ["class", "prompt", *[f"{name}_{c}" for name in names for c in ("index", "seed", "value")]]
        write_csv_atomic(out / "best_of_n.csv", best_header, best_rows)
        if samples.dim() == 4:
            for g in groups.unique().tolist():
                members = (groups == g).nonzero().flatten()
                images = samples[members]  # each prompt's samples read once, for every score's gallery
                for name in names:
                    order = per_score[name]["ranks"][members].argsort()
                    safe = name.replace("/", "_").replace(" ", "_")
                    plots.gallery(images[order], table[name][members[order]], f"{label(g)} — by {name}, best first",
                                  out / "galleries" / safe / f"prompt_{g}.png")  # fmt: skip
        report = {
            "run_dir": str(self.run_dir),
            "samples": len(groups),
            "prompts": prompts is not None,
            "groups": int(groups.unique().numel()),
            "scores": {
                name: {
                    **p["rule"],
                    "rejected": int(p["rejected"].sum()),
                    "best_of_n": {label(g): int(table["index"][i]) for g, i in sorted(p["best"].items())},
                }
                for name, p in per_score.items()
            },  # fmt: skip
        }
        write_text_atomic(out / "evaluation.json", json.dumps(report, indent=2, ensure_ascii=False))
        lines = [f"# Ranking within {'prompts' if prompts is not None else 'classes'} (no reference set)", "",
                 f"{report['samples']} samples, {report['groups']} {'prompts' if prompts is not None else 'groups'}. "
                 "Files: prompt_rankings.csv, rejected.csv, best_of_n.csv, galleries/.", "",
                 "| score | rule | rejected |", "|---|---|---|"]  # fmt: skip
        for name, r in report["scores"].items():
            rule = f"the worst {r['fraction']:.0%} of each prompt" if "fraction" in r else f"above {r['threshold']:g}"
            lines.append(f"| {name} | {rule} | {r['rejected']} |")
        write_text_atomic(out / "evaluation.md", "\n".join(lines) + "\n")
        return report

    # -- inputs ----------------------------------------------------------------------------

    @torch.no_grad()
    def features(self, samples: torch.Tensor, network: nn.Module | None = None) -> torch.Tensor:
        """Outputs [N, D] of ``network`` (default: the feature extractor) on samples, in batches."""
        network = network if network is not None else self.feature_extractor
        if network is None:
            return samples.flatten(1).float()
        return network_outputs(network, samples, self.batch_size, self.device)

    def sample_outputs(self, samples: RunSamples, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, off-class flags or ``None``) of a run's samples, in one pass over its shards."""
        if self.classifier is not None and (classes < 0).any():
            raise EvaluationError(
                f"classifier= needs the class each sample was asked for, but {int((classes < 0).sum())} samples "
                "of this run are unconditional: drop classifier= or evaluate a class-conditional run."
            )
        networks = [self.feature_extractor] + ([self.classifier] if self.classifier is not None else [])
        outputs = samples.map([partial(self.features, network=n) for n in networks], progress="features of the samples")
        off = outputs[1].argmax(1) != classes if self.classifier is not None else None
        return outputs[0], off

    def reference_batches(self, data: Dataset | None = None) -> Iterator[torch.Tensor]:
        """The reference data (or ``data``) in batches, mapped like the model's ``decode``; never all in memory."""
        data = self.reference if data is None else data
        for start in range(0, len(data), self.batch_size):
            items = [unpack_batch(data[i])[0] for i in range(start, min(start + self.batch_size, len(data)))]
            x = torch.stack([torch.as_tensor(v) for v in items]).float()
            if self.reference_range is not None:
                low, high = self.reference_range
                x = ((x - low) / (high - low)).clamp(0, 1)
            yield x

    def dataset_features(self, data: Dataset | None = None) -> torch.Tensor:
        """Features [N, D] of the reference data (or ``data``), batch by batch."""
        return torch.cat([self.features(x) for x in self.reference_batches(data)])

    def reference_features(self) -> torch.Tensor:
        """Reference features, from the cache when the file is this extractor's, on this data, and intact.

        The key covers what determines the features: the extractor's identity (its class, structure,
        parameters and buffers, and its scalar settings such as the resize), the reference range and the
        data. A cached file is used only if its recorded key and checksum match and the extractor,
        run now on the first reference items, gives the same features; a damaged or mismatched file is
        recomputed, with a warning.
        """
        if self.cache_dir is None:
            return self.dataset_features()
        extractor = self.feature_extractor
        identity = {
            "extractor": manifest_entry_of(extractor),
            "structure": repr(extractor),
            "settings": scalar_settings(extractor) if extractor is not None else {},
            "reference_range": self.reference_range,
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
        first = None
        for x in self.reference_batches():
            first = x[:CACHE_PROBE] if first is None else first
            key.update(f"{tuple(x.shape)}".encode())
            key.update(x.contiguous().numpy().tobytes())
        key = key.hexdigest()
        path = self.cache_dir / f"reference-{key[:24]}.safetensors"
        if path.is_file():
            cached, problem = self._cached_features(path, key, len(self.reference), first)
            if cached is not None:
                return cached
            warnings.warn(f"Reference-feature cache {path} {problem}: computing the features again.", stacklevel=2)
        feats = self.dataset_features()
        meta = {"format": CACHE_FORMAT, "key": key, "digest": _digest(feats), "rows": str(len(feats))}
        save_safetensors_atomic({"features": feats}, path, "the reference-feature cache", meta)
        return feats

    def _cached_features(
        self, path: Path, key: str, rows: int, first: torch.Tensor
    ) -> tuple[torch.Tensor | None, str | None]:
        """(features, None) from a cache file right for ``rows`` items starting with ``first``, else (None, why)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta, feats = f.metadata() or {}, f.get_tensor("features")
        except Exception as err:  # safetensors raises its own error types for damaged files
            return None, f"is unreadable ({' '.join(str(err).split())})"
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            return None, "was written for another extractor or data"
        if meta.get("rows") != str(rows) or len(feats) != rows or meta.get("digest") != _digest(feats):
            return None, "does not hold the features it was written with (its checksum or size differs)"
        probe = self.features(first)
        if probe.shape[1:] != feats.shape[1:] or not torch.allclose(probe, feats[:CACHE_PROBE], rtol=1e-3, atol=1e-5):
            return None, "holds other features than this extractor gives on the first reference items"
        return feats, None

    def threshold_for(
        self, values: torch.Tensor, name: str, positions: torch.Tensor, failures: torch.Tensor
    ) -> dict[str, Any]:
        """One score's threshold from the labelled rows, and what it rejects among the other rows."""
        sign = -1.0 if name in HIGHER_IS_BETTER else 1.0  # rejected first: the most uncertain (or least real)
        result = reject_threshold(sign * values[positions], failures, self.alpha, self.delta)
        others = torch.ones(len(values), dtype=torch.bool)
        others[positions] = False
        tau = result["threshold"]
        rejected = int((sign * values[others] > tau).sum()) if tau is not None else int(others.sum())
        keep = ">=" if sign < 0 else "<="
        return {**result, "threshold": None if tau is None else sign * tau, "keep": f"{name} {keep} threshold",
                "others": int(others.sum()), "others_rejected": rejected}  # fmt: skip

    # -- the run ---------------------------------------------------------------------------

    def _kept_count(self, n: int) -> int:
        try:
            k = fraction_or_count(self.keep, n, "keep")
        except ValueError as err:
            raise EvaluationError(str(err)) from err
        if k > n:
            raise EvaluationError(f"keep K = {k} exceeds the {n} samples of the run: lower keep or generate more.")
        if k < 1:
            raise EvaluationError(f"keep K = {k}: the kept set would be empty.")
        if k < self.k + 1:
            raise EvaluationError(
                f"keep K = {k} is too small for precision/recall with k = {self.k} (need {self.k + 1})."
            )
        return k

    def methods(self, columns: dict[str, torch.Tensor]) -> list[Method]:
        """The methods compared: every score column asked for, then every combination whose columns exist."""
        names = self.scores or [c for c in columns if c not in TABLE_COLUMNS]
        missing = [n for n in names if n not in columns]
        if missing:
            raise EvaluationError(f"Score columns {missing} are not in the run; it has {sorted(columns)}.")
        methods = [Method((n,)) for n in names]
        return methods + [Method(tuple(c)) for c in self.combinations if all(x in columns for x in c)]

    def check_gate_inputs(self, kept: int) -> None:
        """Fails before any work when ``heldout=`` cannot give verdicts (too few null sets or held-out items)."""
        if self.heldout is None:
            return
        if self.random_subsets < MIN_NULL_SETS:
            raise EvaluationError(
                f"heldout= gives verdicts, whose p-values need at least {MIN_NULL_SETS} random kept sets (p ≤ "
                f"{SIGNIFICANCE} needs 1/(1 + R) ≤ {SIGNIFICANCE}); random_subsets is {self.random_subsets}. Raise it "
                "(200 is a good default)."
            )
        try:
            check_floor_sizes(len(self.heldout), kept)
        except ValueError as err:
            raise EvaluationError(f"heldout= is too small. {err}") from err

    def gate(self, real: torch.Tensor, kept: int, randoms: list[dict], methods: dict[str, dict]) -> dict[str, Any]:
        """The noise floor at these sizes from ``heldout``, the gate, and every method's verdict."""
        heldout = self.dataset_features(self.heldout)
        floor = noise_floor(real, heldout, kept, self.floor_draws, self.k, self.kid_subsets, self.seed)
        space = judged_space(floor, randoms, methods)
        floor_sizes = {"reference_size": len(real), "kept_size": kept, "split": "heldout, against the reference"}
        return {"floor": {**floor, **floor_sizes}, "null": space["null"], "gate": space["gate"],
                "verdicts": verdicts({"features": space})}  # fmt: skip

    def run(self) -> dict[str, Any]:
        """Runs the evaluation and writes its outputs; returns what ``evaluation.json`` holds."""
        table, samples = open_run(self.run_dir)
        if self.reference is None:
            return self.rank_within_prompts(table, samples)
        clash = [c for c in EVALUATION_COLUMNS if c in table]
        if clash:
            raise EvaluationError(
                f"{self.run_dir} has score columns named {clash}, which evaluate computes itself: re-run predict with "
                "other likelihood names."
            )
        n = len(table["index"])
        kept = self._kept_count(n)
        self.check_gate_inputs(kept)
        labelled = read_failure_labels(self.labels, table["index"]) if self.labels is not None else None
        classes = table["class"]
        fake, off = self.sample_outputs(samples, classes)
        MF.check_features("features of the run's samples", fake)
        real = self.reference_features()
        MF.check_pair(real, fake, self.k)
        if fake.shape[1] > kept / 2:
            warnings.warn(
                f"The feature dimension ({fake.shape[1]}) is not well below the kept set's size (K = {kept}): the "
                f"kept set's feature covariance has rank at most {kept - 1}, so FID is dominated by estimation noise. "
                "Keep more samples, or use a feature extractor with fewer dimensions (D < K/2).",
                stacklevel=2,
            )
        failures = {"off_class": off} if off is not None else None
        # the reference side computed once
        measure = ReferenceMeasure(real, fake, self.k, failures, self.kid_subsets, kept, self.seed)
        columns = dict(table)
        radii = measure.prc.real_radii()
        columns["realism"] = MF.realism_score(real, fake, self.k, real_radii=radii)
        columns["rarity"] = MF.rarity_score(real, fake, self.k, real_radii=radii)
        methods = self.methods(columns)
        if self.class_balanced and (classes >= 0).any():
            methods = [v for m in methods for v in (m, Method(m.columns, class_balanced=True))]

        results: dict[str, Any] = {"all samples": {**measure(torch.arange(n)), "kept": n}}
        for method in methods:
            results[method.label] = {**measure(method.keep(columns, classes, kept)), "kept": kept}
        g = torch.Generator().manual_seed(self.seed)
        subsets = random_kept_sets(n, kept, self.random_subsets, g)
        # disable=None: a bar on a terminal only
        randoms = [measure(idx) for idx in tqdm(subsets, desc="random kept sets", unit="set", disable=None)]
        if randoms:
            results["random"] = {**mean_and_std(randoms), "kept": kept}
        if self.class_balanced and (classes >= 0).any() and self.random_subsets:
            within = class_balanced_random_kept_sets(classes, kept, self.random_subsets, g)
            label = "random (per prompt)" if read_prompts(self.run_dir) is not None else "random (per class)"
            results[label] = {**mean_and_std([measure(idx) for idx in within]), "kept": kept}
        if off is not None and self.random_subsets:
            oracles = [measure(idx) for idx in oracle_kept_sets(off, kept, self.random_subsets, g)]
            results[ORACLE] = {**mean_and_std(oracles), "kept": kept}
        everything = {m: v for m, v in results["all samples"].items() if m != "kept"}

        def sweep_point(method: Method, fraction: float) -> dict[str, float]:
            count = max(self.k + 1, round(fraction * n))
            # Keeping every sample is the same set for every method: measured once, above.
            return {
                "fraction": fraction,
                **(everything if count >= n else measure(method.keep(columns, classes, count))),
            }

        ranked = [m for m in methods if not m.class_balanced]
        sweep = {m.label: [sweep_point(m, f) for f in self.fractions] for m in ranked}
        singles = [m.columns[0] for m in ranked if not m.is_combination]
        correlations = {a: {b: spearman(columns[a], columns[b]) for b in singles} for a in singles}
        class_means = {}
        if (classes >= 0).any():
            for name in singles:
                finite = torch.isfinite(columns[name])
                class_means[name] = {
                    int(c): columns[name][(classes == c) & finite].mean().item() for c in classes.unique().tolist()
                }
        report = {
            "run_dir": str(self.run_dir),
            "samples": n,
            "kept": kept,
            "reference": len(real),
            "k": self.k,
            "results": results,
            "sweep": sweep,
            "spearman": correlations,
            "class_means": class_means,
        }
        if off is not None:
            # Higher uncertainty (or rarity) should flag the off-class samples; realism the other way.
            report["off_class_auroc"] = {
                name: auroc(-columns[name] if name in HIGHER_IS_BETTER else columns[name], off) for name in singles
            }
        if self.heldout is not None:
            report.update(self.gate(real, kept, randoms, {m.label: results[m.label] for m in methods}))
        if labelled is not None:
            report["reject_thresholds"] = {name: self.threshold_for(columns[name], name, *labelled) for name in singles}
        rankings = {name: Method((name,)).ranking(columns) for name in singles}
        write_evaluation(report, self.output_dir, samples, rankings)
        return report
