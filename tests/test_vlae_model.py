"""VLAE model: shapes, the ELBO's pieces (eq. 14), the ladder join, and learning on real MNIST."""
import math

import pytest
import torch

from vlae_fast.kernels import ladder_linear_torch, reparam_kl_torch
from vlae_fast.models import VLAE, VLAEConfig, build_model, default_config
from vlae_fast.models.blocks import ToImage
from vlae_fast.models.likelihood import neg_log_likelihood
from vlae_fast.errors import ConfigError
from vlae_fast.train import TrainConfig, batch_indices, kl_weight, train


@pytest.mark.parametrize("dims,join", [((2, 2, 2), "concat"), ((3,), "concat"), ((2, 4, 1, 5), "gated_add")])
def test_shapes(dims, join):
    torch.manual_seed(0)
    m = VLAE(VLAEConfig(latent_dims=dims, join=join))
    x = torch.rand(5, 1, 28, 28)
    out = m(x)
    assert out.logits.shape == x.shape and out.recon.shape == (5,) and out.kl.shape == (5, len(dims))
    assert [z.shape[1] for z in out.z] == list(dims)
    mus, logvars = m.encode(x)
    assert [mu.shape for mu in mus] == [lv.shape for lv in logvars] == [(5, d) for d in dims]
    m.eval()
    assert m.generate(m.prior_sample(3)).shape == (3, 1, 28, 28)


def test_elbo_pieces_match_closed_forms():
    """kl = KL(N(mu, sigma^2) || N(0, 1)) per level, recon = Gaussian -log density with the fixed sigma."""
    torch.manual_seed(1)
    m = VLAE(VLAEConfig()).eval()
    x = torch.rand(4, 1, 28, 28)
    eps = [torch.randn(4, d) for d in m.cfg.latent_dims]
    out = m(x, eps=eps)
    mus, logvars = m.encode(x)
    for l, (mu, lv) in enumerate(zip(mus, logvars)):
        sigma = (0.5 * lv).exp()
        assert sigma.min() > 1e-3 and sigma.max() < 1.001 + 1e-6  # sigmoid(.) + 1e-3
        q = torch.distributions.Normal(mu, sigma)
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        torch.testing.assert_close(out.kl[:, l], torch.distributions.kl_divergence(q, p).sum(1))
        torch.testing.assert_close(out.z[l], mu + sigma * eps[l])
    s = m.cfg.output_scale
    assert s == pytest.approx(1 / math.sqrt(8))  # authors' loss 4 * SSE <=> 1 / (2 sigma^2) = 4
    expect = -torch.distributions.Normal(out.logits.sigmoid(), s).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(out.recon, expect)


def test_other_output_distributions():
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    lap = -torch.distributions.Laplace(logits.sigmoid(), 0.25).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(neg_log_likelihood(x, logits, "laplace", 0.25), lap)
    bce = torch.nn.functional.binary_cross_entropy(logits.sigmoid(), x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(neg_log_likelihood(x, logits, "bernoulli", None), bce, rtol=1e-4, atol=1e-4)


def test_reference_ops():
    torch.manual_seed(2)
    a, b = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    w, bias = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    ref = torch.nn.functional.leaky_relu(torch.cat([a, b], 1) @ w.t() + bias, 0.1)
    torch.testing.assert_close(ladder_linear_torch(a, b, w, bias, "leaky_relu"), ref)
    with pytest.raises(ValueError, match="columns"):
        ladder_linear_torch(a, b, w[:, :7])
    mu, lv = torch.randn(6, 3), torch.randn(6, 3)
    z, kl = reparam_kl_torch(mu, lv, torch.zeros(6, 3))
    assert torch.equal(z, mu) and kl.shape == (6,)


@pytest.mark.parametrize("c_in, c_out, hw, batch", [(64, 1, 14, 100), (5, 3, 7, 3), (2, 1, 9, 1), (16, 2, 11, 13)])
def test_to_image_matches_conv_transpose_in_values_and_gradients(c_in, c_out, hw, batch):
    """f_0's last layer on the CPU (ATen's transposed convolution, not oneDNN's) against nn.ConvTranspose2d with the
    same weights: output, and gradients of input, weight and bias; same state-dict keys, so old checkpoints load."""
    torch.manual_seed(c_in * 100 + hw)
    mine, ref = ToImage(c_in, c_out), torch.nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
    ref.load_state_dict(mine.state_dict())
    assert mine.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(batch, c_in, hw, hw)
    outs, grads = [], []
    for m in (mine, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad, m.weight.grad, m.bias.grad])
    assert outs[0].shape == (batch, c_out, 2 * hw, 2 * hw)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for name in ("vlae", "hvae"):  # the MNIST models end in it
        assert isinstance(build_model(default_config("mnist", name)).f0[-1], ToImage), name


