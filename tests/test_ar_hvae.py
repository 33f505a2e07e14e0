"""The autoregressive HVAE (models/ar_hvae.py, eq. 3): priors and decoder that read every level above, its eq. 5
terms (training, checkpoints and commands: test_hvae_family.py)."""
import torch
from torch.distributions import Normal, kl_divergence

from vlae_fast.models import build_model, default_config

DIMS = (2, 3, 4)


def small(name="ar_hvae", dims=DIMS, seed=0):
    torch.manual_seed(seed)
    return build_model(default_config("mnist", name, latent_dims=list(dims), hidden=32, channels=(8, 16)))


def test_kl_columns_are_eq5_terms_with_priors_on_every_level_above():
    """kl[:, l] = log q(z_l | z_{l-1}) - log p(z_l | z_{>l}) on the sampled path, p(z_1 | .) reading [z_2; z_3];
    top: KL(q(z_L | z_{L-1}) || N(0, I)); recon: -log p(x | [z_1; z_2; z_3])."""
    model = small().double().eval()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    eps = [torch.randn(5, d, dtype=torch.float64) for d in DIMS]
    out = model(x, eps)
    assert out.kl.shape == (5, 3) and out.recon.shape == (5,) and [z.shape for z in out.z] == [(5, d) for d in DIMS]
    h, z, q = x, [], []
    for l in range(3):  # the HVAE's bottom-up inference path
        mu, logvar = model.q[l](model.enc[l](h))
        q.append(Normal(mu, (0.5 * logvar).exp()))
        z.append(mu + (0.5 * logvar).exp() * eps[l])
        h = z[-1]
    for l in range(2):
        mu_p, logvar_p = model.p[l](model.f[l](torch.cat(z[l + 1:], dim=1)))
        expected = q[l].log_prob(z[l]).sum(1) - Normal(mu_p, (0.5 * logvar_p).exp()).log_prob(z[l]).sum(1)
        torch.testing.assert_close(out.kl[:, l], expected)
    torch.testing.assert_close(out.kl[:, 2], kl_divergence(q[2], Normal(0.0, torch.ones_like(z[2]))).sum(1))
    nll = -Normal(model.f0(torch.cat(z, dim=1)).sigmoid(), model.cfg.output_scale).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(out.recon, nll)


def test_top_kl_matches_a_monte_carlo_estimate():
    """The closed-form top column against the mean of log q(z_L | z_{L-1}) - log N(z_L; 0, I) over 4000 draws of
    z_L, the levels below held fixed; 4 standard errors. (The lower columns are one-sample terms already; their
    sum with the top is checked against log_weight in test_model_interface.py.)"""
    model = small().double().eval()
    n, g = 4000, torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64, generator=g).repeat(n, 1, 1, 1)
    eps = [torch.randn(2, d, generator=g, dtype=torch.float64).repeat(n, 1) for d in DIMS[:2]]
    eps.append(torch.randn(2 * n, DIMS[2], generator=g, dtype=torch.float64))
    with torch.no_grad():
        out = model(x, eps)
        z, q_terms, _ = model._path(x, eps)
    mu, logvar = q_terms[2]
    sample = (Normal(mu, (0.5 * logvar).exp()).log_prob(z[2]) - Normal(0.0, 1.0).log_prob(z[2])).sum(1).view(n, 2)
    kl = out.kl[:, 2].view(n, 2)
    torch.testing.assert_close(kl, kl[:1].expand_as(kl))
    se = sample.std(0) / n ** 0.5
    assert ((sample.mean(0) - kl[0]).abs() < 4 * se).all(), (sample.mean(0), kl[0], se)


def test_decoder_and_priors_read_every_level_above():
    """Shortcuts: with z_1 (and z_2) fixed, changing z_3 alone changes the image and p(z_1 | .); in the Markov HVAE
    it changes neither."""
    g = torch.Generator().manual_seed(1)
    z = [torch.randn(4, d, generator=g) for d in DIMS]
    z_top = z[:2] + [z[2] + 1.0]
    ar, markov = small().eval(), small("hvae").eval()
    assert not torch.allclose(ar.decode(z), ar.decode(z_top))
    assert not torch.allclose(ar.p_params(0, ar.prior_input(z, 0))[0], ar.p_params(0, ar.prior_input(z_top, 0))[0])
    assert torch.equal(markov.decode(z), markov.decode(z_top))
    prior_mean = [markov.p_params(0, markov.prior_input(zz, 0))[0] for zz in (z, z_top)]
    assert torch.equal(*prior_mean)
    assert ar.f0[0][0].in_features == sum(DIMS) and [f[0][0].in_features for f in ar.f] == [3 + 4, 4]


def test_ancestral_sampling_conditions_on_every_level_above():
    model = small().eval()
    eps = model.prior_controls(3, torch.Generator().manual_seed(0))
    z = model.codes_from_controls(eps)
    assert torch.equal(z[2], eps[2])  # z_L = eps_L ~ N(0, I)
    mu, logvar = model.p[0](model.f[0](torch.cat([z[1], z[2]], dim=1)))
    torch.testing.assert_close(z[0], mu + (0.5 * logvar).exp() * eps[0])
    for a, b in zip(model.controls_from_codes(z), eps):
        torch.testing.assert_close(a, b)
    assert not model.GIBBS_ON_Z1 and model.CONTROL == "eps" and model.DEFAULT_LR == 1e-4
