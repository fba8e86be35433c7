"""The paper's baselines as extra score columns: BayesDiff, AU, and deep ensembles as a posterior.

Each baseline scores the same seeds (and classes) as the kept sample and lands as one more column of
the scores table, so `genunc evaluate` compares it with no extra configuration.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.adapters.gaussian import GaussianDiffusionAdapter, Sampler
from genunc_lightning.adapters.samplers import NoiseSource, ddim_transfer, sample_ddim
from genunc_lightning.fingerprints import fingerprint
from genunc_lightning.laplace.posterior import DiagonalLaplacePosterior


class BaselineScore(nn.Module):
    """A score computed from (adapter, seeds, classes) alongside generative uncertainty.

    Args:
        name: the score's column name.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def check(self, adapter: DiffusionAdapter, posterior: Any, steps: int) -> None:
        """Raises before sampling when this baseline cannot run with this model."""

    def score(
        self, adapter: DiffusionAdapter, posterior: Any, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int
    ) -> torch.Tensor:
        """Scores [B] (float64), higher = more uncertain."""
        raise NotImplementedError

    def manifest_entry(self) -> dict[str, Any]:
        """Settings that identify this baseline in a run manifest."""
        return {"class": type(self).__name__, "name": self.name, **self.extra_manifest_entry()}

    def extra_manifest_entry(self) -> dict[str, Any]:
        """Subclasses' settings."""
        return {}


def _require_ddim(adapter: DiffusionAdapter, name: str) -> GaussianDiffusionAdapter:
    if not isinstance(adapter, GaussianDiffusionAdapter) or adapter.sampler is not Sampler.DDIM or adapter.eta != 0:
        kind = type(adapter).__name__
        scheduler = getattr(adapter, "scheduler", None)  # an adapter that samples with one has no built-in sampler
        detail = f"sampler={getattr(adapter, 'sampler', None)}, eta={getattr(adapter, 'eta', None)}"
        detail = f"the scheduler {type(scheduler).__name__}" if scheduler is not None else detail
        raise ValueError(
            f"{name} supports the deterministic DDIM sampler of GaussianDiffusionAdapter (sampler='ddim', eta=0, no "
            f"scheduler): its walk must be the kept sample's; this model is a {kind} with {detail}."
        )
    return adapter


def _derived_noise(seeds: torch.Tensor, stream: int, like: NoiseSource, dtype: torch.dtype) -> NoiseSource:
    """A second per-sample noise source, independent of the sampler's, from (seed, stream)."""
    return NoiseSource([seeding.derive_seed(int(s), stream) for s in seeds.tolist()], like.device, dtype)


