"""Feature extractors from local weight files; missing weights fail fast with a how-to."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genunc_lightning.encoders import (
    InceptionEncoder,
    MissingWeightsError,
    ModuleEncoder,
    OpenCLIPEncoder,
    TimmEncoder,
    resize_center_crop,
)


def test_open_clip_from_a_local_file_matches_open_clip_preprocessing(tiny_clip):
    import open_clip

    model, path = tiny_clip
    encoder = OpenCLIPEncoder("tiny-test-clip", pretrained=path)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    transform = open_clip.image_transform(32, is_train=False)
    with torch.no_grad():
        ref = model.encode_image(torch.stack([transform(Image.fromarray(p)) for p in pixels]))
    ours = encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    assert ours.shape == (4, 16)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    gray = encoder(torch.rand(2, 1, 48, 40))  # 1-channel, non-square: repeated to RGB, resized and cropped
    assert gray.shape == (2, 16)


def test_resize_center_crop_keeps_the_aspect_ratio_centre():
    x = torch.zeros(1, 3, 40, 80)
    x[..., :, 20:60] = 1.0  # the central square
    out = resize_center_crop(x, 20)
    assert out.shape == (1, 3, 20, 20)
    assert out.mean() > 0.95


def test_missing_open_clip_weights_fail_fast_with_a_how_to():
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError, match="pretrained=/path/to/open_clip_pytorch_model.bin"):
        OpenCLIPEncoder("ViT-B-32", pretrained="openai")
    with pytest.raises(MissingWeightsError, match="needs weights"):
        OpenCLIPEncoder("ViT-B-32")
    assert time.perf_counter() - start < 2.0


def test_timm_from_a_local_file(tmp_path):
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    encoder = TimmEncoder("resnet18", str(tmp_path / "r18.pth"), image_size=64)
    images = torch.rand(2, 3, 64, 64)
    cfg = model.pretrained_cfg
    x = (images - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), model(x))


def test_missing_timm_and_inception_weights_fail_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError, match="weights_path="):
        TimmEncoder("resnet18", str(tmp_path / "missing.pth"))
    with pytest.raises(MissingWeightsError, match="Inception"):
        InceptionEncoder(None)
    assert time.perf_counter() - start < 2.0


def test_module_encoder_wraps_any_module():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    enc = ModuleEncoder(net, image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rgb=True)
    images = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(enc(images), net((images.expand(-1, 3, -1, -1) - 0.5) / 0.5))
    # Its manifest entry tells other weights apart and recognises the same ones.
    other = ModuleEncoder(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)), image_size=8,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rgb=True)  # fmt: skip
    same = ModuleEncoder(net, image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rgb=True)
    assert enc.manifest_entry() != other.manifest_entry() and enc.manifest_entry() == same.manifest_entry()


class _TouchOnLoad:
    """Unpickling this runs code: it creates a file (a stand-in for anything an attacker would run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_inception_weights_never_execute_pickled_code(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": _TouchOnLoad(marker)}, evil)
    with pytest.raises(MissingWeightsError, match="holds no state dict of tensors"):
        InceptionEncoder(str(evil))
    assert not marker.exists()
    # Control: the same file does run its code under a plain torch.load, as torch-fidelity would call it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_inception_encoder_gives_torch_fidelity_features_from_a_plain_weights_file(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    # Random weights with the real layout, built offline: skip torch-fidelity's download and load.
    with monkeypatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        reference = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "inception.pth"
    torch.save(reference.state_dict(), path)
    images = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        expected = reference((images * 255).round().to(torch.uint8))[0]
    torch.testing.assert_close(InceptionEncoder(str(path))(images), expected)
