"""The diagonal last-layer Laplace posterior: fit from a Fisher, sample, save, load, export.

H is the diagonal sum Σ(Jᵀr)² of squared per-example gradients of ½‖prediction − target‖² over n
examples (out of a training set of N); σ is the observation noise, λ the prior precision. How H
becomes a likelihood precision is the posterior's ``convention``:

- ``ef`` (default): the empirical Fisher of the likelihood N(prediction, σ²). Its per-example
  gradient is Jᵀr/σ², so precision = (N/n)·H/σ⁴ + λ.
- ``laplace_torch``: laplace-torch's regression EF, which squares the gradient of Σ(f − y)² with a
  factor ½ (2·Σ(Jᵀr)²) and divides by σ²: precision = (N/n)·2H/σ² + λ. The paper's public code
  used it with σ = λ = 1 and N = n, i.e. 2H + 1: that is ``paper()``.

The variance is temperature / precision. Mean = the pretrained layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genunc_lightning.adapters.layers import LastLayerError, layer_parameters, resolve_last_layer
from genunc_lightning.fingerprints import fingerprint
from genunc_lightning.io import save_safetensors_atomic

FORMAT = "genunc-lightning/diagonal-laplace"
FORMAT_VERSION = "2"
AUTO = "auto"


class FisherConvention(str, Enum):
    """How the accumulated H = Σ(Jᵀr)² enters the likelihood precision (see the module docstring)."""

    EF = "ef"
    LAPLACE_TORCH = "laplace_torch"


def fisher_convention(value: FisherConvention | str) -> FisherConvention:
    """Parses a convention name, with an error that lists the choices."""
    try:
        return FisherConvention(value)
    except ValueError:
        choices = ", ".join(c.value for c in FisherConvention)
        raise ValueError(f"Unknown Fisher convention {value!r}; choose one of {choices}.") from None


def likelihood_precision_factor(convention: FisherConvention | str, sigma: float) -> float:
    """The factor c in precision = (N/n)·c·H + λ: 1/σ⁴ for ``ef``, 2/σ² for ``laplace_torch``."""
    convention = fisher_convention(convention)
    return 1.0 / sigma**4 if convention is FisherConvention.EF else 2.0 / sigma**2


class PosteriorFileError(ValueError):
    """A posterior file is missing, truncated, or not a genunc-lightning posterior."""


class PosteriorMismatchError(ValueError):
    """A posterior does not belong to the model it is used with."""


class ZeroFisherError(ValueError):
    """The Fisher is zero everywhere: the loss does not move with the last layer."""


# --- functional core -------------------------------------------------------------------------


def mean_squared_residual(squared_residual_sum: float, num_residuals: int) -> float:
    """σ² by maximum likelihood: the mean squared residual over every example and dimension."""
    if num_residuals <= 0:
        raise ValueError("No residuals were accumulated: the Fisher pass saw no examples.")
    return float(squared_residual_sum) / num_residuals


def log_marginal_likelihood(prior_precision: float, theta_sq_norm: float, h: torch.Tensor) -> float:
    """Diagonal-Laplace log marginal likelihood as a function of λ, up to λ-free terms.

    −½λ‖θ*‖² + (P/2)·log λ − ½ Σ_i log(h_i + λ), with h = (N/n)·c·H the likelihood precision
    (c from ``likelihood_precision_factor``).
    """
    h = h.double()
    lam = float(prior_precision)
    return -0.5 * lam * theta_sq_norm + 0.5 * h.numel() * math.log(lam) - 0.5 * torch.log(h + lam).sum().item()


def optimal_prior_precision(theta_sq_norm: float, h: torch.Tensor, lo: float = 1e-12, hi: float = 1e12) -> float:
    """The λ that maximises ``log_marginal_likelihood`` (bisection on its derivative in log λ).

    The derivative ½[Σ h_i / (λ(h_i + λ)) − ‖θ*‖²] decreases strictly in λ, so the maximiser is
    its unique root; it is clamped to [lo, hi].
    """
    h = h.double().flatten()
    if theta_sq_norm <= 0:
        return hi

    def slope(lam: float) -> float:
        return (h / (lam * (h + lam))).sum().item() - theta_sq_norm

    a, b = math.log(lo), math.log(hi)
    if slope(lo) <= 0:
        return lo
    if slope(hi) >= 0:
        return hi
    for _ in range(200):
        mid = 0.5 * (a + b)
        if slope(math.exp(mid)) > 0:
            a = mid
        else:
            b = mid
    return math.exp(0.5 * (a + b))


def unread_entries(fisher: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks of the parameters of output units the loss never reads: every Fisher entry of the unit is 0.

    A unit u of a Linear or Conv layer owns ``weight[u]`` and ``bias[u]``. Its Fisher is zero in every
    entry only when the loss's gradient never reaches its output (a learned-variance half of ADM's
    ``out.2`` or DiT's ``proj_out_2``, which the prediction loss drops), not by chance: a zero input
    would zero every unit. Such entries are zero by construction, so they carry no information for
    the marginal-likelihood λ and no posterior variance.
    """
    weight = fisher.get("weight")
    if weight is None or weight.dim() < 2:
        return {n: torch.zeros_like(f, dtype=torch.bool) for n, f in fisher.items()}
    unread = weight.flatten(1).sum(1) == 0
    if "bias" in fisher:
        unread &= fisher["bias"] == 0
    masks = {n: torch.zeros_like(f, dtype=torch.bool) for n, f in fisher.items()}
    masks["weight"] = unread.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()
    if "bias" in fisher:
        masks["bias"] = unread.clone()
    return masks


