"""deskew.py: the slant of a drawn line is found by its moments and taken out; ink and rows are kept."""
import pytest
import torch

from vlae_fast.deskew import deskew, moments


def slanted_bar(H: int, W: int, a: float, x0: float) -> torch.Tensor:
    """A bar 2 pixels wide, anti-aliased, whose left edge at row y is c = x0 + a (y - (H - 1) / 2): pixels
    floor(c), +1, +2 get ink 1 - f, 1, f (f = c - floor(c)), so each row's ink centre is c + 0.5: slant exactly a."""
    img = torch.zeros(1, 1, H, W)
    for y in range(3, H - 3):
        c = x0 + a * (y - (H - 1) / 2)
        p, f = int(c // 1), c % 1
        img[0, 0, y, p:p + 3] = torch.tensor([1 - f, 1.0, f])
    return img


@pytest.mark.parametrize("H,W", [(28, 28), (31, 23), (17, 40)])
def test_a_drawn_slant_is_found_and_taken_out(H, W):
    g = torch.Generator().manual_seed(H * W)
    for _ in range(4):
        a = (torch.rand((), generator=g).item() - 0.5) * 0.8  # -0.4 .. 0.4 columns per row
        img = slanted_bar(H, W, a, W / 2)
        c_y, alpha = moments(img)
        assert alpha.item() == pytest.approx(a, abs=1e-4)
        assert c_y.item() == pytest.approx((H - 1) / 2, abs=0.01)
        out = deskew(img)
        _, after = moments(out)
        assert abs(after.item()) < 0.01
        cols = out[0, 0].sum(0)  # ink per column: an upright bar fills a few columns, the slanted one many
        spread = lambda c: (c > 0.05 * c.max()).sum().item()  # noqa: E731
        assert spread(cols) <= 4 and (abs(a) < 0.2 or spread(img[0, 0].sum(0)) > 4)
        assert torch.allclose(out.sum((0, 1, 3)), img.sum((0, 1, 3)), atol=1e-4)  # each row keeps its ink


def test_upright_and_blank_images_are_left_alone_and_batches_are_per_image():
    upright, blank = slanted_bar(28, 28, 0.0, 12), torch.zeros(1, 1, 28, 28)
    assert torch.allclose(deskew(upright), upright, atol=1e-6)
    assert torch.equal(deskew(blank), blank)
    batch = torch.cat([slanted_bar(28, 28, 0.3, 14), upright, slanted_bar(28, 28, -0.25, 14)])
    assert torch.allclose(deskew(batch), torch.cat([deskew(b[None]) for b in batch]), atol=1e-6)
    with pytest.raises(ValueError, match="grey"):
        deskew(torch.rand(2, 3, 8, 8))
