"""vlae_fast.eval on constructed models whose answers are known: the IW bound of a linear-Gaussian model
equals log p(x), a collapsed level has no active units, chance probes and no variation share, a level that
copies the label is probed at ~1.0, a decoder that thickens strokes with z_1 puts the ink at level 1."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vlae_fast.data import ImageSet
from vlae_fast.eval import evaluate, iw_bound
from vlae_fast.eval.levels import factor_shares, gini, image_factors, variation_shares
from vlae_fast.eval.probes import active_units, label_probes, posterior_means
from vlae_fast.eval.report import claims
from vlae_fast.models import build_model, default_config
from vlae_fast.models.base import LatentModel, Output, gaussian_log_density
from vlae_fast.models.likelihood import neg_log_likelihood


class Toy(LatentModel):
    """A LatentModel with hand-written halves: subclasses give encode / decode; one dummy parameter gives the device."""

    def __init__(self, latent_dims, output="gaussian", image_shape=(1, 28, 28), scale=None):
        super().__init__()
        self.cfg = SimpleNamespace(latent_dims=tuple(latent_dims), output=output, output_scale=scale,
                                   image_shape=image_shape, model="toy", dataset="toy")
        self.anchor = nn.Parameter(torch.zeros(()))


class LinearGaussian(Toy):
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D), so p(x) = N(b, W W^T + s^2 I) in closed form. W's columns are
    orthogonal, so the exact posterior is diagonal: var_j = 1 / (1 + a_j^2 / s^2), mean var * W^T (x - b) / s^2.
    exact=False shifts and widens q, so the ELBO falls short of log p(x)."""

    def __init__(self, exact: bool):
        super().__init__([2], image_shape=(1, 2, 3))
        g = torch.Generator().manual_seed(1)
        q, _ = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([2.0, 0.7], dtype=torch.float64)  # [D, d], W^T W = diag(4, 0.49)
        self.b = torch.randn(6, generator=g, dtype=torch.float64)
        self.s = 0.5
        self.exact = exact

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(6, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.flatten(1))

    def encode(self, x):
        var = 1 / (1 + (self.W ** 2).sum(0) / self.s ** 2)  # [d]
        mu = (x.flatten(1) - self.b) @ self.W * var / self.s ** 2
        logvar = var.log().expand_as(mu)
        if not self.exact:  # a posterior off-centre and too wide
            mu, logvar = mu + 0.5, logvar + 0.7
        return [mu], [logvar]

    def log_weight(self, x):
        (mu,), (logvar,) = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        r = x.flatten(1) - z @ self.W.T - self.b
        log_px_z = -0.5 * (r / self.s).square().sum(1) - 6 * math.log(self.s) - 3 * math.log(2 * math.pi)
        return log_px_z + gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)) - gaussian_log_density(z, mu, logvar)


def linear_gaussian_data(n=40):
    model = LinearGaussian(exact=True)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = z @ model.W.T + model.b + model.s * torch.randn(n, 6, generator=g, dtype=torch.float64)
    return ImageSet("toy", "test", x.view(n, 1, 2, 3), None)


def test_iw_bound_is_log_p_x_exactly_with_the_true_posterior():
    data = linear_gaussian_data()
    model = LinearGaussian(exact=True)
    log_p = model.log_marginal(data.x).mean().item()
    for k, rows in ((1, 1000), (7, 1000), (10, 3)):  # rows=3: K split over several log_weight calls
        r = iw_bound(model, data, k, discrete=False, show_progress=False, rows=rows)
        assert r["bound"] == pytest.approx(log_p, abs=1e-9) and r["elbo"] == pytest.approx(log_p, abs=1e-9)


