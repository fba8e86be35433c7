"""The replicated digits experiment (docs/replication_rules.md): R models, two pools each, one primary endpoint.

``main`` trains the R digits UNets (or reuses them), draws and scores two pools of each, evaluates every
pool against the fixed reference, and computes every test of the rules from those numbers: the four
primary sign-flip tests across models with Holm's correction, the exploratory families with
Benjamini–Hochberg, the semantic-noise decision and the reject threshold's check on fresh pools. It
writes ``replication_results.json`` and ``replication.md``; nothing in them is written by hand.

    python -m genunc_lightning.experiments.replication --output runs/replication --docs docs
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from genunc_lightning.evaluation.decision import benjamini_hochberg, holm, reject_threshold, sign_flip_p
from genunc_lightning.evaluation.gate import (
    GATE_QUANTILE,
    GATED_METRICS,
    SIGNIFICANCE,
    floor_quantile,
    noise_floor,
    verdict,
)
from genunc_lightning.evaluation.measurement import ReferenceMeasure, auroc
from genunc_lightning.evaluation.selection import HIGHER_IS_BETTER, Method, random_kept_sets
from genunc_lightning.experiments.assets import ASSET_DIR
from genunc_lightning.experiments.digits_experiment import (
    ExperimentSizes,
    HeldOutEvaluation,
    apply_network,
    images01,
    score_samples,
)
from genunc_lightning.experiments.runs import fit_posterior
from genunc_lightning.fingerprints import file_sha256
from genunc_lightning.io import write_text_atomic

SEEDS = tuple(range(1, 9))  # §1: R = 8 training seeds; seed 0's pools were already analysed
POOL_SEEDS = (1, 2)  # §2: data seeds of the two pools (pool 1 calibrates the reject threshold)
TRAINING_STEPS, SAMPLER_STEPS = 150, 50
NULL_SETS, KID_NULL_SETS, FLOOR_DRAWS = 2000, 200, 2000
RELATIVE_NOISE = 0.01  # §6: σ² in standardised units
REJECT_ALPHA, REJECT_DELTA = 0.2, 0.1  # §7
OURS, PRIMARY_SPACE = "semantic", "classifier"
PRIMARY_RIVALS = ("random", "bayesdiff", "au", "pixel")  # §4, in this order
RAW_AND_RELATIVE = {"semantic": "semantic_relative", "pixel": "pixel_relative"}
SIGNS = {**GATED_METRICS, "recall": -1.0}  # +1: lower is better


def replica_asset(seed: int) -> str:
    """The shipped file of replica ``seed`` (the digits UNet after 150 steps)."""
    return f"digits_unet_s{TRAINING_STEPS}_seed{seed}.safetensors"


def train_replica(seed: int, out: Path) -> Path:
    """The replica of ``seed``: its shipped snapshot, else the digits UNet trained with ``seed_everything=seed``.

    Training is 150 steps of `genunc fit` into ``out``; a finished file there is reused.
    """
    from genunc_lightning.cli import CONFIG_DIR, run_fit

    shipped = ASSET_DIR / replica_asset(seed)
    if shipped.is_file():
        return shipped
    path = out / f"digits_unet_seed{seed}_s{TRAINING_STEPS}.safetensors"
    if path.is_file():
        return path
    snapshots = [
        {
            "class_path": "genunc_lightning.models.WeightSnapshots",
            "init_args": {"steps": [TRAINING_STEPS], "dirpath": str(out), "filename": f"digits_unet_seed{seed}"},
        }
    ]
    run_fit(
        [
            "--config",
            str(CONFIG_DIR / "digits" / "model.yaml"),
            "--config",
            str(CONFIG_DIR / "digits" / "fit.yaml"),
            "--seed_everything",
            str(seed),
            "--trainer.max_steps",
            str(TRAINING_STEPS),
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks",
            json.dumps(snapshots),
        ]
    )
    if not path.is_file():
        raise RuntimeError(f"Training seed {seed} wrote no snapshot at {path}.")
    return path


def replica_adapter(weights: Path) -> Any:
    """The digits adapter of the experiment with a replica's weights."""
    from genunc_lightning.experiments.digits_experiment import digits_adapter

    adapter = digits_adapter(TRAINING_STEPS, SAMPLER_STEPS)  # the layout and sampler; its weights are replaced
    adapter.load_weights(weights)
    return adapter.eval()


