"""The one model interface (models/base.py): every model answers it the same way."""
import pytest
import torch
from torch import nn

from vlae_fast import generate
from vlae_fast.models import build_model, default_config
from vlae_fast.models.base import LatentModel

MODELS = {
    "vlae": dict(hidden=32, channels=(8, 16)),
    "hvae": dict(hidden=32, channels=(8, 16)),
    "lvae": dict(hidden=32, channels=(8, 16)),
    "ar_hvae": dict(hidden=32, channels=(8, 16)),
}


def small(model: str) -> LatentModel:
    torch.manual_seed(0)
    return build_model(default_config("mnist", model, latent_dims=[2, 3, 2], **MODELS[model])).double().eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_log_weight_averages_to_the_elbo(name):
    """E_q[log p(x, z) - log q(z | x)] is the ELBO: the mean of many log_weight draws matches
    -(recon + sum KL) of forward() averaged over as many draws (the VLAE's KL is closed-form there); so does
    log_weight at given codes z ~ q(z | x), which is a function of those codes (the same codes, the same value)."""
    model = small(name)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64).repeat(3000, 1, 1, 1)  # 2 images, 3000 draws each
    with torch.no_grad():
        lw = model.log_weight(x).view(3000, 2)
        out = model(x)
        elbo = -(out.recon + out.kl.sum(1)).view(3000, 2)
        z = model.posterior_sample(x)
        at = model.log_weight(x, z).view(3000, 2)
        torch.testing.assert_close(model.log_weight(x[:6], [t[:6] for t in z]), at.flatten()[:6])
    assert lw.shape == (3000, 2) and torch.isfinite(lw).all()
    se = lw.std(0) / 3000 ** 0.5 + elbo.std(0) / 3000 ** 0.5
    assert ((lw.mean(0) - elbo.mean(0)).abs() < 4 * se + 1e-6).all(), (lw.mean(0), elbo.mean(0), se)
    se = at.std(0) / 3000 ** 0.5 + elbo.std(0) / 3000 ** 0.5
    assert ((at.mean(0) - elbo.mean(0)).abs() < 4 * se + 1e-6).all(), (at.mean(0), elbo.mean(0), se)
    assert (lw.std(0) > 0).all()  # a sample, not a constant


@pytest.mark.parametrize("name", sorted(MODELS))
def test_controls_round_trip_and_prior_draws(name):
    model = small(name)
    g = torch.Generator().manual_seed(1)
    c = model.prior_controls(5, g)
    assert [t.shape for t in c] == [(5, 2), (5, 3), (5, 2)]
    z = model.codes_from_controls([t.double() for t in c])
    for a, b in zip(model.controls_from_codes(z), c):
        torch.testing.assert_close(a, b.double())
    assert model.decode_controls([t.double() for t in c]).shape == (5, 1, 28, 28)


class OnlyLevel2(LatentModel):
    """A 3-level stand-in whose image depends on level 2's control alone."""

    def __init__(self):
        super().__init__()
        self.cfg = type("Cfg", (), {"latent_dims": (2, 2, 2)})()
        self.w = nn.Parameter(torch.ones(2, 16))

    def decode(self, z):
        return (z[1] @ self.w).view(-1, 1, 4, 4)


def test_variance_shares_follow_the_level_that_changes_the_image():
    shares = generate.variance_shares(OnlyLevel2(), steps=8)
    assert shares[1] == pytest.approx(1.0) and shares[0] == shares[2] == 0.0
