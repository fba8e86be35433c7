"""Feature extractors for the semantic likelihood and the metrics, from local weight files only.

Every extractor takes decoded images in [0, 1] ([N, C, H, W]; 1-channel images are repeated to 3)
and returns features [N, D]. Weights always come from a local file (or, for open_clip tags, the
local Hugging Face cache): nothing is downloaded at run time unless ``allow_download=True``, and a
missing file fails at once with a message that says how to pass one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from genunc_lightning.checkpoints import CheckpointError, load_state_dict
from genunc_lightning.fingerprints import fingerprint

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MissingWeightsError(FileNotFoundError):
    """A feature extractor's weights are not available locally."""


def require_weights_file(path: str | os.PathLike | None, what: str, how: str) -> Path:
    """``path`` when it is a file; else a ``MissingWeightsError`` that names ``what`` and says ``how`` to supply one."""
    if path is None or not Path(path).is_file():
        raise MissingWeightsError(f"No weights file for {what} at {path!r}. {how}")
    return Path(path)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """[N, 1 or 3, H, W] -> [N, 3, H, W]."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Expected images [N, 1 or 3, H, W] in [0, 1], got shape {tuple(images.shape)}.")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of the shorter side to ``size`` (antialiased when shrinking), then a centre crop.

    torchvision's functional transforms, as CLIP's and timm's own preprocessing use them.
    """
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = TF.resize(images, [nh, nw], interpolation=InterpolationMode.BICUBIC, antialias=scale < 1)
    return TF.center_crop(x, [size, size])


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel standardisation."""
    return TF.normalize(images, list(mean), list(std))


class FeatureExtractor(nn.Module):
    """Base class: preprocessing plus a network; ``manifest_entry()`` names it in run manifests."""

    def manifest_entry(self) -> dict[str, Any]:
        """Class and weight fingerprint."""
        return {"class": type(self).__name__, "fingerprint": fingerprint(self)}


class ModuleEncoder(FeatureExtractor):
    """Any nn.Module as a feature extractor, with optional resize and normalisation.

    Args:
        module: maps preprocessed images to features (flattened to [N, D]).
        image_size: resize-and-crop size, or ``None`` to keep the input size.
        mean: per-channel mean for normalisation, or ``None``.
        std: per-channel std for normalisation, or ``None``.
        rgb: repeat 1-channel images to 3 channels first.
    """

    def __init__(
        self,
        module: nn.Module,
        image_size: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        rgb: bool = False,
    ) -> None:
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.image_size, self.mean, self.std, self.rgb = image_size, mean, std, rgb

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features [N, D] of images in [0, 1]."""
        x = to_rgb(images) if self.rgb else images
        if self.image_size is not None:
            x = resize_center_crop(x, self.image_size)
        if self.mean is not None and self.std is not None:
            x = normalize(x, self.mean, self.std)
        return self.module(x).flatten(1)


