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


@torch.no_grad()
def exact_posterior_z1(model: HVAE, x):
    """Mean and variance of p(z_1 | x) by quadrature on the grid (the LVAE's generative model is the HVAE's)."""
    g = torch.linspace(-9, 9, 1801, dtype=torch.float64)
    col = g[:, None]
    log_px_z1 = -model.recon_nll(x.expand(len(g), -1, -1, -1), model.decode([col]))
    mu, logvar = model.p_params(0, col)
    log_pz1 = torch.logsumexp(log_normal(col, mu.T, logvar.T) + log_normal(g, 0.0, torch.zeros(())), dim=1)
    post = torch.softmax(log_px_z1 + log_pz1, dim=0)
    mean = (post * g).sum()
    return mean.item(), (post * (g - mean).square()).sum().item()


MODELS = [(HVAE, HVAEConfig, 1), (LVAE, LVAEConfig, 2)]  # seeds where q(z_1 | x) misses p(z_1 | x)'s mean by 0.2+


@pytest.mark.parametrize("cls, cfg_cls, seed", MODELS)
def test_log_weight_at_given_codes_reweights_q_into_the_posterior(cls, cfg_cls, seed):
    """log_weight(x, z) at codes z ~ q(z | x) is log p(x, z) - log q(z | x): weighting q's draws by it gives the
    model's own posterior mean of z_1 (self-normalised importance sampling), which q's draws alone miss."""
    model = tiny(cls, cfg_cls, seed)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x.repeat(20000, 1, 1, 1)
    torch.manual_seed(0)
    z = model.posterior_sample(x)
    w = torch.softmax(model.log_weight(x, z), dim=0)
    mean, _ = exact_posterior_z1(model, x[:1])
    assert abs(z[0].mean().item() - mean) > 0.2  # q alone is off: the weights have work to do
    assert (w * z[0][:, 0]).sum().item() == pytest.approx(mean, abs=0.05)
    torch.testing.assert_close(model.log_weight(x[:5], [t[:5] for t in z]), model.log_weight(x[:5], [t[:5] for t in z]))


@torch.no_grad()
def exact_posterior_draws(model: HVAE, x, n: int, g: torch.Generator):
    """n draws of (z_1, z_2) ~ p(z_1, z_2 | x) from the grid (a cell drawn by its mass, then uniform within it)."""
    grid = torch.linspace(-6, 6, 601, dtype=torch.float64)
    col = grid[:, None]
    log_px_z1 = -model.recon_nll(x.expand(len(grid), -1, -1, -1), model.decode([col]))  # over z_1
    mu, logvar = model.p_params(0, col)  # p(z_1 | z_2), z_2 on the grid
    log_joint = log_px_z1[:, None] + log_normal(col, mu.T, logvar.T) + log_normal(grid, 0.0, torch.zeros(()))
    cell = torch.multinomial(torch.softmax(log_joint.flatten(), 0), n, replacement=True, generator=g)
    jitter = (torch.rand(2, n, generator=g, dtype=torch.float64) - 0.5) * (grid[1] - grid[0])
    return [(grid[cell // len(grid)] + jitter[0])[:, None], (grid[cell % len(grid)] + jitter[1])[:, None]]


@pytest.mark.parametrize("cls, cfg_cls, seed", MODELS)
def test_importance_resampling_keeps_the_true_posterior(cls, cfg_cls, seed):
    """gibbs.resample_posterior (i-SIR, K = 3) leaves p(z | x) invariant: 1500 chains per image started from exact
    posterior draws (by quadrature) still have the posterior's mean and variance of z_1 after 15 steps, for each
    of two images, though q's own draws miss the mean; each chain is resampled among its own image's candidates."""
    from vlae_fast.gibbs import resample_posterior

    model = tiny(cls, cfg_cls, seed)
    imgs = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = imgs.repeat(1500, 1, 1, 1)  # rows alternate between the two images
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = [torch.empty(len(x), 1, dtype=torch.float64) for _ in range(2)]
        for i in range(2):
            for l, draw in enumerate(exact_posterior_draws(model, imgs[i : i + 1], 1500, g)):
                z[l][i::2] = draw
        z_q = model.posterior_sample(x)[0]
        rates = []
        for _ in range(15):
            z, moved = resample_posterior(model, x, z, 3, g)
            rates.append(moved.double().mean().item())
        assert resample_posterior(model, x[:4], None, 3, g)[1].all()  # no current codes: every pick is fresh
    assert 0.1 < sum(rates) / len(rates) < 0.9  # it moves, and keeps its current codes at times
    for i in range(2):
        mean, var = exact_posterior_z1(model, imgs[i : i + 1])
        z1 = z[0][i::2, 0]
        assert abs(z_q[i::2].mean().item() - mean) > 0.2
        assert z1.mean().item() == pytest.approx(mean, abs=0.05)
        assert z1.var().item() == pytest.approx(var, rel=0.12)