class BayesDiff(BaselineScore):
    """BayesDiff (Kou et al., ICLR 2024): pixel variance propagated through DDIM.

    Along the DDIM trajectory from the kept sample's noise, with a = ᾱ_t, a' = ᾱ_t', r = √(a'/a),
    c = √(1−a') − r·√(1−a):
    E[x_t'] = r·E[x_t] + c·E[ε_t] and Var[x_t'] = r²·Var[x_t] + 2rc·Cov(x_t, ε_t) + c²·Var[ε_t] at an
    uncertainty step (every ``every`` steps), Var[x_t'] = r²·Var[x_t] on the others. E[ε_t] and
    Var[ε_t] come from ``posterior_samples`` last-layer draws at E[x_t]. Cov(x_t, ε_t) is
    mean_i(x_i·ε(x_i)) − E[x_t]·mean_i ε(x_i) over ``mc_samples`` draws x_i ~ N(E[x_t], Var[x_t]),
    with the pretrained weights. Diagonal variances can come out negative from the Monte Carlo term:
    they are clamped at zero, and ``negative_fraction`` counts how often (last batch).
    Score: the summed variance of the final sample.

    Cost in network evaluations: T for the mean trajectory, plus (posterior_samples + mc_samples) at
    each of the ⌈T/every⌉ uncertainty steps (the first has zero variance and skips the Monte Carlo
    draws): with T = 50, every = 5 and 10 + 10 draws, 50 + 10·10 + 9·10 = 240, 4.8× plain sampling.

    Args:
        every: an uncertainty step every this many steps (default 5).
        posterior_samples: last-layer draws for E[ε] and Var[ε] (default 10).
        mc_samples: draws of x for the covariance (default 10).
        seed: seed of the last-layer draws (per-sample draws of x come from each sample's seed).
        name: column name.
    """

    def __init__(
        self, every: int = 5, posterior_samples: int = 10, mc_samples: int = 10, seed: int = 0, name: str = "bayesdiff"
    ) -> None:
        super().__init__(name)
        if every < 1 or posterior_samples < 2 or mc_samples < 2:
            raise ValueError("BayesDiff needs every >= 1, posterior_samples >= 2 and mc_samples >= 2.")
        self.every, self.posterior_samples, self.mc_samples, self.seed = every, posterior_samples, mc_samples, seed
        self.negative_fraction = 0.0

    def extra_manifest_entry(self) -> dict[str, Any]:
        """Its settings."""
        return {"every": self.every, "posterior_samples": self.posterior_samples, "mc_samples": self.mc_samples,
                "seed": self.seed}  # fmt: skip

    def check(self, adapter: DiffusionAdapter, posterior: Any, steps: int) -> None:
        """DDIM (η = 0) of a Gaussian adapter with a Laplace posterior."""
        _require_ddim(adapter, "BayesDiff")
        if not isinstance(posterior, DiagonalLaplacePosterior):
            raise ValueError("BayesDiff needs a last-layer Laplace posterior (DiagonalLaplacePosterior).")

    def _eps(self, adapter: GaussianDiffusionAdapter, x: torch.Tensor, t: int, y, weights=None) -> torch.Tensor:
        from genunc_lightning.adapters.layers import use_last_layer_weights

        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        with use_last_layer_weights(adapter.last_layer_module, weights):
            return adapter.denoised(x, tt, y)[1]

    @torch.no_grad()
    def score(self, adapter, posterior, seeds, classes, steps):  # noqa: ANN001, ANN201
        """Summed final pixel variance per sample (float64)."""
        ad = _require_ddim(adapter, "BayesDiff")
        noise = NoiseSource.like(seeds, ad.denoiser)
        mean = noise(*ad.sample_shape)  # the kept sample's initial noise
        var = torch.zeros_like(mean, dtype=torch.float64)
        b = mean.shape[0]
        draws = posterior.sample(self.posterior_samples, torch.Generator().manual_seed(self.seed))
        draws = {k: v.to(noise.device, noise.dtype) for k, v in draws.items()}
        mc_noise = _derived_noise(seeds, 7, noise, torch.float64)
        timesteps = ad.timesteps(steps)
        negatives, total = 0, 0
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            r, c = ddim_transfer(ad.alpha_bars[t], ad.alpha_bars[t_prev] if t_prev >= 0 else 1.0)
            if i % self.every == 0:
                rep = classes.repeat(self.posterior_samples) if classes is not None else None
                eps_s = self._eps(ad, mean.repeat(self.posterior_samples, *[1] * (mean.dim() - 1)), t, rep, draws)
                eps_s = eps_s.view(self.posterior_samples, b, *mean.shape[1:]).double()
                eps_mean, eps_var = eps_s.mean(0), eps_s.var(0, unbiased=False)
                cov = torch.zeros_like(var)
                if var.abs().max() > 0:
                    std = var.clamp(min=0).sqrt()
                    draws_x = mc_noise(self.mc_samples, *mean.shape[1:]).transpose(0, 1)
                    xs = mean.double()[None] + std[None] * draws_x  # [S, B, ...]
                    rep = classes.repeat(self.mc_samples) if classes is not None else None
                    eps_x = self._eps(ad, xs.flatten(0, 1).to(noise.dtype), t, rep).view_as(xs).double()
                    cov = (xs * eps_x).mean(0) - mean.double() * eps_x.mean(0)
                var = r**2 * var + 2 * r * c * cov + c**2 * eps_var
                mean = (r * mean.double() + c * eps_mean).to(noise.dtype)
            else:
                eps = self._eps(ad, mean, t, classes)
                var = r**2 * var
                mean = r * mean + c * eps
            negatives += int((var < 0).sum())
            total += var.numel()
            var = var.clamp(min=0)
        self.negative_fraction = negatives / max(total, 1)
        return var.flatten(1).sum(1)