def auto_prior_precision(
    mean: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor], likelihood_scale: float
) -> float:
    """The marginal-likelihood λ (``optimal_prior_precision``) over the entries the loss reads (``unread_entries``)."""
    read = {n: ~m for n, m in unread_entries(fisher).items()}
    h = torch.cat([f.double()[read[n]] for n, f in fisher.items()]) * likelihood_scale
    theta_sq = sum(float(m.double()[read[n]].pow(2).sum()) for n, m in mean.items())
    return optimal_prior_precision(theta_sq, h)


# --- the posterior ----------------------------------------------------------------------------

_CONVENTION_TEXT = {
    FisherConvention.EF: "precision = (N/n)·H/σ⁴ + λ",
    FisherConvention.LAPLACE_TORCH: "laplace-torch: precision = (N/n)·2H/σ² + λ",
}


class DiagonalLaplacePosterior:
    """Diagonal Gaussian over the last layer's parameters.

    Build one with ``fit`` from a Fisher pass (see ``FisherAccumulationCallback``), or ``load``
    one from disk.

    Args:
        last_layer: dotted name of the layer in the denoiser.
        layer_type: class name of the layer (``Linear``, ``Conv2d``, …).
        mean: the pretrained parameters by short name (``weight``, ``bias``).
        fisher: the diagonal Fisher H by short name, same shapes, summed over n examples.
        num_examples: n, the examples the Fisher was summed over.
        dataset_size: N, the training-set size the likelihood is scaled to (default n).
        sigma: observation noise σ.
        prior_precision: λ.
        temperature: multiplies the posterior variance.
        fingerprint: ``fingerprint(layer, recurse=False)`` of the pretrained layer.
        info: extra facts kept in the file (how σ and λ were chosen, residual statistics).
        convention: how H enters the precision, ``ef`` or ``laplace_torch`` (``FisherConvention``).
    """

    def __init__(
        self,
        last_layer: str,
        layer_type: str,
        mean: Mapping[str, torch.Tensor],
        fisher: Mapping[str, torch.Tensor],
        num_examples: int,
        dataset_size: int | None = None,
        sigma: float = 1.0,
        prior_precision: float = 1.0,
        temperature: float = 1.0,
        fingerprint: str = "",
        info: Mapping[str, Any] | None = None,
        convention: FisherConvention | str = FisherConvention.EF,
    ) -> None:
        if set(mean) != set(fisher):
            raise ValueError(f"mean has parameters {sorted(mean)}, fisher has {sorted(fisher)}.")
        for n in mean:
            if mean[n].shape != fisher[n].shape:
                raise ValueError(f"Parameter {n!r}: mean {tuple(mean[n].shape)} vs fisher {tuple(fisher[n].shape)}.")
        if num_examples < 1:
            raise ValueError("num_examples must be at least 1.")
        if dataset_size is not None and dataset_size < num_examples:
            raise ValueError(
                f"dataset_size N = {dataset_size} is smaller than the {num_examples} examples the Fisher was summed "
                "over (n): N is the size of the training set those examples were drawn from, so N ≥ n ≥ 1. Leave "
                "dataset_size unset to use n, or give the training set's size."
            )
        scalars = (float(sigma), float(prior_precision), float(temperature))
        if not all(math.isfinite(v) for v in scalars) or sigma <= 0 or prior_precision <= 0 or temperature < 0:
            raise ValueError(
                "sigma and prior_precision must be positive and finite, and temperature finite and non-negative; got "
                f"{sigma}, {prior_precision}, {temperature}."
            )
        for n in mean:
            if not torch.isfinite(fisher[n]).all() or (fisher[n] < 0).any():
                raise ValueError(
                    f"The Fisher of {n!r} has NaN, infinite or negative entries, but a diagonal Fisher is a sum of "
                    "squares. Refit the posterior with `genunc fit_laplace`."
                )
            if not torch.isfinite(mean[n]).all():
                raise ValueError(
                    f"The pretrained {n!r} has NaN or infinite entries: the checkpoint is damaged or the model "
                    "diverged."
                )
        self.last_layer = last_layer
        self.layer_type = layer_type
        self.mean = {n: v.detach().cpu().clone() for n, v in mean.items()}
        self.fisher = {n: v.detach().cpu().double().clone() for n, v in fisher.items()}
        self.num_examples = int(num_examples)
        self.dataset_size = int(dataset_size) if dataset_size is not None else self.num_examples
        self.sigma = float(sigma)
        self.prior_precision = float(prior_precision)
        self.temperature = float(temperature)
        self.fingerprint = fingerprint
        self.info = dict(info or {})
        self.convention = fisher_convention(convention)
        # Masks of the parameters the loss never reads (``unread_entries``): they keep their trained values.
        self.unread = unread_entries(self.fisher)

    # -- fitting ---------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        layer: nn.Module,
        last_layer: str,
        fisher: Mapping[str, torch.Tensor],
        num_examples: int,
        squared_residual_sum: float,
        num_residuals: int,
        sigma: float | str = AUTO,
        prior_precision: float | str = AUTO,
        dataset_size: int | None = None,
        temperature: float = 1.0,
        convention: FisherConvention | str = FisherConvention.EF,
    ) -> DiagonalLaplacePosterior:
        """Builds the posterior around ``layer``'s current parameters from an accumulated Fisher.

        Args:
            layer: the pretrained last layer (its parameters become the mean).
            last_layer: its dotted name.
            fisher: H by parameter name, summed over ``num_examples`` examples.
            num_examples: n.
            squared_residual_sum: Σ r² over the pass, for ``sigma="auto"``.
            num_residuals: the number of entries in that sum.
            sigma: a positive float, or ``"auto"``: σ² = the mean squared residual.
            prior_precision: a positive float, or ``"auto"``: the λ maximising the diagonal-Laplace
                log marginal likelihood (computed with this ``convention``'s likelihood precision).
            dataset_size: N (default n).
            temperature: multiplies the posterior variance.
            convention: ``ef`` (precision (N/n)·H/σ⁴ + λ) or ``laplace_torch`` ((N/n)·2H/σ² + λ).

        Raises:
            ZeroFisherError: H is zero everywhere.
        """
        total = sum(float(v.double().abs().sum()) for v in fisher.values())
        if not math.isfinite(total):
            raise ValueError("The Fisher has NaN or inf entries: check the model and data for overflow.")
        if total == 0.0:
            raise ZeroFisherError(
                f"The Fisher of {last_layer!r} is zero everywhere: the loss does not change with this layer. "
                "Check that the named layer produces the prediction and that its output is not detached."
            )
        mse = mean_squared_residual(squared_residual_sum, num_residuals)
        sigma_value = math.sqrt(mse) if sigma == AUTO else float(sigma)
        n = int(num_examples)
        big_n = int(dataset_size) if dataset_size is not None else n
        mean = {k: v.detach().cpu().clone() for k, v in layer_parameters(layer).items()}
        if prior_precision == AUTO:
            scale = (big_n / n) * likelihood_precision_factor(convention, sigma_value)
            lam = auto_prior_precision(mean, fisher, scale)
        else:
            lam = float(prior_precision)
        info = {
            "sigma_mode": "auto" if sigma == AUTO else "fixed",
            "prior_precision_mode": "auto" if prior_precision == AUTO else "fixed",
            "mean_squared_residual": mse,
            "squared_residual_sum": float(squared_residual_sum),
            "num_residuals": int(num_residuals),
        }
        return cls(
            last_layer,
            type(layer).__name__,
            mean,
            fisher,
            n,
            big_n,
            sigma_value,
            lam,
            temperature,
            fingerprint(layer, recurse=False),
            info,
            convention,
        )

    def with_scale(
        self,
        sigma: float | None = None,
        prior_precision: float | None = None,
        temperature: float | None = None,
        dataset_size: int | None = None,
        convention: FisherConvention | str | None = None,
    ) -> DiagonalLaplacePosterior:
        """A copy with other σ, λ, temperature, N or convention (for sweeps); the Fisher is reused.

        A changed σ or λ is recorded as ``fixed`` in ``info`` (no automatic choice is re-run).
        """
        info = dict(self.info)
        if sigma is not None and sigma != self.sigma:
            info["sigma_mode"] = "fixed"
        if prior_precision is not None and prior_precision != self.prior_precision:
            info["prior_precision_mode"] = "fixed"
        return DiagonalLaplacePosterior(
            self.last_layer,
            self.layer_type,
            self.mean,
            self.fisher,
            self.num_examples,
            dataset_size if dataset_size is not None else self.dataset_size,
            sigma if sigma is not None else self.sigma,
            prior_precision if prior_precision is not None else self.prior_precision,
            temperature if temperature is not None else self.temperature,
            self.fingerprint,
            info,
            convention if convention is not None else self.convention,
        )

    def paper(self) -> DiagonalLaplacePosterior:
        """The paper's posterior, exactly as its public code fits it, from this Fisher.

        laplace-torch's regression EF with σ = λ = 1, N = n and temperature 1: precision 2H + 1.
        """
        return self.with_scale(
            sigma=1.0,
            prior_precision=1.0,
            temperature=1.0,
            dataset_size=self.num_examples,
            convention=FisherConvention.LAPLACE_TORCH,
        )

    # -- the distribution ------------------------------------------------------------------

    @property
    def likelihood_scale(self) -> float:
        """(N/n)·c, the factor that turns H into the likelihood precision (c: 1/σ⁴ or 2/σ²)."""
        return self.dataset_size / self.num_examples * likelihood_precision_factor(self.convention, self.sigma)

    @property
    def precision(self) -> dict[str, torch.Tensor]:
        """(N/n)·c·H + λ per parameter, float64 (c from the convention: 1/σ⁴ or 2/σ²)."""
        scale = self.likelihood_scale
        return {n: f * scale + self.prior_precision for n, f in self.fisher.items()}

    @property
    def variance(self) -> dict[str, torch.Tensor]:
        """Temperature / precision per parameter, float64; 0 for parameters the loss never reads (``unread``).

        The data says nothing about an unread parameter (a learned-variance output), so it keeps its
        trained value rather than the prior's spread, which a sampler reading that output would turn
        into noise of the prior's making.
        """
        return {n: (self.temperature / p).masked_fill(self.unread[n], 0.0) for n, p in self.precision.items()}

    @property
    def std(self) -> dict[str, torch.Tensor]:
        """Posterior standard deviation per parameter, float64."""
        return {n: v.sqrt() for n, v in self.variance.items()}

    @property
    def num_params(self) -> int:
        """Number of last-layer parameters."""
        return sum(m.numel() for m in self.mean.values())

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Draws ``num_samples`` weight sets, stacked on a leading dimension, on the CPU.

        The same generator state gives bit-identical draws, also after ``save`` and ``load``.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
        out = {}
        for name, std in self.std.items():
            noise = torch.randn((num_samples, *std.shape), generator=generator, dtype=torch.float64)
            out[name] = (self.mean[name].double() + std * noise).to(self.mean[name].dtype)
        return out

    def zero_variance(self) -> DiagonalLaplacePosterior:
        """The same posterior at temperature 0: every draw equals the mean."""
        return self.with_scale(temperature=0.0)

    # -- model checks ----------------------------------------------------------------------

    def check_compatible(self, model: nn.Module, last_layer: str | None = None) -> nn.Module:
        """Checks that ``model`` holds the pretrained layer this posterior was fitted on.

        Args:
            model: the denoiser (the module in which ``last_layer`` is a dotted name).
            last_layer: the layer the caller will apply the posterior's weights to (an adapter's
                ``last_layer``); it must be the posterior's own.

        Returns:
            The model's last layer.

        Raises:
            PosteriorMismatchError: ``last_layer`` is another layer than the posterior's, or the layer
                is missing, differs in type or shape, or holds other weights than the ones the
                posterior was fitted around.
        """
        if last_layer is not None and last_layer != self.last_layer:
            raise PosteriorMismatchError(
                f"The posterior was fitted on last layer {self.last_layer!r}, but the adapter's last_layer is "
                f"{last_layer!r}: set the adapter's last_layer to {self.last_layer!r}, or fit a posterior for "
                f"{last_layer!r} with `genunc fit_laplace`."
            )
        try:
            layer = resolve_last_layer(model, self.last_layer)
        except LastLayerError as err:
            raise PosteriorMismatchError(
                f"The posterior is for last layer {self.last_layer!r} ({self._describe()}), "
                f"which this {type(model).__name__} does not have: {err}"
            ) from err
        params = layer_parameters(layer)
        model_desc = ", ".join(f"{n} {tuple(p.shape)}" for n, p in params.items())
        if type(layer).__name__ != self.layer_type or {n: tuple(p.shape) for n, p in params.items()} != {
            n: tuple(m.shape) for n, m in self.mean.items()
        }:
            raise PosteriorMismatchError(
                f"The posterior is for {self.last_layer!r} = {self.layer_type} with {self._describe()}, but this "
                f"model's {self.last_layer!r} is {type(layer).__name__} with {model_desc}."
            )
        fp = fingerprint(layer, recurse=False)
        if self.fingerprint and fp != self.fingerprint:
            raise PosteriorMismatchError(
                f"The posterior was fitted on other weights of {self.last_layer!r} (fingerprint "
                f"{self.fingerprint[:12]}…) than this model holds ({fp[:12]}…): load the checkpoint the "
                "posterior was fitted on, or fit a new posterior for this one."
            )
        return layer

    def _describe(self) -> str:
        return ", ".join(f"{n} {tuple(m.shape)}" for n, m in self.mean.items())

    # -- persistence -----------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        """The file metadata: every scalar needed to rebuild the posterior, as strings."""
        from genunc_lightning import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "last_layer": self.last_layer,
            "layer_type": self.layer_type,
            "shapes": json.dumps({n: list(m.shape) for n, m in self.mean.items()}),
            "num_examples": str(self.num_examples),
            "dataset_size": str(self.dataset_size),
            "sigma": repr(self.sigma),
            "prior_precision": repr(self.prior_precision),
            "temperature": repr(self.temperature),
            "fingerprint": self.fingerprint,
            "convention": self.convention.value,
            "package_version": __version__,
            "info": json.dumps(self.info),
        }

    def save(self, path: str | Path) -> Path:
        """Writes one safetensors file atomically (mean.*, fisher.* and the metadata)."""
        tensors = {f"mean.{n}": m for n, m in self.mean.items()}
        tensors.update({f"fisher.{n}": f for n, f in self.fisher.items()})
        return save_safetensors_atomic(tensors, path, "the posterior", self.metadata())

    @classmethod
    def load(cls, path: str | Path, upgrade: bool = False) -> DiagonalLaplacePosterior:
        """Reads a file written by ``save``.

        Files of format version 1 (genunc-lightning 0.1) meant precision = (N/n)·H/σ² + λ, which is
        neither convention: they are refused, unless ``upgrade`` re-scores their Fisher as ``ef``.
        H itself is convention-free, so no new Fisher pass is needed: an ``auto`` σ stays the recorded
        mean squared residual, an ``auto`` λ is re-maximised, fixed values are kept.

        Args:
            path: the safetensors file.
            upgrade: read a version-1 file with the ``ef`` convention instead of refusing it.

        Raises:
            PosteriorFileError: the file is missing, truncated, not a genunc-lightning posterior, or of
                version 1 without ``upgrade``.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PosteriorFileError(f"No posterior file at {path}: run `genunc fit_laplace` to create one.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise PosteriorFileError(
                f"{path} is truncated or not a safetensors file ({err}). Re-create it with `genunc fit_laplace`."
            ) from err
        if meta.get("format") != FORMAT:
            raise PosteriorFileError(
                f"{path} is a safetensors file but not a genunc-lightning posterior (format "
                f"{meta.get('format')!r}, expected {FORMAT!r})."
            )
        version = meta.get("format_version")
        if version == "1" and not upgrade:
            raise PosteriorFileError(
                f"{path} was written by genunc-lightning 0.1, whose precision (N/n)·H/σ² + λ was off by a factor "
                "σ² for the empirical Fisher. Refit it with `genunc fit_laplace` (same config), or re-score its "
                "Fisher without a new pass: DiagonalLaplacePosterior.load(path, upgrade=True)."
            )
        if version not in (FORMAT_VERSION, "1"):
            raise PosteriorFileError(
                f"{path} has posterior format version {version!r}; this version of genunc-lightning reads "
                f"version {FORMAT_VERSION} (and version 1 with upgrade=True)."
            )
        try:
            shapes = json.loads(meta["shapes"])
            mean = {n: tensors[f"mean.{n}"] for n in shapes}
            fisher = {n: tensors[f"fisher.{n}"] for n in shapes}
            post = cls(
                meta["last_layer"],
                meta["layer_type"],
                mean,
                fisher,
                int(meta["num_examples"]),
                int(meta["dataset_size"]),
                float(meta["sigma"]),
                float(meta["prior_precision"]),
                float(meta["temperature"]),
                meta["fingerprint"],
                json.loads(meta.get("info", "{}")),
                meta["convention"] if version == FORMAT_VERSION else FisherConvention.EF,
            )
        except (KeyError, ValueError) as err:
            raise PosteriorFileError(f"{path} is not a valid posterior file: {err}") from err
        return post if version == FORMAT_VERSION else post._rescored_from_version_1()

    def _rescored_from_version_1(self) -> DiagonalLaplacePosterior:
        lam = self.prior_precision
        if self.info.get("prior_precision_mode") == AUTO:
            lam = auto_prior_precision(self.mean, self.fisher, self.likelihood_scale)
        info = {**self.info, "upgraded_from_format_version": "1", "version_1_prior_precision": self.prior_precision}
        return DiagonalLaplacePosterior(
            self.last_layer, self.layer_type, self.mean, self.fisher, self.num_examples, self.dataset_size,
            self.sigma, lam, self.temperature, self.fingerprint, info, FisherConvention.EF,
        )  # fmt: skip

    # -- reporting and interop -------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Scalars worth printing: sizes, σ, λ, Fisher and posterior-std ranges (over the parameters the loss reads)."""
        read = {n: ~m for n, m in self.unread.items()}
        h = torch.cat([f[read[n]] for n, f in self.fisher.items()])
        std = torch.cat([s[read[n]] for n, s in self.std.items()])
        mean = torch.cat([m.double()[read[n]] for n, m in self.mean.items()])
        weight = self.unread["weight"]
        unread_units = int(weight.flatten(1).all(1).sum()) if weight.dim() > 1 else 0  # whole rows of the weight
        return {
            "unread_parameters": self.num_params - h.numel(),
            "unread_units": unread_units,
            "last_layer": f"{self.last_layer} ({self.layer_type}, {self.num_params} parameters)",
            "examples": self.num_examples,
            "dataset_size": self.dataset_size,
            "sigma": self.sigma,
            "sigma_mode": self.info.get("sigma_mode", "fixed"),
            "prior_precision": self.prior_precision,
            "prior_precision_mode": self.info.get("prior_precision_mode", "fixed"),
            "temperature": self.temperature,
            "convention": self.convention.value,
            "fisher_min": h.min().item(),
            "fisher_median": h.median().item(),
            "fisher_max": h.max().item(),
            "std_min": std.min().item(),
            "std_median": std.median().item(),
            "std_max": std.max().item(),
            "weight_rms": mean.pow(2).mean().sqrt().item(),
        }

    def format_summary(self) -> str:
        """``summary`` as aligned text lines."""
        s = self.summary()
        return "\n".join(
            [
                "Diagonal last-layer Laplace posterior",
                f"  last layer       {s['last_layer']}",
                f"  examples seen    n = {s['examples']} (likelihood scaled to N = {s['dataset_size']})",
                f"  sigma            {s['sigma']:.4g} ({s['sigma_mode']})",
                f"  prior precision  {s['prior_precision']:.4g} ({s['prior_precision_mode']})",
                f"  temperature      {s['temperature']:.4g}",
                f"  convention       {s['convention']} ({_CONVENTION_TEXT[self.convention]})",
                f"  Fisher           min {s['fisher_min']:.3g}  median {s['fisher_median']:.3g}  "
                f"max {s['fisher_max']:.3g}",
                f"  posterior std    min {s['std_min']:.3g}  median {s['std_median']:.3g}  "
                f"max {s['std_max']:.3g}  (weight rms {s['weight_rms']:.3g})",
            ]
            + (
                [
                    f"  left out         {s['unread_parameters']} parameters of {s['unread_units']} output "
                    f"unit{'s' if s['unread_units'] != 1 else ''} the loss never reads (Fisher 0 by construction, "
                    "e.g. a learned variance): trained values kept, not in λ or the statistics above"
                ]
                if s["unread_parameters"]
                else []
            )
        )

    def __repr__(self) -> str:
        return (
            f"DiagonalLaplacePosterior(last_layer={self.last_layer!r}, params={self.num_params}, "
            f"n={self.num_examples}, N={self.dataset_size}, sigma={self.sigma:.4g}, "
            f"prior_precision={self.prior_precision:.4g}, temperature={self.temperature:.4g}, "
            f"convention={self.convention.value!r})"
        )

    def to_laplace_torch(self, model: nn.Module) -> Any:
        """Exports to a fitted ``laplace.DiagLLLaplace`` with the same posterior (nn.Linear only).

        laplace-torch's precision is H_la/σ² + λ (its temperature 1). The export sets
        ``H_la = σ²·(N/n)·c·H / T`` (c from this posterior's convention) and ``prior_precision = λ / T``,
        so that its ``posterior_precision`` is ours and its ``posterior_variance`` equals
        ``self.variance`` (flattened weight, then bias), in either convention. For ``paper()`` that is
        H_la = 2H: exactly what laplace-torch's own ``fit`` computes on the same batches. Parameters the loss
        never reads (``unread``) are the exception: variance 0 here, the prior's there, which has no such notion.

        Args:
            model: the model whose last layer this posterior belongs to; laplace-torch deep-copies it.
        """
        from laplace import DiagLLLaplace

        layer = self.check_compatible(model)
        if not isinstance(layer, nn.Linear):
            raise LastLayerError(
                f"laplace-torch's last-layer Laplace supports only nn.Linear last layers; {self.last_layer!r} is "
                f"{self.layer_type}. Use this posterior directly instead."
            )
        la = DiagLLLaplace(
            model,
            "regression",
            sigma_noise=self.sigma,
            prior_precision=self.prior_precision / self.temperature,
            temperature=1.0,
            last_layer_name=self.last_layer,
        )
        dtype = next(iter(self.mean.values())).dtype
        device = next(iter(layer_parameters(layer).values())).device
        scale = self.sigma**2 * self.likelihood_scale / self.temperature
        la.H = (torch.cat([f.flatten() for f in self.fisher.values()]) * scale).to(device, dtype)
        la.mean = torch.cat([m.flatten() for m in self.mean.values()]).to(device, dtype)
        la.n_data = self.dataset_size
        la.loss = 0.5 * self.info.get("squared_residual_sum", 0.0) * self.dataset_size / self.num_examples
        return la
