"""diffusers models and schedulers (optional extra: ``pip install genunc-lightning[diffusers]``).

Importing this module needs no diffusers; constructing ``DiffusersAdapter`` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters.base import DiffusionAdapter, class_conditional_hint
from genunc_lightning.adapters.layers import original_module
from genunc_lightning.adapters.samplers import NoiseSource, append_dims, check_scheduler, sample_with_scheduler

# Schedulers whose samples are tested against their own loop (tests/test_schedulers.py); any other with the
# same set_timesteps / scale_model_input / step API runs through the same loop.
TESTED_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "LCMScheduler",
    "FlowMatchEulerDiscreteScheduler",
)


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler`` samples a flow-matching model (SD3's ``FlowMatch…`` schedulers)."""
    return type(scheduler).__name__.startswith("FlowMatch")


DEFAULT_LAST_LAYER = {
    "UNet2DModel": "conv_out",
    "UNet2DConditionModel": "conv_out",
    "DiTTransformer2DModel": "proj_out_2",
    "PixArtTransformer2DModel": "proj_out",
    "SD3Transformer2DModel": "proj_out",
}


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("DiffusersAdapter needs diffusers: pip install 'genunc-lightning[diffusers]'.") from err
    return diffusers


def _stable_diffusion_prompts(pipe: Any) -> Callable[[list[str]], dict[str, Any]]:
    """Stable Diffusion's own prompt encoding (``pipe.encode_prompt``), as the UNet's keyword arguments.

    The pipeline encodes a negative prompt (the empty one by default) the way it encodes a prompt, so
    the unconditional branch's texts go through the same function.
    """

    def encode(prompts: list[str]) -> dict[str, Any]:
        device = next(pipe.unet.parameters()).device
        return {"encoder_hidden_states": pipe.encode_prompt(prompts, device, 1, False)[0]}

    return encode


def _stable_diffusion_xl_prompts(pipe: Any, size: tuple[int, int]) -> Callable[..., dict[str, Any]]:
    """SDXL's own prompt encoding: both text encoders' embeddings, the pooled embedding and the added time ids.

    As the pipeline does with ``force_zeros_for_empty_prompt`` (its default), the unconditional branch's
    empty prompt is zeros; time ids are those of ``size`` (original and target), crops at (0, 0).
    """

    def encode(prompts: list[str], negative: bool = False) -> dict[str, Any]:
        device = next(pipe.unet.parameters()).device
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)  # fmt: skip
        if negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        projection = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
        time_ids = pipe._get_add_time_ids(
            size, (0, 0), size, dtype=embeds.dtype, text_encoder_projection_dim=projection
        )
        time_ids = time_ids.to(device).repeat(len(prompts), 1)
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    return encode


def _pixart_prompts(pipe: Any) -> Callable[[list[str]], dict[str, Any]]:
    """PixArt-α's own prompt encoding (T5, with its attention mask), as the transformer's keyword arguments.

    The pipeline's default negative prompt is the empty one, encoded like a prompt. Resolution and
    aspect-ratio conditioning are ``None``, as the pipeline has them for every model but the 1024² one.
    """

    def encode(prompts: list[str]) -> dict[str, Any]:
        device = next(pipe.transformer.parameters()).device
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                clean_caption=False)  # fmt: skip
        added = {"resolution": None, "aspect_ratio": None}
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "added_cond_kwargs": added}

    return encode


def _stable_diffusion_3_prompts(pipe: Any) -> Callable[[list[str]], dict[str, Any]]:
    """SD3's own prompt encoding: the CLIP and T5 embeddings joined, and the pooled CLIP embeddings.

    The pipeline's default negative prompt is the empty one, encoded like a prompt.
    """

    def encode(prompts: list[str]) -> dict[str, Any]:
        device = next(pipe.transformer.parameters()).device
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                                  do_classifier_free_guidance=False)  # fmt: skip
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    return encode


TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def pipeline_arguments(
    pipe: Any,
    guidance_scale: float = 1.0,
    steps: int = 50,
    last_layer: str | None = None,
    height: int | None = None,
    width: int | None = None,
) -> dict[str, Any]:
    """``DiffusersAdapter``'s arguments for a pipeline: its network, scheduler, VAE, sample shape and conditioning.

    Raises:
        TypeError: ``pipe`` is not a pipeline of a supported kind.
        ValueError: a guidance scale in (0, 1), which the pipelines treat as none.
    """
    kind = type(pipe).__name__
    scheduler, vae = getattr(pipe, "scheduler", None), getattr(pipe, "vae", None)
    network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if network is None or scheduler is None:
        raise TypeError(
            f"{kind} is not a diffusers pipeline with a unet or transformer and a scheduler: pass the pipeline "
            "itself (e.g. StableDiffusionPipeline.from_pretrained(path)), or build DiffusersAdapter(network, "
            "scheduler, sample_shape)."
        )
    if guidance_scale < 0 or 0 < guidance_scale < 1:
        raise ValueError(
            f"guidance_scale={guidance_scale:g}: diffusers pipelines treat a scale <= 1 as no guidance, so the "
            "kept sample could not equal the pipeline's. Give 1 (no guidance) or a scale > 1."
        )
    config = network.config
    size = config.sample_size
    if vae is not None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        shape = (config.in_channels, (height or size * factor) // factor, (width or size * factor) // factor)
    else:
        shape = (config.in_channels, height or size, width or size)
    arguments = dict(denoiser=network, scheduler=scheduler, sample_shape=shape, last_layer=last_layer, steps=steps,
                     vae=vae, guidance_scale=float(guidance_scale) if guidance_scale > 1 else 1.0)  # fmt: skip
    if kind in ("DDPMPipeline", "DDIMPipeline"):
        return arguments
    if kind == "DiTPipeline":
        return {**arguments, "num_classes": config.num_embeds_ada_norm, "null_class": config.num_embeds_ada_norm}
    if kind == "StableDiffusionPipeline":
        return {**arguments, "prompt_encoder": _stable_diffusion_prompts(pipe)}
    if kind == "PixArtAlphaPipeline":
        if config.sample_size == 128:
            raise TypeError(
                "PixArt-α at 1024² conditions on resolution and aspect ratio, which from_pipeline does not pass yet: "
                "use the 256² or 512² model, or DiffusersAdapter(..., prompt_encoder=...) with those added."
            )
        return {**arguments, "prompt_encoder": _pixart_prompts(pipe)}
    if kind == "StableDiffusion3Pipeline":
        return {**arguments, "prompt_encoder": _stable_diffusion_3_prompts(pipe)}
    if kind == "StableDiffusionXLPipeline":
        pixels = (shape[1] * factor, shape[2] * factor)
        return {**arguments, "prompt_encoder": _stable_diffusion_xl_prompts(pipe, pixels)}
    raise TypeError(
        f"{kind} is not supported by from_pipeline yet; supported: DDPMPipeline, DDIMPipeline, DiTPipeline, "
        "StableDiffusionPipeline, StableDiffusionXLPipeline, PixArtAlphaPipeline, StableDiffusion3Pipeline. Build "
        "DiffusersAdapter(network, "
        "scheduler, sample_shape, prompt_encoder=...)."
    )


class DiffusersAdapter(DiffusionAdapter):
    """Adapter for a network with a diffusers scheduler: diffusers' UNets and transformers, or any other network.

    Any scheduler with diffusers' ``set_timesteps`` / ``scale_model_input`` / ``step`` API samples
    (``sample_with_scheduler``: DDPM, DDIM, PNDM, Euler, Euler ancestral, Heun, KDPM2 (ancestral), LMS,
    DPM-Solver (multistep with Karras σ or SDE, singlestep), DEIS, UniPC, LCM, FlowMatchEuler; each
    tested against its own loop). A network that is not a diffusers model (U-ViT, ADM, your own) works
    too: name its ``last_layer``, give ``sample_shape``, and override ``call_denoiser`` when it is not
    called as ``network(x, t)``. The Fisher loss follows the scheduler's ``prediction_type`` (``epsilon``,
    ``v_prediction``, ``sample``) on its training ᾱ. A model that learns its variance (output channels =
    2 × input channels, as DiT) contributes only the first half, the prediction, to the loss and the sampler.
    With a ``vae``, the model is a latent model: training images are encoded to latent means (× the VAE's scaling
    factor) and samples are decoded before any feature extractor sees them.

    Sampling runs a copy of the scheduler per call (multistep schedulers keep state), and each
    sample's noise (initial and per step) comes from its own seeded generator.

    Args:
        denoiser: the network (a diffusers model, or any ``nn.Module``).
        scheduler: a diffusers scheduler (a flow-matching one with its shift included).
        sample_shape: shape of one sample (latent shape for latent models).
        last_layer: dotted name of the last layer (default: ``DEFAULT_LAST_LAYER`` of the network's class).
        num_classes: classes for class-conditional models (``class_labels``).
        steps: sampling steps.
        encoder_hidden_states: fixed cross-attention conditioning for UNet2DConditionModel, shape
            [1, tokens, dim] (e.g. the embedding of an empty prompt).
        vae: an ``AutoencoderKL`` for latent models, or ``None``.
        image_range: pixel range of the data (of the VAE's output for latent models).
        guidance_scale: classifier-free guidance w (1: off); see ``DiffusionAdapter``.
        null_class: the unconditional label of a guided class-conditional model (DiT: ``num_classes``).
        prompt_encoder: for a text model, a function from a list of P prompts to the network's keyword
            arguments for them, each a tensor [P, ...] (or a dict of such tensors): for Stable Diffusion
            ``{"encoder_hidden_states": embeddings}``. ``from_pipeline`` builds it from the pipeline's
            own ``encode_prompt``.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        scheduler: Any,
        sample_shape: Sequence[int],
        last_layer: str | None = None,
        num_classes: int | None = None,
        steps: int = 50,
        encoder_hidden_states: torch.Tensor | None = None,
        vae: nn.Module | None = None,
        image_range: tuple[float, float] = (-1.0, 1.0),
        guidance_scale: float = 1.0,
        null_class: int | None = None,
        prompt_encoder: Callable[[list[str]], dict[str, Any]] | None = None,
    ) -> None:
        _require_diffusers()
        self._prompt_encoder = prompt_encoder  # before the base checks guidance against takes_prompts
        kind = type(denoiser).__name__
        if last_layer is None:
            if kind not in DEFAULT_LAST_LAYER:
                raise ValueError(f"Name the last layer of a {kind}: defaults exist for {sorted(DEFAULT_LAST_LAYER)}.")
            last_layer = DEFAULT_LAST_LAYER[kind]
        if num_classes is not None and class_conditional_hint(denoiser) is None:
            raise ValueError(
                f"num_classes={num_classes}, but this {kind} has no class embedding (config num_class_embeds, "
                "class_embed_type or num_embeds_ada_norm): its labels would be ignored. Leave num_classes unset, or "
                "give captions to a text model (DiffusersAdapter.from_pipeline)."
            )
        if prompt_encoder is not None and (num_classes is not None or encoder_hidden_states is not None):
            raise ValueError("A text model's adapter takes prompts: leave num_classes and encoder_hidden_states unset.")
        super().__init__(denoiser, last_layer, sample_shape, num_classes, image_range, vae, guidance_scale, null_class)
        check_scheduler(scheduler)
        if not is_flow_scheduler(scheduler) and getattr(scheduler, "alphas_cumprod", None) is None:
            raise ValueError(
                f"{type(scheduler).__name__} has no alphas_cumprod, the training schedule the Fisher pass noises with: "
                "use a scheduler built from the network's betas (DDPM-family or FlowMatch schedulers)."
            )
        if kind == "UNet2DConditionModel" and encoder_hidden_states is None and prompt_encoder is None:
            raise ValueError(
                "A UNet2DConditionModel needs prompts (DiffusersAdapter.from_pipeline(pipe)) or fixed "
                "encoder_hidden_states (e.g. an empty prompt's embedding)."
            )
        # A fresh scheduler of the same config: the pipeline's own is changed by every call of the pipeline
        # (set_timesteps), which would move a flow scheduler's training σ grid under the Fisher pass.
        self.scheduler = type(scheduler).from_config(scheduler.config)
        self.steps = int(steps)
        # Flow matching (SD3): x_t = (1 − σ) x0 + σ ε, the network predicts the velocity ε − x0.
        self.prediction_type = "flow" if is_flow_scheduler(scheduler) else scheduler.config.prediction_type
        if encoder_hidden_states is not None:
            self.register_buffer("encoder_hidden_states", encoder_hidden_states.detach(), persistent=False)
        else:
            self.encoder_hidden_states = None
        config = getattr(original_module(denoiser), "config", None)  # a network of another library has none
        in_ch = getattr(config, "in_channels", sample_shape[0])
        out_ch = getattr(config, "out_channels", in_ch) or in_ch
        self.prediction_channels = in_ch if out_ch == 2 * in_ch else None
        positional = list(inspect.signature(original_module(denoiser).forward).parameters)
        self._timestep_positional = len(positional) > 1 and positional[1] in ("timestep", "t", "timesteps")

    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        guidance_scale: float = 1.0,
        steps: int = 50,
        negative_prompt: str | None = None,
        last_layer: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> DiffusersAdapter:
        """The adapter of a diffusers pipeline: its own network, scheduler, VAE and prompt encoding.

        A kept sample equals the pipeline's own output for the same prompt (or class), guidance, steps
        and ``generator=torch.Generator().manual_seed(seed)``, with ``seed`` the value in the sample's
        row of ``scores.csv``, so a flagged sample can be regenerated with the user's own pipeline.

        Pipelines: ``DDPMPipeline`` / ``DDIMPipeline`` (unconditional), ``DiTPipeline`` (classes, null
        class ``num_classes``), and the text pipelines ``StableDiffusionPipeline``,
        ``StableDiffusionXLPipeline``, ``PixArtAlphaPipeline`` and ``StableDiffusion3Pipeline``.

        Args:
            pipe: the pipeline.
            guidance_scale: classifier-free guidance w; as the pipelines do, w ≤ 1 means none (give 1 or > 1).
            steps: the pipeline's ``num_inference_steps``.
            negative_prompt: the default negative prompt of a text model (``PromptDataModule``'s, if it gives
                one, applies instead).
            last_layer: the Bayesian layer (default: the network family's).
            height: image height in pixels (default: the pipeline's).
            width: image width in pixels (default: the pipeline's).

        Raises:
            TypeError: ``pipe`` is not a pipeline of a supported kind.
        """
        adapter = cls(**pipeline_arguments(pipe, guidance_scale, steps, last_layer, height, width))
        adapter.attach_pipeline(pipe, negative_prompt)
        return adapter

    def attach_pipeline(self, pipe: Any, negative_prompt: str | None) -> None:
        """Keeps the pipeline's text encoders as submodules: they move with the adapter and count in its identity."""
        self.negative_prompt = negative_prompt
        for name in TEXT_ENCODERS:
            encoder = getattr(pipe, name, None)
            if isinstance(encoder, nn.Module):
                setattr(self, name, encoder)

    @property
    def takes_prompts(self) -> bool:  # type: ignore[override]
        """Whether the network is conditioned on text (a ``prompt_encoder`` was given)."""
        return self._prompt_encoder is not None

    def encode_prompts(self, prompts: list[str], negative: bool = False) -> dict[str, Any]:
        """The network's keyword arguments for ``prompts`` (``prompt_encoder``'s output).

        A ``prompt_encoder`` with a ``negative`` parameter is told when the texts are the unconditional branch's.
        """
        if self._prompt_encoder is None:
            return super().encode_prompts(prompts, negative)
        takes_negative = "negative" in inspect.signature(self._prompt_encoder).parameters
        with torch.no_grad():
            if takes_negative:
                return self._prompt_encoder(list(prompts), negative=negative)
            return self._prompt_encoder(list(prompts))

    def call_denoiser(self, x: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
        """The model's prediction (the first half of the channels when it learns its variance).

        ``y`` is class labels, or a text model's keyword arguments (``encode_prompts``), or ``None``.
        """
        kwargs: dict[str, Any] = {}
        if isinstance(y, dict):
            kwargs.update(y)
        elif y is not None:
            kwargs["class_labels"] = y
        if self.encoder_hidden_states is not None:
            ehs = self.encoder_hidden_states.to(x.dtype)
            kwargs["encoder_hidden_states"] = ehs.expand(x.shape[0], *ehs.shape[1:])
        if self._timestep_positional:
            out = self.denoiser(x, t, **kwargs)
        else:  # transformers (DiT, PixArt) take the text before the timestep: pass it by name
            out = self.denoiser(x, timestep=t, **kwargs)
        out = getattr(out, "sample", out)  # a diffusers model's output object; another network's tensor
        return out[:, : self.prediction_channels] if self.prediction_channels else out

    def residual(self, batch: Any, seeds: torch.Tensor) -> torch.Tensor:
        """Prediction − target at a per-example training timestep and Gaussian noise.

        For flow matching the timestep is drawn uniformly from the scheduler's training σ grid (its shift
        included): the noise levels its sampler visits, not SD3's logit-normal training density.
        """
        x0, y = self.training_data(batch)
        gens = seeding.generators(seeds, x0.device)
        eps = seeding.randn(gens, x0.shape[1:], x0.device, x0.dtype)
        if self.prediction_type == "flow":
            sigmas = self.scheduler.sigmas.to(x0.device, x0.dtype)
            sigma = sigmas[seeding.randint(gens, len(sigmas), x0.device)]
            s = append_dims(sigma, x0.dim())
            t = sigma * self.scheduler.config.num_train_timesteps
            return self.call_denoiser_checked((1 - s) * x0 + s * eps, t, y) - (eps - x0)
        t = seeding.randint(gens, self.scheduler.config.num_train_timesteps, x0.device)
        # The training forward process on the scheduler's ᾱ, as DDPMScheduler.add_noise computes it: a sampling
        # scheduler's own add_noise (Euler, UniPC) takes only its inference timesteps.
        a = append_dims(self.scheduler.alphas_cumprod.to(x0.device, x0.dtype)[t], x0.dim())
        sa, sb = a**0.5, (1 - a) ** 0.5
        xt = sa * x0 + sb * eps
        if self.prediction_type == "epsilon":
            target = eps
        elif self.prediction_type == "v_prediction":
            target = sa * eps - sb * x0
        elif self.prediction_type == "sample":
            target = x0
        else:
            raise ValueError(f"Unsupported prediction_type {self.prediction_type!r}.")
        return self.call_denoiser_checked(xt, t, y) - target

    def _sample(self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int | None) -> torch.Tensor:
        source = NoiseSource.like(seeds, self.denoiser)
        y = classes.to(source.device) if classes is not None else None
        output = lambda x, t: self.call_denoiser_checked(x, t, y)  # noqa: E731 - t: the scheduler's own timestep
        return sample_with_scheduler(output, self.scheduler, steps or self.steps, source, self.sample_shape)


class DiffusersPipelineAdapter(DiffusersAdapter):
    """``DiffusersAdapter.from_pipeline`` of a pipeline folder on disk, for configs: ``pretrained: /models/sd15``.

    LightningCLI builds it from YAML (``model.adapter.class_path``); the folder is read with
    ``DiffusionPipeline.from_pretrained(pretrained, local_files_only=True)``, so a missing file fails at
    once instead of reaching for a hub.

    Args:
        pretrained: the pipeline's folder (``model_index.json`` and its parts).
        guidance_scale: classifier-free guidance w (1: none).
        steps: the pipeline's ``num_inference_steps``.
        negative_prompt: the default negative prompt of a text model.
        last_layer: the Bayesian layer (default: the network family's).
        height: image height in pixels (default: the pipeline's).
        width: image width in pixels (default: the pipeline's).
    """

    def __init__(
        self,
        pretrained: str,
        guidance_scale: float = 1.0,
        steps: int = 50,
        negative_prompt: str | None = None,
        last_layer: str | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        diffusers = _require_diffusers()
        if not (Path(pretrained) / "model_index.json").is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is not a diffusers pipeline folder (no model_index.json): give the folder "
                "that pipe.save_pretrained(...) wrote, on local disk."
            )
        pipe = diffusers.DiffusionPipeline.from_pretrained(pretrained, local_files_only=True)
        super().__init__(**pipeline_arguments(pipe, guidance_scale, steps, last_layer, height, width))
        self._pretrained = str(pretrained)  # where it was read from; the weights' fingerprint identifies it
        self.attach_pipeline(pipe, negative_prompt)
