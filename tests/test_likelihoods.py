"""Likelihoods on real-data-standardised features (RealDataScale): a noise that means the same on any extractor."""

import numpy as np
import pytest
import torch

from genunc_lightning.uncertainty import PixelLikelihood, RealDataScale, SemanticLikelihood


def numpy_entropy(members, noise_var):
    """½ Σ_d log(2πe(var_d + σ²)) with the members' maximum-likelihood variance, float64 numpy."""
    var = members.var(axis=0, ddof=0)
    return 0.5 * np.log(2 * np.pi * np.e * (var + noise_var)).sum(-1)


def test_the_scaled_score_standardises_live_dimensions_and_drops_dead_ones():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 3.0]) + 2.0
    real[:, 3] = 0.0  # a dimension real data never moves: a ReLU feature that is always zero
    scale = RealDataScale.fit(real)
    assert scale.live.tolist() == [True, True, True, False, True]
    members = torch.randn(6, 4, 5, generator=g, dtype=torch.float64)  # K = 6 members of B = 4 samples
    lik = PixelLikelihood(noise_var=0.01, scale=scale)
    ours = lik.score(members).numpy()
    r = real.double().numpy()
    mean, std = r.mean(0), r.std(0, ddof=1)
    standardised = ((members.numpy() - mean) / std)[..., [0, 1, 2, 4]]
    np.testing.assert_allclose(ours, numpy_entropy(standardised, 0.01), rtol=1e-12)
    # The same members on another scale of the same features score the same: σ² is relative.
    rescaled = PixelLikelihood(noise_var=0.01, scale=RealDataScale.fit(real * 1000.0)).score(members * 1000.0)
    np.testing.assert_allclose(rescaled.numpy(), ours, rtol=1e-6)  # the real data ×1000 is float32: 1e-7 rounding
    assert not np.allclose(PixelLikelihood(noise_var=0.01).score(members * 1000.0).numpy(),
                           PixelLikelihood(noise_var=0.01).score(members).numpy())  # fmt: skip


def test_a_semantic_likelihood_takes_the_scale_of_its_encoder_features_and_records_it():
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU())
    real = encoder(torch.rand(50, 2, 2)).detach()
    lik = SemanticLikelihood(encoder, noise_var=0.01, scale=RealDataScale.fit(real))
    assert lik.manifest_entry()["scale"]["dims"] == 3
    assert lik.score(torch.rand(3, 2, 2, 2)).shape == (2,)
    with pytest.raises(ValueError, match="fitted on 3"):
        PixelLikelihood(scale=lik.scale).score(torch.rand(3, 2, 5))
    with pytest.raises(ValueError, match="No feature dimension varies"):
        RealDataScale.fit(torch.ones(10, 4))