def test_iw_bound_is_above_the_elbo_and_tightens_with_k():
    data = linear_gaussian_data(400)  # enough images that the averages are ordered as their expectations
    model = LinearGaussian(exact=False)
    log_p = model.log_marginal(data.x).mean().item()
    bounds = {k: iw_bound(model, data, k, seed=3, discrete=False, show_progress=False) for k in (1, 10, 100, 1000)}
    assert bounds[1]["bound"] == pytest.approx(bounds[1]["elbo"])  # K = 1 is the ELBO
    assert all(b["bound"] >= b["elbo"] for b in bounds.values())
    values = [bounds[k]["bound"] for k in (1, 10, 100, 1000)]
    assert values == sorted(values) and values[-1] <= log_p + 1e-3
    assert log_p - values[0] > 0.5  # the imperfect q leaves a real gap, which K = 1000 nearly closes
    assert log_p - values[-1] < 0.05 * (log_p - values[0])


def test_iw_bound_on_a_real_vlae_is_above_its_elbo_and_keeps_the_callers_random_stream(mnist_dir):
    from vlae_fast.data import load_dataset

    torch.manual_seed(0)
    model = build_model(default_config("mnist", latent_dims=[2, 3]))
    data = load_dataset("mnist", "test", mnist_dir).head(8)
    torch.manual_seed(123)
    expect = torch.rand(3)
    torch.manual_seed(123)
    r = iw_bound(model, data, 20, show_progress=False)
    assert torch.equal(torch.rand(3), expect)
    assert r["bound"] > r["elbo"] and r["discrete"] == "dequantize"
    assert r == iw_bound(model, data, 20, show_progress=False)  # seeded: the same figures again


@pytest.mark.parametrize("name", ["vlae", "hvae"])
def test_evaluate_leaves_the_callers_random_stream_alone(name, mnist_dir):
    """Issue 16, defect 5: evaluate() used to reseed the global generator."""
    from vlae_fast.data import load_dataset

    torch.manual_seed(0)
    model = build_model(default_config("mnist", name, latent_dims=[2, 2]))
    data = load_dataset("mnist", "test", mnist_dir).head(20)
    torch.manual_seed(123)
    expect = torch.rand(3)
    torch.manual_seed(123)
    first = evaluate(model, data, batch_size=7, seed=5, discrete=True)
    assert torch.equal(torch.rand(3), expect)
    assert evaluate(model, data, batch_size=7, seed=5, discrete=True) == first  # its own seed makes it repeatable
    assert evaluate(model, data, batch_size=7, seed=6)["elbo"] != first["elbo"]


class ConstantDecoder(Toy):
    """q(z | x) = p(z) = N(0, I) and r(x | z) with mean 1/2 whatever z is: every bound is known in closed form."""

    def encode(self, x):
        mu = torch.zeros(len(x), self.cfg.latent_dims[0])
        return [mu], [mu]

    def decode(self, z):
        return torch.zeros(len(z[0]), *self.cfg.image_shape)  # logits 0: mean 1/2

    def forward(self, x, eps=None):
        z = [eps[0] if eps is not None else torch.randn(len(x), self.cfg.latent_dims[0])]
        logits = self.decode(z)
        return Output(logits, neg_log_likelihood(x, logits, self.cfg.output, self.cfg.output_scale),
                      torch.zeros(len(x), 1), z)

    def log_weight(self, x):
        return -neg_log_likelihood(x, self.decode([torch.zeros(len(x), 1)]), self.cfg.output, self.cfg.output_scale)


def test_discrete_bound_of_a_fair_coin_is_one_bit_per_dim():
    g = torch.Generator().manual_seed(0)
    grey = ImageSet("toy", "test", torch.randint(0, 256, (30, 1, 4, 4), generator=g).float() / 255, None)
    binary = ImageSet("toy", "test", (grey.x > 0.5).float(), None)
    model = ConstantDecoder([1], output="bernoulli", image_shape=(1, 4, 4))
    for data, how in ((binary, "binary"), (grey, "binarize")):
        r = evaluate(model, data, discrete=True)
        assert r["discrete"] == how and r["discrete_elbo"] == pytest.approx(-16 * math.log(2))
        assert iw_bound(model, data, 3, show_progress=False)["bound"] == pytest.approx(-16 * math.log(2))


