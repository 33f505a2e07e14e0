"""The ladder VAE (models/lvae.py): the precision-weighted merge, its closed-form KL terms, the HVAE's generative
model (training, checkpoints and commands: test_hvae_family.py)."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vlae_fast.models import HVAE, LVAE, build_model, default_config
from vlae_fast.models.lvae import gaussian_kl, precision_weighted

DIMS = (2, 3, 4)


def small(name="lvae", dims=DIMS, seed=0):
    torch.manual_seed(seed)
    return build_model(default_config("mnist", name, latent_dims=list(dims), hidden=32, channels=(8, 16)))


def log_normal(z, mu, logvar):
    """log N(z; mu, exp(logvar)) per element, normaliser included (float64 reference)."""
    return -0.5 * ((z - mu).square() / logvar.exp() + logvar + math.log(2 * math.pi))


# --- the merge --------------------------------------------------------------------------------------------
def test_precision_weighted_is_the_normalised_product_of_the_two_gaussians():
    """log N(z; hat) + log N(z; p) - log N(z; q) is the same for every z (the product's normaliser), on an odd
    shape with means away from 0 and variances from 1e-3 to 1e3."""
    g = torch.Generator().manual_seed(0)
    shape = (37, 5)
    mu_hat = 3 + 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    mu_p = torch.randn(shape, generator=g, dtype=torch.float64) - 2
    logvar_hat = 14 * torch.rand(shape, generator=g, dtype=torch.float64) - 7
    logvar_p = 14 * torch.rand(shape, generator=g, dtype=torch.float64) - 7
    mu_q, logvar_q = precision_weighted(mu_hat, logvar_hat, mu_p, logvar_p)
    z = mu_q + torch.randn(64, *shape, generator=g, dtype=torch.float64) * (0.5 * logvar_q).exp() * 3  # 64 z per unit
    gap = log_normal(z, mu_hat, logvar_hat) + log_normal(z, mu_p, logvar_p) - log_normal(z, mu_q, logvar_q)
    torch.testing.assert_close(gap, gap[:1].expand_as(gap), rtol=0, atol=1e-8)
    # the textbook form, where it is well conditioned
    var_q = 1 / (1 / logvar_hat.exp() + 1 / logvar_p.exp())
    torch.testing.assert_close(logvar_q, var_q.log())
    torch.testing.assert_close(mu_q, (mu_hat / logvar_hat.exp() + mu_p / logvar_p.exp()) * var_q)


def test_precision_weighted_by_numeric_integration():
    """Mean and variance of the renormalised product of the two densities on a fine grid (1-d, a few units)."""
    mu_hat, logvar_hat = torch.tensor([0.7, -1.0, 2.0]), torch.tensor([-1.0, 0.5, 1.5])
    mu_p, logvar_p = torch.tensor([-0.4, 0.3, -2.0]), torch.tensor([0.0, -2.0, 1.0])
    mu_q, logvar_q = precision_weighted(*(t.double() for t in (mu_hat, logvar_hat, mu_p, logvar_p)))
    z = torch.linspace(-15, 15, 300001, dtype=torch.float64)[:, None]
    w = (log_normal(z, mu_hat.double(), logvar_hat.double()) + log_normal(z, mu_p.double(), logvar_p.double())).exp()
    w = w / w.sum(0)
    mean = (w * z).sum(0)
    torch.testing.assert_close(mean, mu_q, rtol=0, atol=1e-7)
    torch.testing.assert_close((w * (z - mean).square()).sum(0), logvar_q.exp(), rtol=1e-6, atol=0)


def test_precision_weighted_stays_finite_and_has_gradients_at_extreme_variances():
    """Variances of e^+-100 overflow float32 in the textbook form (1 / inf, 1 / 0); the log-space form holds."""
    leaves = [torch.tensor(v, requires_grad=True) for v in ([1.0, -3.0], [-100.0, 100.0], [2.0, 0.5], [100.0, -100.0])]
    mu_q, logvar_q = precision_weighted(*leaves)
    torch.testing.assert_close(mu_q.detach(), torch.tensor([1.0, 0.5]))  # the far narrower Gaussian wins
    torch.testing.assert_close(logvar_q.detach(), torch.tensor([-100.0, -100.0]))
    (mu_q.sum() + logvar_q.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    a = [torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(4)]
    expected = kl_divergence(Normal(a[0], (0.5 * a[1]).exp()), Normal(a[2], (0.5 * a[3]).exp())).sum(1)
    torch.testing.assert_close(gaussian_kl(*a), expected)


# --- the model --------------------------------------------------------------------------------------------
def test_forward_is_the_ladder_top_down_pass_with_closed_form_kls():
    """Rebuilt from the modules with torch.distributions: z_L from the top bottom-up estimate, each lower level
    from the estimate merged with p(z_l | z_{l+1}); kl[:, l] = KL(q || p) in closed form, top against N(0, I)."""
    model = small().double().eval()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    eps = [torch.randn(5, d, dtype=torch.float64) for d in DIMS]
    out = model(x, eps)
    assert out.kl.shape == (5, 3) and out.recon.shape == (5,) and [z.shape for z in out.z] == [(5, d) for d in DIMS]
    d, est = x, []
    for l in range(3):  # bottom-up: d_l, then (mu_hat, logvar_hat) = q[l](d_l)
        d = model.enc[l](d)
        est.append(model.q[l](d))
    z = [None] * 3
    q = {2: Normal(est[2][0], (0.5 * est[2][1]).exp())}
    z[2] = q[2].mean + q[2].stddev * eps[2]
    torch.testing.assert_close(out.kl[:, 2], kl_divergence(q[2], Normal(0.0, torch.ones_like(z[2]))).sum(1))
    for l in (1, 0):
        mu_p, logvar_p = model.p[l](model.f[l](z[l + 1]))
        var_hat, var_p = est[l][1].exp(), logvar_p.exp()
        var_q = 1 / (1 / var_hat + 1 / var_p)
        q[l] = Normal((est[l][0] / var_hat + mu_p / var_p) * var_q, var_q.sqrt())
        z[l] = q[l].mean + q[l].stddev * eps[l]
        torch.testing.assert_close(out.kl[:, l], kl_divergence(q[l], Normal(mu_p, var_p.sqrt())).sum(1))
    for a, b in zip(out.z, z):
        torch.testing.assert_close(a, b)
    nll = -Normal(model.decode(z).sigmoid(), model.cfg.output_scale).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(out.recon, nll)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_kl_column_matches_a_monte_carlo_estimate(level):
    """kl[:, l] (closed form, given the levels above) against the mean of log q(z_l | .) - log p(z_l | .) over
    4000 draws of z_l with the levels above held fixed; 4 standard errors of the estimate."""
    model = small().double().eval()
    n, x = 4000, torch.rand(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(level)
    eps = [torch.randn(2, d, generator=g, dtype=torch.float64).repeat(n, 1) for d in DIMS]  # one draw per image
    eps[level] = torch.randn(2 * n, DIMS[level], generator=g, dtype=torch.float64)  # level l redrawn every row
    xs = x.repeat(n, 1, 1, 1)  # row i holds image i % 2
    with torch.no_grad():
        kl = model(xs, eps).kl[:, level].view(n, 2)
        z, q_terms, p_terms, _ = model._top_down(xs, eps)
    p = p_terms[level] if level < 2 else (torch.zeros_like(z[2]), torch.zeros_like(z[2]))
    sample = (log_normal(z[level], *q_terms[level]) - log_normal(z[level], *p)).sum(1).view(n, 2)
    torch.testing.assert_close(kl, kl[:1].expand_as(kl))  # the levels above fixed: one KL per image
    se = sample.std(0) / n ** 0.5
    assert ((sample.mean(0) - kl[0]).abs() < 4 * se).all(), (sample.mean(0), kl[0], se)
    assert (kl[0] > 0).all()


def test_encode_is_the_noiseless_top_down_pass():
    """The posterior means are the codes forward() takes with zero noise; their logvars are q's."""
    model = small().double().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    mus, logvars = model.encode(x)
    z, q_terms, _, _ = model._top_down(x, [torch.zeros(4, d, dtype=torch.float64) for d in DIMS])
    for l in range(3):
        torch.testing.assert_close(mus[l], z[l])
        torch.testing.assert_close(logvars[l], q_terms[l][1])
    assert not torch.equal(model.posterior_sample(x)[0], mus[0])  # a sample, not the mean


def test_lvae_has_the_hvaes_generative_model():
    """Level for level the same generator: an HVAE's f, p and f_0 weights load into an LVAE as they are, and
    then both draw the same samples from the same noise; only the inference differs."""
    hvae, lvae = small("hvae").eval(), small("lvae", seed=1).eval()
    assert isinstance(lvae, HVAE) and lvae.CONTROL == "eps" and lvae.GIBBS_ON_Z1 and lvae.DEFAULT_LR == 1e-4
    gen = {k: v for k, v in hvae.state_dict().items() if k.split(".")[0] in ("f", "p", "f0")}
    assert {k: v.shape for k, v in gen.items()} == {k: lvae.state_dict()[k].shape for k in gen}
    lvae.load_state_dict(gen, strict=False)
    eps = hvae.prior_controls(6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(lvae.decode_controls(eps), hvae.decode_controls(eps))
    assert lvae.enc[1][0][0].in_features == 16 * 7 * 7 and hvae.enc[1][0][0].in_features == 2  # d_1, not z_1
