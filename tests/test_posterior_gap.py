"""eval/posterior.py: the posterior gap log p(x) - ELBO and its split by level, against numeric integration on
a Markov HVAE with 1-d codes, where p(x), p(z_1) and both levels' KL(q || true posterior) are integrals on a grid."""
import math

import pytest
import torch

from vlae_fast.errors import ConfigError
from vlae_fast.eval.posterior import posterior_gaps
from vlae_fast.models.hvae import HVAE, HVAEConfig
from vlae_fast.models.lvae import LVAE, LVAEConfig


def log_normal(z, mu, logvar):
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + math.log(2 * math.pi))


def tiny(cls, cfg_cls, seed: int):
    torch.manual_seed(seed)
    model = cls(cfg_cls(image_shape=(1, 4, 4), latent_dims=(1, 1), channels=(2, 2), hidden=8)).double().eval()
    with torch.no_grad():
        model.p[0].mu.weight.mul_(4)  # p(z_1 | z_2) leans on z_2: p(z_2 | z_1) is far from the prior p(z_2)
    return model


@torch.no_grad()
def exact_gaps(model: HVAE, x):
    """(KL(q(z_1|x) || p(z_1|x)), E_q KL(q(z_2|z_1) || p(z_2|z_1))) by quadrature on a grid of z_1 and z_2."""
    g = torch.linspace(-9, 9, 1801, dtype=torch.float64)
    step = math.log(g[1] - g[0])
    col = g[:, None]
    log_px_z1 = -model.recon_nll(x.expand(len(g), -1, -1, -1), model.decode([col]))  # [G] over z_1
    mu, logvar = model.p_params(0, col)  # p(z_1 | z_2) for z_2 on the grid: [G, 1]
    log_p12 = log_normal(col, mu.T, logvar.T)  # [z_1, z_2]
    log_pz2 = log_normal(g, 0.0, torch.zeros(()))
    log_pz1 = torch.logsumexp(log_p12 + log_pz2, dim=1) + step
    log_px = torch.logsumexp(log_px_z1 + log_pz1, dim=0) + step
    mu_q, logvar_q = model.q_params(0, x)
    log_q1 = log_normal(g, mu_q[0, 0], logvar_q[0, 0])
    q1 = log_q1.exp() * math.exp(step)
    kl1 = (q1 * (log_q1 - (log_px_z1 + log_pz1 - log_px))).sum()
    mu2, logvar2 = model.q_params(1, col)  # q(z_2 | z_1) for z_1 on the grid
    log_q2 = log_normal(g[None, :], mu2, logvar2)  # [z_1, z_2]
    kl2_given = (log_q2.exp() * math.exp(step) * (log_q2 - (log_p12 + log_pz2 - log_pz1[:, None]))).sum(1)
    return kl1.item(), (q1 * kl2_given).sum().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_gap_by_level_matches_numeric_integration(seed):
    model = tiny(HVAE, HVAEConfig, seed)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kl1, kl2 = exact_gaps(model, x)
    assert kl1 > 0.05 and kl2 > 0.05  # both levels have a gap to find
    got = posterior_gaps(model, x.repeat(200, 1, 1, 1), k=500, seed=seed)
    for est, exact in zip(got["levels"], (kl1, kl2)):  # the IW bound is below log p: the estimate falls short a bit
        assert exact - max(0.04, 0.15 * exact) <= est <= exact + 0.02
    assert got["total"] == pytest.approx(sum(got["levels"]))


def test_the_callers_stream_is_untouched():
    """(Level 0 is model.log_weight itself; test_model_interface checks it averages to the ELBO.)"""
    model = tiny(HVAE, HVAEConfig, 2)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    torch.manual_seed(4)
    posterior_gaps(model, x, k=8)
    after = torch.rand(3)
    torch.manual_seed(4)
    torch.testing.assert_close(after, torch.rand(3))


def test_models_without_markov_inference_get_the_total_only():
    model = tiny(LVAE, LVAEConfig, 0)
    with pytest.raises(NotImplementedError):
        model.log_weight_above(torch.zeros(2, 1), 1)
    got = posterior_gaps(model, torch.rand(4, 1, 4, 4, dtype=torch.float64), k=16)
    assert got["levels"] is None and got["total"] > 0
    with pytest.raises(ConfigError, match="at least 2"):
        posterior_gaps(model, torch.rand(4, 1, 4, 4, dtype=torch.float64), k=1)