def relative_likelihoods(evaluation: HeldOutEvaluation) -> list[Any]:
    """§6: the semantic and pixel likelihoods on features standardised by the real `train` digits."""
    from genunc_lightning.uncertainty import PixelLikelihood, RealDataScale, SemanticLikelihood

    train, _ = images01("train")
    return [
        SemanticLikelihood(
            evaluation.scorer, RELATIVE_NOISE, "semantic_relative", RealDataScale.fit(evaluation.train_scorer_features)
        ),
        PixelLikelihood(RELATIVE_NOISE, "pixel_relative", RealDataScale.fit(train.flatten(1))),
    ]


def fixed_reference_floor(
    evaluation: HeldOutEvaluation, seed: int = 0, draws: int = FLOOR_DRAWS
) -> dict[str, dict[str, list[float]]]:
    """§4: real sets of K calibration digits against the fixed reference, ``draws`` draws per space."""
    s = evaluation.sizes
    return {
        name: noise_floor(evaluation.reference[name], real, s.keep, draws, s.k, kid_subsets=0, seed=seed)["values"]
        for name, real in evaluation.calibration_features.items()
    }


def evaluate_pool(
    evaluation: HeldOutEvaluation,
    floor: dict,
    samples: torch.Tensor,
    classes: torch.Tensor,
    scores: dict[str, torch.Tensor],
    seed: int,
) -> dict[str, Any]:
    """One pool: every score's kept set, 2,000 null sets (KID on the first 200), the gate, per-pool verdicts."""
    s = evaluation.sizes
    failures = evaluation.failures(samples, classes)
    columns = {**scores, **evaluation.realism_columns(samples)}
    kept = {name: Method((name,)).keep(columns, classes, s.keep) for name in columns}
    null_sets = random_kept_sets(len(samples), s.keep, s.null_sets, torch.Generator().manual_seed(seed))
    spaces = {}
    for name, net in evaluation.spaces.items():
        fake = apply_network(net, samples)
        full = ReferenceMeasure(evaluation.reference[name], fake, s.k, failures, s.kid_subsets, s.keep, seed=seed)
        lite = ReferenceMeasure(evaluation.reference[name], fake, s.k, failures, 0, s.keep, seed=seed)
        measured = {m: full(i) for m, i in kept.items()}
        null_runs = [lite(i) for i in null_sets]
        null = {m: [r[m] for r in null_runs] for m in ("fid", "precision", "recall")}
        null["kid"] = [full(i)["kid"] for i in null_sets[:KID_NULL_SETS]]
        threshold = floor_quantile(floor[name]["fid"], "fid")
        null_fid = float(torch.tensor(null["fid"], dtype=torch.float64).mean())
        gate = {"null_fid": null_fid, "floor_fid_quantile": threshold, "informative": null_fid > threshold}
        pool_verdicts = {
            m: {
                metric: verdict(measured[m][metric], null[metric], metric, gate["informative"])
                for metric in GATED_METRICS
            }
            for m in measured
        }
        null_means = {metric: float(torch.tensor(v, dtype=torch.float64).mean()) for metric, v in null.items()}
        spaces[name] = {"methods": measured, "null_mean": null_means, "gate": gate, "verdicts": pool_verdicts}
    aurocs = {
        f: {c: auroc(-columns[c] if c in HIGHER_IS_BETTER else columns[c], mask) for c in columns}
        for f, mask in failures.items()
    }
    return {
        "spaces": spaces,
        "auroc": aurocs,
        "failure_rates": {f: m.double().mean().item() for f, m in failures.items()},
        "columns": {c: v.tolist() for c, v in columns.items()},
        "off_class": failures["off_class"].tolist(),
    }


def gain(pool: dict, method: str, metric: str = "fid", space: str = PRIMARY_SPACE) -> float:
    """How much better than the mean random kept set a method's kept set is (> 0: better), in the metric's units."""
    sp = pool["spaces"][space]
    return SIGNS[metric] * (sp["null_mean"][metric] - sp["methods"][method][metric])


