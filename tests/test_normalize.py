"""normalize.py: slant, digit width and stroke width made common; a digit's shape (its identity) is kept."""
import math

import pytest
import torch

from vlae_fast import normalize as N
from vlae_fast.deskew import deskew


def ring(H: int, W: int, r_x: float, r_y: float, t: float) -> torch.Tensor:
    """An ellipse drawn with a stroke t pixels wide: ink 1 where a pixel centre's distance to the ellipse (its
    radial distance, scaled) is below t / 2, ramping to 0 over one pixel (anti-aliased)."""
    ys = torch.arange(H, dtype=torch.float32)[:, None] - (H - 1) / 2
    xs = torch.arange(W, dtype=torch.float32)[None, :] - (W - 1) / 2
    rho = torch.sqrt((xs / r_x) ** 2 + (ys / r_y) ** 2)  # 1 on the ellipse
    dist = (rho - 1).abs() * math.sqrt((r_x ** 2 + r_y ** 2) / 2)  # about the distance in pixels
    return (t / 2 + 0.5 - dist).clamp(0, 1)[None, None]


@pytest.mark.parametrize("t", [1.5, 2.5, 4.0])
def test_stroke_width_reads_the_drawn_width(t):
    got, p_true = N.stroke_width(ring(40, 40, 12, 12, t))
    assert got.item() == pytest.approx(t, rel=0.2)
    assert p_true.item() == pytest.approx(2 * 2 * math.pi * 12, rel=0.2)  # inner + outer boundary


@pytest.mark.parametrize("H,W", [(28, 28), (33, 29)])
def test_thin_and_thick_strokes_come_out_equally_wide_and_keep_their_shape(H, W):
    thin, thick = ring(H, W, 7, 9, 1.4), ring(H, W, 7, 9, 4.0)
    before = N.stroke_width(torch.cat([thin, thick]))[0]
    out = N.normalize_stroke(torch.cat([thin, thick]))
    after = N.stroke_width(out)[0]
    assert before[1] - before[0] > 2 and (after - N.STROKE).abs().max() < 0.45
    assert out.min() >= 0 and out.max() <= 1
    for img, o in zip((thin, thick), out):  # the same ellipse: ink centred where it was, spread as before
        c_y, c_x = [((img[0, 0] * g).sum() / img.sum()).item() for g in torch.meshgrid(
            torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")]
        assert N.spread_x(o[None])[0].item() == pytest.approx(c_x, abs=0.3)
        assert N.spread_x(o[None])[1].item() == pytest.approx(N.spread_x(img)[1].item(), rel=0.1)


def test_width_becomes_common_within_the_clamp():
    H = W = 28
    narrow, wide, one = ring(H, W, 4.5, 9, 2), ring(H, W, 7, 9, 2), ring(H, W, 1.5, 9, 2)
    sd = N.spread_x(torch.cat([narrow, wide, one]))[1]
    out = N.normalize_width(torch.cat([narrow, wide, one]))
    got = N.spread_x(out)[1]
    assert (sd[1] - sd[0]) / W > 0.03  # the wide one is visibly wider before
    assert got[:2].tolist() == pytest.approx([N.WIDTH * W] * 2, rel=0.05)  # both at the common width after
    assert got[2].item() == pytest.approx(sd[2].item() * N.MAX_SCALE, rel=0.1) and got[2] < 0.75 * N.WIDTH * W  # a "1": the cap
    assert torch.allclose(out.sum((1, 3)), torch.cat([narrow, wide, one]).sum((1, 3)) * torch.tensor(
        [N.WIDTH * W / sd[0], N.WIDTH * W / sd[1], N.MAX_SCALE])[:, None], rtol=0.15, atol=0.05)  # rows kept, stretched


def test_normalize_is_per_image_keeps_blank_and_refuses_colour(mnist_dir):
    from vlae_fast.data import load_dataset

    x = load_dataset("mnist", "train", mnist_dir).x[:12].float()
    out = N.normalize(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.allclose(out, torch.cat([N.normalize(b[None]) for b in x]), atol=1e-5)
    assert torch.equal(out, N.normalize_stroke(N.normalize_width(deskew(x))))
    t, _ = N.stroke_width(x)
    t_after, _ = N.stroke_width(out)
    assert (t_after - N.STROKE).abs().mean() < 0.6 * (t - N.STROKE).abs().mean()  # real digits: strokes closer to common
    blank = torch.zeros(2, 1, 28, 28)
    assert torch.equal(N.normalize(blank), blank)
    with pytest.raises(ValueError, match="grey"):
        N.normalize(torch.rand(2, 3, 8, 8))