def test_config_validation():
    with pytest.raises(ConfigError, match="3 levels"):
        default_config("mnist", layers=3, latent_dims=[2, 2])
    with pytest.raises(ConfigError, match="output must be"):
        default_config("mnist", output="poisson")
    assert default_config("mnist", latent_dims=[2, 3, 4]).latent_dims == (2, 3, 4)
    assert default_config("mnist", layers=2, latent_dims=[5]).latent_dims == (5, 5)


def test_batches_and_warmup():
    a = batch_indices(7, 1000, 100, seed=3, device="cpu")
    assert torch.equal(a, batch_indices(7, 1000, 100, seed=3, device="cpu"))  # a pure function of (seed, step)
    epoch = torch.cat([batch_indices(s, 1000, 100, 3, "cpu") for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(1000))  # one epoch visits each image once
    assert kl_weight(0, 2000) == 1 / 2000 and kl_weight(999, 2000) == 0.5
    assert kl_weight(1999, 2000) == 1.0 and kl_weight(5000, 2000) == 1.0 and kl_weight(0, 0) == 1.0
    assert TrainConfig().warmup == TrainConfig().steps / 2  # the default run ends at weight 1 (issue 16)
    assert kl_weight(TrainConfig().steps - 1, TrainConfig().warmup) == 1.0


def test_warmup_longer_than_the_run_is_refused(tmp_path, mnist_dir):
    cfg = TrainConfig(steps=5, warmup=6, train_limit=100, data_dir=str(mnist_dir), device="cpu")
    with pytest.raises(ConfigError, match="--warmup 6 must be between 0 and --steps 5"):
        train(default_config("mnist"), cfg, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_loss_falls_on_real_mnist(tmp_path, mnist_dir):
    cfg = TrainConfig(steps=40, batch_size=50, train_limit=400, eval_limit=200, data_dir=str(mnist_dir),
                      save_every=0, log_every=5, lr=1e-3, device="cpu")
    result = train(default_config("mnist"), cfg, tmp_path, show_progress=False)
    import json

    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    recon = [l["recon"] for l in lines if "recon" in l]
    assert [l["step"] for l in lines if "recon" in l] == [1, 5, 10, 15, 20, 25, 30, 35, 40]  # step 1, then every 5
    assert sum(recon[-2:]) / 2 < 0.7 * sum(recon[:2]) / 2  # reconstruction improves clearly
    assert math.isfinite(result["elbo"]) and result["images"] == 200
    assert lines[-1]["test"]["elbo"] == pytest.approx(result["elbo"])


def test_separate_top_encoder_reads_x_through_its_own_trunk():
    """--top-encoder separate: mu_L, logvar_L come from g_top (a whole trunk of its own) and q_L alone; the lower levels'
    codes from the shared g_1..g_{L-1}; neither path's parameters get gradient from the other's outputs."""
    torch.manual_seed(1)
    cfg = VLAEConfig(latent_dims=(2, 3, 2), channels=(4, 8), hidden=16, top_encoder="separate")
    m = VLAE(cfg)
    assert len(m.g) == 2 and len(m.g_top) == 3  # the shared trunk stops below the top; the top's goes from x up
    x = torch.rand(7, 1, 28, 28)
    mus, logvars = m.encode(x)
    assert [mu.shape for mu in mus] == [(7, 2), (7, 3), (7, 2)]
    assert torch.equal(mus[-1], m.q[-1](m.g_top(x))[0])
    shared = [p for n, p in m.named_parameters() if n.startswith("g.")]
    own = [p for n, p in m.named_parameters() if n.startswith("g_top.")]
    top_grads = torch.autograd.grad(mus[-1].sum() + logvars[-1].sum(), shared + own, allow_unused=True)
    assert all(g is None for g in top_grads[:len(shared)]) and all(g is not None for g in top_grads[len(shared):])
    low_grads = torch.autograd.grad(sum(mu.sum() for mu in mus[:-1]), shared + own, allow_unused=True)
    assert all(g is not None for g in low_grads[:len(shared)]) and all(g is None for g in low_grads[len(shared):])
    top = {id(p) for p in m.top_level_parameters()}  # --top-lr slows the whole path to the top, not the shared trunk
    assert {n for n, p in m.named_parameters() if id(p) in top} == \
        {n for n, _ in m.named_parameters() if n.startswith(("g_top.", "q.2.", "f_top."))}
    out = m(x)
    assert out.logits.shape == x.shape and out.kl.shape == (7, 3)
    assert VLAE(VLAEConfig(latent_dims=(2, 2))).g_top is None  # shared: eq. 12 as before
    with pytest.raises(ValueError, match="1-level"):
        VLAEConfig(latent_dims=(2,), top_encoder="separate")
    with pytest.raises(ValueError, match="top_encoder"):
        VLAEConfig(top_encoder="own")