def test_discrete_bound_of_a_gaussian_is_its_dequantized_density_minus_d_log_255():
    """E_u[log N(x + (u - 1/2)/255; 1/2, s^2)] = log N(x; 1/2, s^2) - 1 / (24 s^2 255^2) per pixel, exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 1, 8, 8), generator=g).float() / 255
    s = 0.2
    model = ConstantDecoder([1], output="gaussian", image_shape=(1, 8, 8), scale=s)
    assert evaluate(model, ImageSet("toy", "test", x, None))["discrete_elbo"] is None  # one pass unless asked
    r = evaluate(model, ImageSet("toy", "test", x, None), discrete=True)
    log_density = -0.5 * ((x - 0.5) / s).square() - math.log(s) - 0.5 * math.log(2 * math.pi)
    assert r["elbo"] == pytest.approx(log_density.flatten(1).sum(1).mean().item(), rel=1e-5)
    expect = (log_density - 1 / (24 * s ** 2 * 255 ** 2) - math.log(255)).flatten(1).sum(1).mean().item()
    assert r["discrete"] == "dequantize" and r["discrete_elbo"] == pytest.approx(expect, abs=0.02)


class LabelCoder(Toy):
    """Images carry their label as a bright pixel in row 0, column y, and two noise pixels in row 27.
    Level 1 copies the label pixels; level 2 is collapsed (q = prior: posterior mean 0, decoder ignores it);
    level 3 copies the noise pixels (active, but nothing to do with the label)."""

    def __init__(self):
        super().__init__([10, 2, 2])

    def encode(self, x):
        mus = [3 * x[:, 0, 0, :10], torch.zeros(len(x), 2), x[:, 0, 27, :2]]
        return mus, [torch.zeros_like(m) for m in mus]

    def decode(self, z):
        logits = torch.zeros(len(z[0]), 1, 28, 28)
        logits[:, 0, 5:15, :10] = z[0][:, None, :]  # level 1 paints the top, level 3 the bottom; level 2 nothing
        logits[:, 0, 20:25, :2] = 4 * z[2][:, None, :]
        return logits


def labelled_images(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    y = y[torch.randperm(n, generator=g)]
    x = torch.zeros(n, 1, 28, 28)
    x[torch.arange(n), 0, 0, y] = 1.0
    x[:, 0, 27, :2] = torch.rand(n, 2, generator=g)
    return ImageSet("toy", "test", x, y)


def test_active_units_and_probes_on_copying_and_collapsed_levels():
    model = LabelCoder()
    fit, test = labelled_images(500, 0), labelled_images(500, 1)
    mus, labels = posterior_means(model, test)
    assert active_units(mus) == [10, 0, 2]  # level 1: 10 one-hot units, each with variance 9 * 0.1 * 0.9 > 0.01
    fit_mus, fit_labels = posterior_means(model, fit)
    p = label_probes(fit_mus, fit_labels, mus, labels)
    assert p["chance"] == pytest.approx(0.1)
    assert p["levels"][0]["knn"] > 0.99 and p["levels"][0]["logreg"] > 0.99 and p["all"]["logreg"] > 0.99
    for level in (1, 2):  # collapsed, and active but label-free: chance accuracy
        assert abs(p["levels"][level]["knn"] - 0.1) < 0.06 and abs(p["levels"][level]["logreg"] - 0.1) < 0.06
    shares = variation_shares(model, steps=16)
    assert shares[1] == 0.0 and shares[0] > 0 and shares[2] > 0 and sum(shares) == pytest.approx(1)


def test_active_units_threshold():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4000, 3, generator=g) * torch.tensor([0.05, 0.2, 1.0])  # variances 0.0025, 0.04, 1
    assert active_units([mu, torch.zeros(4000, 2)]) == [2, 0]


class Stroke(Toy):
    """A vertical stroke: z_1 sets its thickness, z_2 its horizontal place, z_3 its slant (shear)."""

    def __init__(self):
        super().__init__([1, 1, 1])

    def decode(self, z):
        w = 3 + 2 * torch.tanh(z[0])  # [B, 1] stroke width in pixels
        centre = 14 + 4 * torch.tanh(z[1])
        slope = 0.3 * torch.tanh(z[2])  # columns per row
        r = torch.arange(28.0).view(1, 28, 1)
        c = torch.arange(28.0).view(1, 1, 28)
        at = centre.view(-1, 1, 1) - slope.view(-1, 1, 1) * (r - 13.5)  # leaning right: higher rows further right
        return (4 * (w.view(-1, 1, 1) / 2 - (c - at).abs())).unsqueeze(1)  # logits [B, 1, 28, 28]


def test_image_factors_on_drawn_images():
    x = torch.zeros(3, 1, 28, 28)
    x[0, 0, 4:24, 10:13] = 1  # upright bar, 3 wide
    for r in range(4, 24):  # "/" : one column further right per row up
        x[1, 0, r, 24 - r] = 1
    f = image_factors(x)
    assert f["width"].tolist() == [3, 20, 0] and f["slant"][0] == pytest.approx(0) and f["slant"][1] == pytest.approx(1)
    assert f["ink"][0] == pytest.approx(60 / 784) and f["ink"][2] == 0 and f["slant"][2] == 0


def test_a_decoder_that_thickens_strokes_with_z1_puts_ink_at_level_1():
    class Centre(nn.Module):  # a "classifier" whose class is the stroke's column band: level 2 moves it
        def forward(self, x):
            col = (x[:, 0].sum(1) * torch.arange(28.0)).sum(1) / x[:, 0].sum((1, 2))
            return nn.functional.one_hot((col / 2.8).long().clamp(0, 9), 10).float()

    f = factor_shares(Stroke(), Centre(), steps=16)
    assert f["ink"][0] > 0.95 and f["slant"][2] > 0.9 and f["class"][1] > 0.9
    assert factor_shares(Stroke(), None, steps=4)["class"] is None


def test_gini():
    assert gini(torch.tensor([[3, 3, 3, 3], [0, 1, 0, 1]])).tolist() == [0.0, 0.5]


def test_claims_verdicts():
    lv = [{"logreg_acc": a} for a in (0.3, 0.5, 0.9)]
    paper = {"ink": [0.8, 0.1, 0.1], "width": [0.2, 0.6, 0.2], "slant": [0.1, 0.7, 0.2], "class": [0.0, 0.2, 0.8]}
    assert [c["holds"] for c in claims(lv, paper)] == [True, True, True, True]
    upside_down = {"ink": [0.1, 0.1, 0.8], "width": [0.2, 0.2, 0.6], "slant": [0.7, 0.1, 0.2], "class": [0.8, 0.2, 0.0]}
    assert [c["holds"] for c in claims(lv[::-1], upside_down)] == [False, False, False, False]
    none = {"ink": [0.0] * 3, "width": [0.0] * 3, "slant": [0.0] * 3, "class": None}  # no variation at all
    assert [c["holds"] for c in claims([{"logreg_acc": None}] * 3, none)] == [False, False]
    close = {"ink": [0.35, 0.32, 0.33], "width": [0.3, 0.37, 0.33], "slant": [0.3, 0.4, 0.3], "class": [0.33, 0.33, 0.34]}
    lv_close = [{"logreg_acc": a} for a in (0.595, 0.59, 0.6)]
    assert [c["holds"] for c in claims(lv_close, close)] == [False, False, False, False]  # leads within the noise


def test_without_scikit_learn_the_probes_are_skipped_with_a_note(monkeypatch):
    import vlae_fast.eval.run as run

    monkeypatch.setattr(run, "sklearn_missing", lambda: "label probes skipped: scikit-learn is not installed")
    lik = {"elbo": 0.0, "recon_nll": 0.0, "kl": [0.0] * 3, "mse": 0.0, "discrete_elbo": None, "discrete": None}
    part = run.compact(LabelCoder(), labelled_images(50, 0), labelled_images(50, 1), likelihood=lik)
    assert part["probes"] is None and part["notes"] == ["label probes skipped: scikit-learn is not installed"]
    assert part["active_units"] == [10, 0, 2] and part["grid"] == 7  # sqrt(50) images: a quick run stays quick
