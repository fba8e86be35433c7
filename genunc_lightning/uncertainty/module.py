"""GenerativeUncertaintyModule: Trainer.predict generates samples and their generative uncertainty."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from genunc_lightning.adapters.base import Condition, DiffusionAdapter
from genunc_lightning.adapters.layers import LastLayerMembers
from genunc_lightning.data.predict import UNCONDITIONAL, collate_check
from genunc_lightning.interrupts import StopsOnSigterm
from genunc_lightning.laplace.posterior import DiagonalLaplacePosterior
from genunc_lightning.uncertainty.baselines import BaselineScore, DeepEnsemble
from genunc_lightning.uncertainty.likelihoods import Likelihood, PixelLikelihood
from genunc_lightning.uncertainty.prediction import ScoredPrediction
from genunc_lightning.uncertainty.writer import check_score_names

PRETRAINED_MEMBER_CHOICES = ("kept", "rerun")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < 1:
        raise ValueError(f"{name} must be a positive whole number of sampler steps, got {value!r}.")
    return int(value)


class GenerativeUncertaintyModule(StopsOnSigterm, LightningModule):
    """Generates samples and scores each by its generative uncertainty, in ``predict_step``.

    The M last-layer weight sets are drawn once from ``posterior`` with ``posterior_seed``, so every
    sample and every rank uses the same ones. For each sample (seed, class), the kept sample is
    generated with the pretrained weights and ``steps`` (T) steps, and M member samples are generated
    from the same initial noise and sampler randomness with the drawn weights and ``member_steps``
    (T') steps. Members are batched into one forward, ``member_chunk`` of them at a time. Each
    likelihood scores the K = M + 1 members: the pretrained member and the M drawn ones
    (``include_pretrained=False`` uses the M drawn members only, which needs M ≥ 2).

    With T' < T the pretrained member is either the kept sample itself (``pretrained_member="kept"``:
    cost T + M·T' network evaluations, but the variance then includes the gap between T and T'
    steps, which is not zero even for a zero-variance posterior), or the pretrained weights re-run
    at T' (``"rerun"``: cost T + (M + 1)·T', and every scored member runs the same sampler, so the
    variance is the posterior's alone). With T' = T the two are the same samples.

    ``posterior`` may also be a ``DeepEnsemble``: then each member is a whole denoiser run from the
    same seeds, and M is the number of its checkpoints. ``baselines`` (BayesDiff, AU) add their own
    score columns for the same seeds.

    ``predict_step`` returns a ``ScoredPrediction`` (``genunc_lightning.uncertainty.prediction``), the one
    prediction-dict contract that the writer and everything downstream read.

    Args:
        adapter: the pretrained model.
        posterior: a ``DiagonalLaplacePosterior``, the path of its file, or a ``DeepEnsemble``.
        likelihoods: the scores to compute (default: pixel-space only).
        num_members: M, the weight sets drawn from a Laplace posterior (default 5; an ensemble's M is
            its number of checkpoints).
        steps: T, the kept sample's sampler steps (the adapter's default when ``None``).
        member_steps: T', the members' steps (T when ``None``); must not exceed T.
        posterior_seed: seed of the M weight draws.
        include_pretrained: count the pretrained member in the variance.
        pretrained_member: with T' < T, ``kept`` (the kept sample, T steps) or ``rerun`` (the
            pretrained weights re-run at T' steps) is the pretrained member.
        member_chunk: weight sets per batched forward; bounds memory. ``None`` chooses by device: all of
            them in one forward on an accelerator, one at a time on the CPU (where a larger batch runs
            slower per sample, measured in ``benchmarks/sampling.py``).
        checkpoint: weights to load into the adapter first.
        temperature: overrides the posterior's temperature (0 gives zero variance).
        save_variance_maps: return per-pixel variance maps of the pixel likelihood.
        baselines: extra scores for the same samples (``BayesDiff``, ``AleatoricUncertainty``).
        guidance_scale: classifier-free guidance w for the kept sample and every member (``None``: the
            adapter's own, 1 unless it was given one; see ``DiffusionAdapter``).
    """

    def __init__(
        self,
        adapter: DiffusionAdapter,
        posterior: str | DiagonalLaplacePosterior | DeepEnsemble,
        likelihoods: list[Likelihood] | None = None,
        num_members: int | None = None,
        steps: int | None = None,
        member_steps: int | None = None,
        posterior_seed: int = 0,
        include_pretrained: bool = True,
        member_chunk: int | None = None,
        checkpoint: str | None = None,
        temperature: float | None = None,
        save_variance_maps: bool = False,
        baselines: list[BaselineScore] | None = None,
        pretrained_member: str = "kept",
        guidance_scale: float | None = None,
    ) -> None:
        super().__init__()
        if guidance_scale is not None:
            adapter.set_guidance(guidance_scale)
        if pretrained_member not in PRETRAINED_MEMBER_CHOICES:
            raise ValueError(
                f"pretrained_member must be one of {', '.join(PRETRAINED_MEMBER_CHOICES)}, got {pretrained_member!r}."
            )
        ensemble = isinstance(posterior, DeepEnsemble)
        if ensemble and num_members is not None and num_members != posterior.num_members:
            raise ValueError(f"num_members={num_members}, but the ensemble has {posterior.num_members} checkpoints.")
        num_members = posterior.num_members if ensemble else (5 if num_members is None else num_members)
        if num_members < 1:
            raise ValueError(f"num_members (M) must be at least 1, got {num_members}.")
        if not include_pretrained and num_members < 2:
            raise ValueError("Without the pretrained sample, the variance over members needs num_members >= 2.")
        self.adapter = adapter
        if checkpoint is not None:
            adapter.load_weights(checkpoint)
        adapter.check_last_layer_reached()
        steps = steps if steps is not None else getattr(adapter, "steps", None)
        if steps is None:
            raise ValueError("steps (T) must be given for an adapter without a default number of steps.")
        self.steps = _positive_int(steps, "steps (T)")
        self.member_steps = _positive_int(member_steps if member_steps is not None else self.steps, "member_steps (T')")
        if getattr(adapter, "fixed_steps", False) and (self.steps, self.member_steps) != (adapter.steps,) * 2:
            raise ValueError(
                f"{type(adapter).__name__} runs a fixed set of {adapter.steps} sampler steps (the repository's own "
                "method, or a timestep_respacing): leave steps and member_steps unset (got "
                f"{self.steps} and {self.member_steps})."
            )
        if self.member_steps > self.steps:
            raise ValueError(
                f"member_steps (T' = {self.member_steps}) must not exceed steps (T = {self.steps}): the cheaper "
                "variant uses fewer steps for the extra members only."
            )
        if isinstance(posterior, (str, Path)):
            posterior = DiagonalLaplacePosterior.load(posterior)
        if temperature is not None:
            if ensemble:
                raise ValueError("temperature applies to a Laplace posterior, not to a deep ensemble.")
            posterior = posterior.with_scale(temperature=temperature)
        self.posterior = posterior
        # Before anything else uses the posterior (baselines too): it must be this adapter's layer.
        layer = None if ensemble else posterior.check_compatible(adapter.denoiser, adapter.last_layer)
        likelihoods = likelihoods if likelihoods is not None else [PixelLikelihood()]
        names = [lik.name for lik in likelihoods]
        if not names:
            raise ValueError("Give at least one likelihood.")
        self.likelihoods = torch.nn.ModuleList(likelihoods)
        self.num_members = num_members
        self.posterior_seed = posterior_seed
        self.include_pretrained = include_pretrained
        self.pretrained_member = pretrained_member
        if member_chunk is not None and member_chunk < 1:
            raise ValueError(f"member_chunk must be at least 1, got {member_chunk}.")
        self.member_chunk = member_chunk
        self.save_variance_maps = save_variance_maps
        self.baselines = torch.nn.ModuleList(baselines or [])
        check_score_names(names + [b.name for b in self.baselines])
        for baseline in self.baselines:
            baseline.check(adapter, posterior, self.steps)
        # A deep ensemble's members are adapters of their own (copies of this one with other weights).
        self.ensemble = torch.nn.ModuleList(posterior.load(adapter) if ensemble else [])
        self.members: LastLayerMembers | None = None
        if not ensemble:
            drawn = posterior.sample(num_members, torch.Generator().manual_seed(posterior_seed))
            pretrained = layer.named_parameters(recurse=False)
            # Set 0 is the pretrained layer itself (the kept sample), sets 1..M the drawn ones: buffers that
            # move with this module, applied through one hook for the whole run (see LastLayerMembers).
            self.members = LastLayerMembers({n: torch.cat([p.detach().cpu()[None], drawn[n]]) for n, p in pretrained})

    def manifest_entry(self) -> dict[str, Any]:
        """What must match for two runs to share results (checked by ``ScoredSampleWriter``)."""
        return {
            "adapter": self.adapter.manifest_entry(),
            "posterior": (
                self.posterior.manifest_entry()
                if isinstance(self.posterior, DeepEnsemble)
                else {k: str(v) for k, v in self.posterior.metadata().items() if k != "package_version"}
            ),
            "baselines": [b.manifest_entry() for b in self.baselines],
            "num_members": self.num_members,
            "steps": self.steps,
            "member_steps": self.member_steps,
            "posterior_seed": self.posterior_seed,
            "include_pretrained": self.include_pretrained,
            "pretrained_member": self.pretrained_member,
            "likelihoods": [lik.manifest_entry() for lik in self.likelihoods],
        }

    def on_predict_end(self) -> None:
        """Detaches the weight sets' hook from the last layer."""
        if self.members is not None:
            self.members.detach()

    def generate(
        self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int, first: int, stop: int
    ) -> torch.Tensor:
        """Samples [K, B, ...] with weight sets ``first … stop − 1``, ``member_chunk`` sets per batched forward."""
        assert self.members is not None
        self.members.attach(self.adapter.last_layer_module)
        out = []
        batch = seeds.shape[0]
        step = self.member_chunk or (1 if self.device.type == "cpu" else stop - first)
        for start in range(first, stop, step):
            end = min(start + step, stop)
            n = end - start
            rep_classes = classes.repeat(n) if classes is not None else None
            if getattr(self.adapter, "loops_over_weight_sets", False):  # the adapter applies each set itself
                x = self.adapter.sample(seeds.repeat(n), rep_classes, steps, self.members.weight_sets(start, end))
            else:
                with self.members.active(start, end):
                    x = self.adapter.sample(seeds.repeat(n), rep_classes, steps=steps)
            out.append(x.view(n, batch, *x.shape[1:]))
        return torch.cat(out)

    def generate_members(self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int) -> torch.Tensor:
        """The M member samples [M, B, ...] from the same seeds, with the drawn weight sets."""
        return self.generate(seeds, classes, steps, 1, self.num_members + 1)

    @property
    def reruns_pretrained(self) -> bool:
        """Whether the pretrained member is a T'-step re-run rather than the kept sample itself."""
        return self.pretrained_member == "rerun" and self.member_steps < self.steps

    def network_evaluations_per_sample(self) -> int:
        """The NFE bound of one scored sample (Laplace members; baselines not counted)."""
        m, t, t_member = self.num_members, self.steps, self.member_steps
        return t + (m + 1) * t_member if self.reruns_pretrained else t + m * t_member

    def generate_scored(self, seeds: torch.Tensor, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept samples [B, ...], the members the score is computed over [K, B, ...]).

        The pretrained member is sampled through the same batched path as the drawn members, so a
        zero-variance posterior gives exactly zero variance when all members share T' (always with
        T' = T, and with ``pretrained_member="rerun"``). With T' = T, kept and members share the
        batched forwards. For a deep ensemble, each member denoiser runs the same sampler in turn.
        """
        if self.ensemble:
            kept = self.adapter.sample(seeds, classes, steps=self.steps)
            members = [self.adapter.sample(seeds, classes, steps=self.member_steps)] if self.reruns_pretrained else []
            members = torch.stack(members + [m.sample(seeds, classes, steps=self.member_steps) for m in self.ensemble])
        elif self.member_steps == self.steps:
            both = self.generate(seeds, classes, self.steps, 0, self.num_members + 1)
            kept, members = both[0], both[1:]
        else:
            kept = self.generate(seeds, classes, self.steps, 0, 1)[0]
            first = 0 if self.reruns_pretrained else 1
            members = self.generate(seeds, classes, self.member_steps, first, self.num_members + 1)
        if self.reruns_pretrained:  # members[0] is the pretrained re-run at T'
            return kept, members if self.include_pretrained else members[1:]
        return kept, torch.cat([kept[None], members]) if self.include_pretrained else members

    def condition(self, batch: dict[str, Any], index: torch.Tensor, classes: torch.Tensor) -> Condition | None:
        """The batch's sampling ``Condition`` (its classes, and its prompts if it gives any), checked by the adapter."""
        prompts, negatives = batch.get("prompt"), batch.get("negative_prompt")
        num_classes = self.adapter.num_classes
        if num_classes is not None:
            bad = (classes < 0) | (classes >= num_classes)
            if bad.any():
                given = sorted(set(classes[bad].tolist()))[:5]
                hint = ("the data gives none: set data.num_classes" if UNCONDITIONAL in given
                        else "set data.num_classes or data.classes to match the model")  # fmt: skip
                raise ValueError(
                    f"The model is class-conditional with {num_classes} classes (0 … {num_classes - 1}), but samples "
                    f"{index[bad][:5].tolist()} ask for classes {given}: {hint}."
                )
        condition = Condition(classes.to(self.device), tuple(prompts) if prompts is not None else None,
                              tuple(negatives) if negatives else None)  # fmt: skip
        return self.adapter.condition_of(condition, len(index))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> ScoredPrediction:
        """Samples, members and scores for one batch of ``{"index", "seed", "class"}``."""
        index, seeds, classes = collate_check(batch)
        cond = self.condition(batch, index, classes)
        if cond is None:
            classes = torch.full_like(classes, UNCONDITIONAL)  # the table records what was used
        kept, members = self.generate_scored(seeds, cond)
        if not torch.isfinite(kept).all():
            bad = index[~torch.isfinite(kept.flatten(1)).all(1).cpu()][:10].tolist()
            raise FloatingPointError(
                f"The kept samples {bad} (pretrained weights) are NaN or infinite: check the checkpoint (NaN weights?) "
                "and the sampler settings."
            )
        k, b = members.shape[:2]
        decoded = self.adapter.decode(members.flatten(0, 1))
        decoded = decoded.view(k, b, *decoded.shape[1:])  # latent models decode to another shape
        # A member whose trajectory diverged (a drawn weight set far in the posterior's tail) is as
        # uncertain as a sample can be: its scores are +inf, not NaN, and the run says how often.
        diverged = ~torch.isfinite(decoded.flatten(2)).all(2).all(0).cpu()
        scores = {lik.name: lik.score(decoded) for lik in self.likelihoods}
        member_scores = set(scores)  # the baselines below do not score the members
        for baseline in self.baselines:
            scores[baseline.name] = baseline.score(self.adapter, self.posterior, seeds, cond, self.steps)
        for name, value in scores.items():
            if name in member_scores and diverged.any():
                value = value.cpu().clone()
                value[diverged] = math.inf
                scores[name] = value
            if torch.isnan(value).any() or (torch.isinf(value) & ~diverged.to(value.device)).any():
                bad = index[~torch.isfinite(value.cpu())][:10].tolist()
                raise FloatingPointError(
                    f"Score {name!r} is NaN or infinite for samples {bad}: the samples or member weights are not "
                    "finite. Check the checkpoint (NaN weights?) and the posterior file (genunc fit_laplace)."
                )
        if diverged.any():
            rank_zero_warn(
                f"{int(diverged.sum())} of {b} samples in batch {batch_idx} have members whose samples diverged "
                "(NaN or infinite); their generative uncertainty is +inf. Many of them mean a very wide posterior."
            )
        out: ScoredPrediction = {
            "index": index,
            "seed": seeds,
            "class": classes,
            "scores": scores,
            # With the kept sample among the members (member 0) it is decoded already.
            "sample": decoded[0]
            if self.include_pretrained and not self.reruns_pretrained
            else self.adapter.decode(kept),
        }
        if self.save_variance_maps:
            out["variance_maps"] = PixelLikelihood.variance_map(decoded)
        return out