def endpoints(
    pools: dict[int, list[dict]], method: str, metric: str = "fid", space: str = PRIMARY_SPACE
) -> list[float]:
    """§3: E(method, r), the mean over model r's pools of the gain over random, one per model."""
    return [sum(gain(p, method, metric, space) for p in model) / len(model) for model in pools.values()]


def compare(
    pools: dict[int, list[dict]],
    a: str,
    b: str | None,
    metric: str = "fid",
    space: str = PRIMARY_SPACE,
    direction: float = 1.0,
) -> dict[str, Any]:
    """A one-sided sign-flip test across models of direction · mean [E(a) − E(b)] > 0 (b = None: random)."""
    ea = endpoints(pools, a, metric, space)
    eb = endpoints(pools, b, metric, space) if b is not None else [0.0] * len(ea)
    diff = [direction * (x - y) for x, y in zip(ea, eb, strict=True)]
    return {"per_model": diff, "mean": sum(diff) / len(diff), "p": sign_flip_p(diff)}


def with_bh(tests: dict[str, dict]) -> dict[str, dict]:
    """Adds Benjamini–Hochberg adjusted p-values (q = 0.05) over a family of tests."""
    if not tests:
        return tests
    bh = benjamini_hochberg([t["p"] for t in tests.values()], SIGNIFICANCE)
    return {
        name: {**t, "p_bh": q, "holds": bool(r)}
        for (name, t), q, r in zip(tests.items(), bh["adjusted"], bh["rejected"], strict=True)
    }


def analyse(pools: dict[int, list[dict]]) -> dict[str, Any]:
    """Every test of the rules, from the pools' numbers alone."""
    primary = {rival: compare(pools, OURS, None if rival == "random" else rival) for rival in PRIMARY_RIVALS}
    adjusted = holm([t["p"] for t in primary.values()], SIGNIFICANCE)
    gates = [p["spaces"][PRIMARY_SPACE]["gate"]["informative"] for model in pools.values() for p in model]
    informative = sum(gates) * 2 >= len(gates)
    for (rival, test), p_holm, rejected in zip(
        primary.items(), adjusted["adjusted"], adjusted["rejected"], strict=True
    ):
        test.update(
            p_holm=p_holm,
            verdict=("holds" if rejected else "does not hold") if informative else "uninformative at this scale",
        )
        test["hypothesis"] = f"ours beats {rival} (classifier FID)"
    scores = list(next(iter(pools.values()))[0]["spaces"][PRIMARY_SPACE]["methods"])
    other_metrics = {
        f"ours beats random: {metric} ({space})": compare(pools, OURS, None, metric, space)
        for space in ("classifier", "pixel-pca")
        for metric in ("fid", "kid", "precision")
        if (space, metric) != (PRIMARY_SPACE, "fid")
    }
    readme_claims = {"pixel beats ours (classifier FID)": compare(pools, "pixel", OURS)}
    readme_claims |= {
        f"{s} makes FID worse than random (classifier)": compare(pools, s, None, direction=-1.0) for s in scores
    }
    per_pool = {
        f"{s} / {metric} / {space} / model {r} pool {j + 1}": {"p": v["p"], "gain": v["gain"]}
        for r, model in pools.items()
        for j, p in enumerate(model)
        for space, sp in p["spaces"].items()
        for s, metrics in sp["verdicts"].items()
        for metric, v in metrics.items()
    }
    auroc_tests = {}
    for failure in ("off_class", "off_manifold"):
        for s in scores:
            above = [sum(p["auroc"][failure][s] for p in model) / len(model) - 0.5 for model in pools.values()]
            auroc_tests[f"{s}: AUROC ({failure}) above 0.5"] = {
                "per_model": above,
                "mean": sum(above) / len(above),
                "p": sign_flip_p(above),
            }
    noise = {}
    for raw, relative in RAW_AND_RELATIVE.items():
        noise[f"{relative} beats {raw} (classifier FID)"] = compare(pools, relative, raw)
        noise[f"{raw} beats {relative} (classifier FID)"] = compare(pools, raw, relative)
    decision = noise["semantic_relative beats semantic (classifier FID)"]
    default = "relative" if decision["mean"] > 0 and decision["p"] <= SIGNIFICANCE else "raw"
    return {
        "primary": {
            "tests": primary,
            "gate": {"informative_pools": sum(gates), "pools": len(gates), "informative": informative},
            "endpoints": {s: endpoints(pools, s) for s in scores},
        },
        "exploratory": {
            "other metrics and space": with_bh(other_metrics),
            "readme claims": with_bh(readme_claims),
            "per-pool verdicts": with_bh(per_pool),
            "auroc": with_bh(auroc_tests),
            "noise": with_bh(noise),
        },
        "noise_default": {
            "rule": "relative if semantic_relative beats semantic with one-sided sign-flip p <= 0.05",
            "test": decision,
            "default": default,
        },
    }