class AleatoricUncertainty(BaselineScore):
    """AU (De Vita & Belagiannis, WACV 2025): variance of ε under re-noising of the predicted x̂0.

    Along the kept sample's DDIM trajectory, at every ``every``-th step t: draw ``members`` noises,
    re-noise x̂0 to x_t^m = √ᾱ_t x̂0 + √(1−ᾱ_t) ε_m, predict ε(x_t^m, t), and take the per-pixel
    variance over m. Score: the sum over pixels, averaged over the uncertainty steps. A denoiser that
    ignores its input scores exactly zero.

    Cost in network evaluations: T + members·⌈T/every⌉ (with every = 1 and 20 members, 21× plain).

    Args:
        members: re-noised copies per uncertainty step (default 20).
        every: an uncertainty step every this many steps (default 1, every step).
        name: column name.
    """

    def __init__(self, members: int = 20, every: int = 1, name: str = "au") -> None:
        super().__init__(name)
        if members < 2 or every < 1:
            raise ValueError("AU needs members >= 2 and every >= 1.")
        self.members, self.every = members, every

    def extra_manifest_entry(self) -> dict[str, Any]:
        """Its settings."""
        return {"members": self.members, "every": self.every}

    def check(self, adapter: DiffusionAdapter, posterior: Any, steps: int) -> None:
        """DDIM (η = 0) of a Gaussian adapter."""
        _require_ddim(adapter, "AU")

    @torch.no_grad()
    def score(self, adapter, posterior, seeds, classes, steps):  # noqa: ANN001, ANN201
        """Mean over uncertainty steps of the summed per-pixel ε variance (float64)."""
        ad = _require_ddim(adapter, "AU")
        noise = NoiseSource.like(seeds, ad.denoiser)
        x = noise(*ad.sample_shape)  # the kept sample's initial noise
        renoise = _derived_noise(seeds, 11, noise, noise.dtype)
        b = x.shape[0]
        totals = torch.zeros(b, dtype=torch.float64, device=noise.device)
        count = 0

        def renoised_variance(i: int, t: int, x: torch.Tensor) -> None:  # before each step of the walk
            nonlocal totals, count
            if i % self.every:
                return
            tt = torch.full((b,), t, device=x.device, dtype=torch.long)
            x0 = ad.denoised(x, tt, classes)[0]
            draws = renoise(self.members, *x.shape[1:]).transpose(0, 1)
            a = ad.alpha_bars[t]
            xs = math.sqrt(a) * x0[None] + math.sqrt(1 - a) * draws  # [members, B, ...]
            rep = classes.repeat(self.members) if classes is not None else None
            eps = ad.denoised(xs.flatten(0, 1), tt.repeat(self.members), rep)[1].view_as(xs).double()
            totals += (eps - eps.mean(0)).pow(2).mean(0).flatten(1).sum(1)
            count += 1

        timesteps = ad.timesteps(steps)
        sample_ddim(ad.denoised_at(classes), x, timesteps, ad.alpha_bars, callback=renoised_variance)
        return totals / count


class DeepEnsemble:
    """A deep ensemble in place of the Laplace posterior: whole denoisers of one architecture.

    The adapter's own denoiser gives the kept sample; each checkpoint gives one member, run through
    the same sampler from the same seeds. With ``include_pretrained`` the variance is over the kept
    sample and the M members (the paper's toy uses a 5-model ensemble: the adapter plus 4 here).

    Args:
        checkpoints: one weights file per member (Lightning checkpoint, state dict or safetensors).
    """

    def __init__(self, checkpoints: list[str]) -> None:
        if not checkpoints:
            raise ValueError("A deep ensemble needs at least one member checkpoint.")
        for path in checkpoints:
            if not Path(path).is_file():
                raise FileNotFoundError(f"Ensemble member {path} does not exist.")
        self.checkpoints = [str(p) for p in checkpoints]
        self.members: list[nn.Module] = []

    @property
    def num_members(self) -> int:
        """M."""
        return len(self.checkpoints)

    def load(self, adapter: DiffusionAdapter) -> list[DiffusionAdapter]:
        """One adapter per member: a copy of ``adapter`` with the member's weights; checks the architectures agree."""
        reference = {k: tuple(v.shape) for k, v in adapter.denoiser.state_dict().items()}
        members = []
        for path in self.checkpoints:
            member_adapter = copy.deepcopy(adapter)
            try:
                member_adapter.load_weights(path)
            except (ValueError, RuntimeError) as err:
                raise ValueError(
                    f"Ensemble member {path} does not have the architecture of the model "
                    f"({type(adapter.denoiser).__name__}): {err}"
                ) from err
            shapes = {k: tuple(v.shape) for k, v in member_adapter.denoiser.state_dict().items()}
            if shapes != reference:
                diff = sorted(k for k in set(shapes) | set(reference) if shapes.get(k) != reference.get(k))[:5]
                raise ValueError(f"Ensemble member {path} differs in architecture from the model at {diff}.")
            members.append(member_adapter.eval())
        self.members = members
        return members

    def manifest_entry(self) -> dict[str, Any]:
        """Fingerprints of the members (after ``load``)."""
        return {"class": "DeepEnsemble", "members": [fingerprint(m.denoiser) for m in self.members]}
