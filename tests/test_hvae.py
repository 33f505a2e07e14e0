"""The Markov HVAE (eq. 4-5): its loss terms, training in the one loop, and its noise traversal (Figure 3)."""
import json
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vlae_fast import generate
from vlae_fast.checkpoint import load_model
from vlae_fast.models import HVAE, build_model, default_config
from vlae_fast.train import TrainConfig, train


def small_hvae(dims=(2, 3, 4), seed=0) -> HVAE:
    torch.manual_seed(seed)
    return build_model(default_config("mnist", "hvae", latent_dims=list(dims), hidden=32, channels=(8, 16)))


def test_kl_columns_are_eq5_terms_per_level():
    """kl[:, l] = log q(z_l|.) - log p(z_l|z_{l+1}) on the sampled path; top = KL(q(z_L|z_{L-1}) || N(0, I))."""
    model = small_hvae().double().eval()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    eps = [torch.randn(5, d, dtype=torch.float64) for d in (2, 3, 4)]
    out = model(x, eps)
    assert out.kl.shape == (5, 3) and out.recon.shape == (5,)
    h, z, q = x, [], []
    for l in range(3):  # the path, rebuilt with torch.distributions
        mu, logvar = model.q[l](model.enc[l](h))
        q.append(Normal(mu, (0.5 * logvar).exp()))
        z.append(mu + (0.5 * logvar).exp() * eps[l])
        h = z[-1]
    for l in range(2):
        mu_p, logvar_p = model.p[l](model.f[l](z[l + 1]))
        expected = q[l].log_prob(z[l]).sum(1) - Normal(mu_p, (0.5 * logvar_p).exp()).log_prob(z[l]).sum(1)
        torch.testing.assert_close(out.kl[:, l], expected)
    top = kl_divergence(q[2], Normal(torch.zeros_like(z[2]), torch.ones_like(z[2]))).sum(1)
    torch.testing.assert_close(out.kl[:, 2], top)
    # -log N(x; sigmoid(f_0(z_1)), sigma^2) summed over pixels
    nll = -Normal(model.decode(z).sigmoid(), model.cfg.output_scale).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(out.recon, nll)


def test_learned_sigma_gets_a_gradient():
    torch.manual_seed(0)
    model = build_model(default_config("mnist", "hvae", hidden=32, channels=(8, 16), learn_scale=True))
    out = model(torch.rand(4, 1, 28, 28))
    out.recon.mean().backward()
    assert model.log_sigma.grad is not None and model.log_sigma.grad.abs() > 0
    assert model.sigma == pytest.approx(1 / math.sqrt(8))


def test_hvae_trains_in_the_one_loop(tmp_path, mnist_dir):
    """Loss finite and falling over a short run; the checkpoint rebuilds the same HVAE."""
    cfg = TrainConfig(steps=40, batch_size=50, lr=1e-3, warmup=0, train_limit=300, eval_limit=100,
                      data_dir=str(mnist_dir), save_every=0, log_every=2, device="cpu")
    result = train(default_config("mnist", "hvae", hidden=64, channels=(16, 32)), cfg, tmp_path, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"loss fell only from {first:.1f} to {last:.1f}"
    assert math.isfinite(result["elbo"]) and len(result["kl"]) == 3
    model, info = load_model(tmp_path / "ckpt.safetensors")
    assert isinstance(model, HVAE) and info.config.model == "hvae" and info.train["lr"] == 1e-3


def test_redraw_controls_fix_every_level_but_k():
    model = small_hvae().eval()
    steps = 4
    for layer in (1, 2, 3):
        c = generate.redraw_controls(model, layer, steps, torch.Generator().manual_seed(3))
        eps = [e.view(steps, steps, -1) for e in c]
        for l, e in enumerate(eps, 1):
            same_across_row = torch.equal(e, e[:, :1].expand_as(e))
            assert same_across_row == (l != layer), f"level {l} in a level-{layer} traversal"
        assert not torch.equal(eps[layer - 1][0], eps[layer - 1][1])  # fresh draws on every row too


def test_hvae_traverse_varies_only_through_level_k():
    """The picture is a function of eps alone: pinning eps_K across each row makes every row constant."""
    model = small_hvae().eval()
    steps, layer = 5, 2
    x = generate.traverse(model, layer, steps, seed=1)  # an HVAE redraws eps_K across each row (Figure 3)
    assert x.shape == (steps, steps, 1, 28, 28)
    eps = generate.redraw_controls(model, layer, steps, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, model.decode_controls(eps).view(steps, steps, 1, 28, 28))
    assert (x - x[:, :1]).abs().amax() > 0  # eps_2 does change the images
    eps[layer - 1] = eps[layer - 1].view(steps, steps, -1)[:, :1].expand(steps, steps, -1).reshape(steps * steps, -1)
    pinned = model.decode_controls(eps).view(steps, steps, -1)
    torch.testing.assert_close(pinned, pinned[:, :1].expand_as(pinned))


def test_hvae_controls_invert_ancestral_sampling():
    """controls_from_codes undoes codes_from_controls: encode_controls of x decodes to x's reconstruction."""
    model = small_hvae().double().eval()
    eps = [torch.randn(7, d, dtype=torch.float64) for d in (2, 3, 4)]
    z = model.codes_from_controls(eps)
    for a, b in zip(model.controls_from_codes(z), eps):
        torch.testing.assert_close(a, b)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model.decode_controls(model.encode_controls(x)), model.generate(model.encode(x)[0]))


def test_hvae_ancestral_sampling_uses_the_prior_conditionals():
    model = small_hvae().eval()
    eps = model.prior_controls(3, torch.Generator().manual_seed(0))
    z = model.codes_from_controls(eps)
    assert torch.equal(z[2], eps[2])  # z_L = eps_L ~ N(0, I)
    mu, logvar = model.p[1](model.f[1](z[2]))
    torch.testing.assert_close(z[1], mu + (0.5 * logvar).exp() * eps[1])
    assert generate.sample(model, 6).shape == (6, 1, 28, 28)