def reject_threshold_check(pools: dict[int, list[dict]]) -> dict[str, Any]:
    """§7: each score's threshold fitted on pool 1's off-class labels, its realised off-class rate on pool 2."""
    out = {}
    scores = list(next(iter(pools.values()))[0]["columns"])
    for s in scores:
        sign = -1.0 if s in HIGHER_IS_BETTER else 1.0
        per_model = []
        for calibration, fresh in pools.values():
            fit = reject_threshold(
                sign * torch.tensor(calibration["columns"][s]),
                torch.tensor(calibration["off_class"]),
                REJECT_ALPHA,
                REJECT_DELTA,
            )
            row = {"threshold": fit["threshold"], "calibration_kept": fit["kept_fraction"]}
            if fit["threshold"] is not None:
                keep = sign * torch.tensor(fresh["columns"][s]) <= fit["threshold"]
                off = torch.tensor(fresh["off_class"])[keep]
                row |= {
                    "fresh_kept": keep.double().mean().item(),
                    "fresh_off_class": off.double().mean().item() if keep.any() else None,
                }
            per_model.append(row)
        held = [r for r in per_model if r.get("fresh_off_class") is not None]
        out[s] = {
            "per_model": per_model,
            "models_with_threshold": len(held),
            "held": sum(r["fresh_off_class"] <= REJECT_ALPHA for r in held),
        }
    return {"alpha": REJECT_ALPHA, "delta": REJECT_DELTA, "scores": out}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`make replication`: train, draw, score, evaluate, test; writes the results file and its Markdown."""
    parser = argparse.ArgumentParser(prog="python -m genunc_lightning.experiments.replication")
    parser.add_argument("--output", default="runs/replication")
    parser.add_argument("--docs", default=None, help="also write replication_results.json and replication.md here")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    # For development runs only; the rules' values are the defaults.
    parser.add_argument("--null-sets", type=int, default=NULL_SETS, help=argparse.SUPPRESS)
    parser.add_argument("--floor-draws", type=int, default=FLOOR_DRAWS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from genunc_lightning.cli import quiet_lightning

    quiet_lightning()
    out = Path(args.output)
    start = time.perf_counter()
    sizes = ExperimentSizes(null_sets=args.null_sets)
    evaluation = HeldOutEvaluation(sizes)
    floor = fixed_reference_floor(evaluation, draws=args.floor_draws)
    extra = relative_likelihoods(evaluation)
    from genunc_lightning.data import DigitsDataset

    pools: dict[int, list[dict]] = {}
    timings, cached_pools, snapshots = {}, 0, {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        weights = train_replica(seed, out / "models")
        snapshots[str(seed)] = {"file": weights.name, "sha256": file_sha256(weights)}
        adapter = replica_adapter(weights)
        posterior = None  # fitted once, only for a pool that is not cached
        pools[seed] = []
        for pool_seed in POOL_SEEDS:
            cached = out / f"seed{seed}" / f"pool{pool_seed}" / "pool.json"
            key = {"model": snapshots[str(seed)]["sha256"], "pool_seed": pool_seed, "null_sets": args.null_sets,
                   "floor_draws": args.floor_draws}  # fmt: skip
            if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
                pools[seed].append(json.loads(cached.read_text())["pool"])  # a finished pool of an earlier run
                cached_pools += 1
                continue
            posterior = posterior if posterior is not None else fit_posterior(adapter, DigitsDataset("train"))
            samples, classes, scores, _ = score_samples(
                out / f"seed{seed}" / f"pool{pool_seed}",
                adapter,
                posterior,
                evaluation.scorer,
                sizes,
                SAMPLER_STEPS,
                pool_seed,
                extra,
            )
            pools[seed].append(evaluate_pool(evaluation, floor, samples, classes, scores, 1000 * seed + pool_seed))
            write_text_atomic(cached, json.dumps({"key": key, "pool": pools[seed][-1]}, default=float))
        timings[seed] = time.perf_counter() - t0
        print(f"  replica seed {seed}: {timings[seed]:.0f} s", flush=True)
    results = {
        "rules": "docs/replication_rules.md",
        "models": list(args.seeds),
        "snapshots": snapshots,
        "pools": list(POOL_SEEDS),
        "sizes": {
            "samples": sizes.samples,
            "keep": sizes.keep,
            "null_sets": args.null_sets,
            "kid_null_sets": min(KID_NULL_SETS, args.null_sets),
            "floor_draws": args.floor_draws,
            "gate_quantile": GATE_QUANTILE,
        },
        **analyse(pools),
        "floors": {
            name: {
                "fixed_reference": _summary(floor[name]["fid"]),
                "fixed_reference_quantile": floor_quantile(floor[name]["fid"], "fid"),
            }
            for name in evaluation.spaces
        },
        "reject_threshold": reject_threshold_check(pools),
        "per_pool": {
            str(seed): [{k: v for k, v in p.items() if k not in ("columns", "off_class")} for p in model]
            for seed, model in pools.items()
        },
        "seconds": {
            "total": time.perf_counter() - start,
            "per_model": {str(k): v for k, v in timings.items()},
            "cached_pools": cached_pools,
        },
    }
    text = json.dumps(results, indent=2, default=float)
    write_text_atomic(out / "replication_results.json", text)
    markdown = replication_markdown(results)
    write_text_atomic(out / "replication.md", markdown)
    if args.docs:
        write_text_atomic(Path(args.docs) / "replication_results.json", text)
        write_text_atomic(Path(args.docs) / "replication.md", markdown)
    print(markdown)
    return results


RESULTS_FILE = Path("docs") / "replication_results.json"


def check_results(results: dict[str, Any], asset_dir: Path = ASSET_DIR) -> dict[str, Any]:
    """The committed results, checked against the shipped snapshots and re-derived from their pool numbers.

    Every replica snapshot named in ``results`` must be the shipped file of that SHA-256, so the verdicts
    are about the models a user has; every test of the rules is then recomputed from the per-pool numbers
    (``analyse``) and must equal the recorded one. Re-drawing the pools themselves is `make replication`.

    Raises:
        RuntimeError: a snapshot is missing or differs, or a recomputed test differs from the file's.
    """
    for seed, snapshot in results["snapshots"].items():
        path = asset_dir / snapshot["file"]
        if not path.is_file():
            raise RuntimeError(
                f"Replica {seed}'s snapshot {path} is missing: the results rest on it. `make replication`."
            )
        if file_sha256(path) != snapshot["sha256"]:
            raise RuntimeError(
                f"{path} is not the snapshot the replication results were computed from (SHA-256 differs): "
                "re-run `make replication` to recompute them for this file."
            )
    pools = {int(seed): model for seed, model in results["per_pool"].items()}
    recomputed = json.loads(json.dumps(analyse(pools), default=float))
    differ = [key for key, value in recomputed.items() if results.get(key) != value]
    if differ:
        raise RuntimeError(f"Recomputing the replication's tests from its pools gives other {', '.join(differ)}.")
    return {
        "snapshots": len(results["snapshots"]),
        "pools": sum(len(model) for model in pools.values()),
        "primary": recomputed["primary"],
        "noise_default": recomputed["noise_default"],
    }


def _summary(values: list[float]) -> dict[str, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(v.mean()), "std": float(v.std())}


def _p(value: float) -> str:
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def primary_rows(results: dict[str, Any]) -> list[str]:
    """The primary tests as a Markdown table (the README quotes these rows as they are)."""
    rows = ["| hypothesis | mean over models | per model | p | Holm p | verdict |", "|---|---|---|---|---|---|"]
    for test in results["primary"]["tests"].values():
        per = ", ".join(f"{v:+.2f}" for v in test["per_model"])
        rows.append(
            f"| {test['hypothesis']} | {test['mean']:+.3f} | {per} | {_p(test['p'])} | "
            f"{_p(test['p_holm'])} | {test['verdict']} |"
        )
    return rows


def noise_default_sentence(results: dict[str, Any]) -> str:
    """The semantic-noise decision of §6 in one sentence (the README quotes it as it is)."""
    nd = results["noise_default"]
    return (
        f"Rule: {nd['rule']}. Mean {nd['test']['mean']:+.3f}, p = {_p(nd['test']['p'])}: the default is "
        f"**{nd['default']}**."
    )


def replication_markdown(results: dict[str, Any]) -> str:
    """The results file as Markdown: every number is the file's."""
    primary = results["primary"]
    gate = primary["gate"]
    lines = [
        "# The replicated digits experiment: results",
        "",
        f"Written by `make replication` from `docs/replication_results.json` (rules: `{results['rules']}`). "
        f"R = {len(results['models'])} models (training seeds {results['models']}), pools {results['pools']} of "
        f"{results['sizes']['samples']} samples each, keep {results['sizes']['keep']}, "
        f"{results['sizes']['null_sets']} null sets per pool.",
        "",
        f"Gate (classifier FID above the fixed-reference floor's {results['sizes']['gate_quantile']} quantile): "
        f"{gate['informative_pools']} of {gate['pools']} pools informative.",
        "",
        "| space | floor FID, fixed reference (mean ± std; gate quantile) |",
        "|---|---|",
        *[
            f"| {name} | {f['fixed_reference']['mean']:.3g} ± {f['fixed_reference']['std']:.2g}; "
            f"{f['fixed_reference_quantile']:.3g} |"
            for name, f in results.get("floors", {}).items()
        ],
        "",
        "## Primary: four one-sided sign-flip tests across models, Holm-corrected",
        "",
        *primary_rows(results),
    ]
    lines += [
        "",
        "Endpoints E(score, model): classifier FID gain over the mean random kept set (> 0 is better).",
        "",
        "| score | mean | per model |",
        "|---|---|---|",
    ]
    for s, values in primary["endpoints"].items():
        lines.append(f"| {s} | {sum(values) / len(values):+.3f} | {', '.join(f'{v:+.2f}' for v in values)} |")
    for family, tests in results["exploratory"].items():
        if family == "per-pool verdicts":
            held = sum(t["holds"] for t in tests.values())
            lines += ["", f"## Exploratory: {family}", "", f"{held} of {len(tests)} hold after Benjamini–Hochberg."]
            continue
        lines += [
            "",
            f"## Exploratory: {family} (Benjamini–Hochberg, q = 0.05)",
            "",
            "| test | mean | p | BH p | holds |",
            "|---|---|---|---|---|",
        ]
        for name, t in tests.items():
            lines.append(
                f"| {name} | {t['mean']:+.3f} | {_p(t['p'])} | {_p(t['p_bh'])} | {'yes' if t['holds'] else 'no'} |"
            )
    lines += ["", "## The semantic noise's default", "", noise_default_sentence(results)]
    rt = results["reject_threshold"]
    lines += [
        "",
        f"## Reject threshold (α = {rt['alpha']}, δ = {rt['delta']}; fitted on pool 1, applied to pool 2)",
        "",
        "| score | models with a threshold | realised off-class ≤ α on the fresh pool |",
        "|---|---|---|",
    ]
    for s, r in rt["scores"].items():
        lines.append(
            f"| {s} | {r['models_with_threshold']} of {len(r['per_model'])} | {r['held']} of "
            f"{r['models_with_threshold']} |"
        )
    seconds = results["seconds"]
    cached = seconds.get("cached_pools", 0)
    lines += ["", f"Total time {seconds['total'] / 60:.1f} min" + (
        f", {cached} of {gate['pools']} pools read from an earlier run's cache (a run from nothing: BENCHMARKS.md)."
        if cached else ".")]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