def _open_clip_local_weights(model_name: str, tag: str, cache_dir: str | None) -> str | None:
    """The cached file of an open_clip pretrained tag, or None (never downloads)."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name, tag)
    if not cfg:
        return None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str) and Path(found).is_file():
                return found
    url = cfg.get("url", "")
    if url:
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


class OpenCLIPEncoder(FeatureExtractor):
    """CLIP image features (raw, unnormalised, as the paper uses for σ_s² = 1e-3).

    Preprocessing on tensors: bicubic resize of the shorter side, centre crop, CLIP mean/std.

    Args:
        model_name: open_clip model name, e.g. ``ViT-B-32``.
        pretrained: a local checkpoint path, or an open_clip tag (e.g. ``openai``) found in the local
            cache. Required: random CLIP features are meaningless.
        cache_dir: where cached weights live.
        allow_download: let open_clip download a tag that is not cached.
        normalize_features: L2-normalise the features (the paper does not).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        cache_dir: str | None = None,
        allow_download: bool = False,
        normalize_features: bool = False,
    ) -> None:
        super().__init__()
        import open_clip

        how = (
            "Pass pretrained=/path/to/open_clip_pytorch_model.bin (or .safetensors), a file saved once on a "
            f"machine with internet by open_clip.create_model('{model_name}', pretrained='openai'), or set "
            "allow_download=True where a hub is reachable."
        )
        if pretrained is None:
            raise MissingWeightsError(f"OpenCLIPEncoder needs weights. {how}")
        source = pretrained
        if not Path(pretrained).is_file():
            local = _open_clip_local_weights(model_name, pretrained, cache_dir)
            if local is None and not allow_download:
                raise MissingWeightsError(
                    f"open_clip weights {model_name}/{pretrained!r} are neither a file nor in the local cache. {how}"
                )
            source = local or pretrained
        self.model = open_clip.create_model(model_name, pretrained=source, cache_dir=cache_dir).eval()
        self.model.requires_grad_(False)
        size = self.model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.model_name, self.pretrained, self.normalize_features = model_name, str(pretrained), normalize_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings [N, D] of images in [0, 1]."""
        x = normalize(resize_center_crop(to_rgb(images), self.image_size), CLIP_MEAN, CLIP_STD)
        feats = self.model.encode_image(x)
        return F.normalize(feats, dim=-1) if self.normalize_features else feats

    def manifest_entry(self) -> dict[str, Any]:
        """Model name, weights and normalisation."""
        return {
            "class": type(self).__name__,
            "model": self.model_name,
            "fingerprint": fingerprint(self.model.visual),
            "normalize_features": self.normalize_features,
        }


class TimmEncoder(FeatureExtractor):
    """Pooled features of a timm model, weights from a local file.

    Args:
        model_name: timm model name.
        weights_path: a local state dict (``.pth``/``.bin``) or safetensors file.
        image_size: input size (the model's default when ``None``).
    """

    def __init__(self, model_name: str, weights_path: str | None = None, image_size: int | None = None) -> None:
        super().__init__()
        import timm

        path = require_weights_file(
            weights_path,
            f"timm model {model_name!r}",
            "Pass weights_path=/path/to/model.safetensors (saved once with timm.create_model(name, "
            "pretrained=True) and torch.save(model.state_dict(), ...)).",
        )
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0)
        state = load_state_dict(path, f"timm model {model_name!r}")
        state = {
            k: v
            for k, v in state.items()
            if not k.startswith(("head.fc.", "fc.", "classifier.", "head.weight", "head.bias"))
        }
        self.model.load_state_dict(state, strict=False)
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.image_size = image_size or cfg.get("input_size", (3, 224, 224))[-1]
        self.mean, self.std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features [N, D] of images in [0, 1]."""
        x = normalize(resize_center_crop(to_rgb(images), self.image_size), self.mean, self.std)
        return self.model(x)


class InceptionEncoder(FeatureExtractor):
    """torch-fidelity's Inception-v3 (the FID network), 2048-d pool features, weights from a local file.

    Args:
        weights_path: the ``pt_inception-2015-12-05`` weights file.
    """

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = require_weights_file(
            weights_path,
            "torch-fidelity Inception-v3",
            "Pass weights_path=/path/to/weights-inception-2015-12-05-6726825d.pth (torch-fidelity's FID weights).",
        )
        # torch-fidelity loads the path it is given with torch.load(weights_only=False), which runs any
        # code pickled in the file. So the user's file is read here, as tensors only, and torch-fidelity
        # gets a file written from those verified tensors.
        try:
            state_dict = load_state_dict(path, "torch-fidelity Inception-v3")
        except CheckpointError as err:
            raise MissingWeightsError(str(err)) from err
        with tempfile.TemporaryDirectory() as tmp:
            verified = Path(tmp) / "inception.pt"
            torch.save(state_dict, verified)
            self.model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(verified)
            ).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """2048-d features of images in [0, 1] (quantised to uint8 as torch-fidelity expects)."""
        x = (to_rgb(images).clamp(0, 1) * 255).round().to(torch.uint8)
        return self.model(x)[0]
