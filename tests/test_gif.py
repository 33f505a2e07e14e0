"""Animated GIFs (traverse, gibbs): every frame is exactly the images of one row of the PNG grid."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from typer.testing import CliRunner

from vlae_fast import gibbs
from vlae_fast.cli.app import app
from vlae_fast.data import load_dataset
from vlae_fast.errors import ConfigError
from vlae_fast.images import GIF_FRAME_MS, save_images, save_panels
from vlae_fast.models import build_model, default_config

runner = CliRunner()
PAD, SIZE = 2, 28  # grid() pads every image by 2 pixels; MNIST images are 28 x 28


def gif_frames(path) -> list[np.ndarray]:
    """Every frame as shown, a frame Pillow merged with identical successors repeated for its duration."""
    frames = []
    with Image.open(path) as im:
        for f in ImageSequence.Iterator(im):
            repeat = round(f.info["duration"] / GIF_FRAME_MS)
            frames += [np.asarray(f.convert("L"))] * repeat
    return frames


def tiles(a: np.ndarray, top: int = 0, left: int = 0) -> list[np.ndarray]:
    """The SIZE x SIZE images of a grid array whose first pad starts at (top, left), row by row."""
    rows = (a.shape[0] - top - PAD) // (SIZE + PAD)
    cols = (a.shape[1] - left - PAD) // (SIZE + PAD)
    return [a[top + PAD + r * (SIZE + PAD):][:SIZE, left + PAD + k * (SIZE + PAD):][:, :SIZE]
            for r in range(rows) for k in range(cols)]


def test_traverse_gif_frames_are_the_png_rows(tiny_ckpt, tmp_path):
    for suffix in ("png", "gif"):
        r = runner.invoke(app, ["traverse", str(tiny_ckpt), "--layer", "2", "--steps", "5", "--out", str(tmp_path / f"t.{suffix}")])
        assert r.exit_code == 0, r.output
    png = np.asarray(Image.open(tmp_path / "t.png").convert("L"))
    grid_h, grid_w = PAD + 5 * (SIZE + PAD), PAD + 5 * (SIZE + PAD)
    png = png[png.shape[0] - grid_h :, :grid_w]  # the PNG's grid, below its title lines (issue 15)
    frames = gif_frames(tmp_path / "t.gif")
    assert len(frames) == 5
    for r, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, png_row(png, r))


def png_row(png: np.ndarray, r: int) -> np.ndarray:
    return png[r * (SIZE + PAD) : r * (SIZE + PAD) + SIZE + 2 * PAD]  # row r with the pads around it


def test_identical_rows_still_play_for_their_time(tmp_path):
    """Noise frames using all 256 grey levels, 40 seeds: Pillow's default delta frames showed wrong pixels in
    3 of these 40 (seeds 0-39) before the writer turned its optimisation off."""
    for seed in range(40):
        x = torch.rand(4, 3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
        x[2] = x[1]  # Pillow stores rows 1 and 2 as one frame of twice the duration
        save_images(x, tmp_path / "x.gif")
        save_images(x, tmp_path / "x.png")
        png = np.asarray(Image.open(tmp_path / "x.png"))
        frames = gif_frames(tmp_path / "x.gif")
        assert len(frames) == 4
        for r, frame in enumerate(frames):
            np.testing.assert_array_equal(frame, png_row(png, r), err_msg=f"seed {seed}, row {r}")


def test_gibbs_gif_frames_are_the_chain_rows_of_the_png(tmp_path, mnist_dir):
    torch.manual_seed(0)
    model = build_model(default_config("mnist", "hvae", layers=3))  # untrained: any weights make images
    data = load_dataset("mnist", "test", mnist_dir).head(50)
    res = gibbs.run_gibbs(model, data, chains=6, steps=4, every=1, seed=0)
    panels = [("Gibbs on z_1", res["states"]), ("ancestral", res["ancestral"])]
    save_panels(panels, tmp_path / "g.png")
    save_panels(panels, tmp_path / "g.gif")
    png = np.asarray(Image.open(tmp_path / "g.png").convert("L"))
    from vlae_fast.images import labelled

    label_h = labelled(np.zeros((1, 1), np.uint8), "x").shape[0] - 1  # the title band above each panel
    w_left = labelled(np.zeros((1, PAD + 6 * (SIZE + PAD)), np.uint8), "Gibbs on z_1").shape[1]  # >= grid width
    png_left = tiles(png[:, : PAD + 6 * (SIZE + PAD)], top=label_h)  # states: 4 rows (steps) x 6 chains
    png_right = tiles(png[:, w_left + 8 :], top=label_h)  # ancestral: 6 tiled 3 per row
    frames = gif_frames(tmp_path / "g.gif")
    assert len(frames) == 4
    for t, frame in enumerate(frames):
        w_left = labelled(np.zeros((1, PAD + 3 * (SIZE + PAD)), np.uint8), f"Gibbs on z_1 ({t + 1}/4)").shape[1]
        left = tiles(frame[: label_h + PAD + 2 * (SIZE + PAD), : PAD + 3 * (SIZE + PAD)], top=label_h)  # frame t: 6 chains, 3 per row
        assert all(np.array_equal(a, b) for a, b in zip(left, png_left[6 * t : 6 * t + 6])) and len(left) == 6
        right = tiles(frame[: label_h + PAD + 2 * (SIZE + PAD), w_left + 8 : w_left + 8 + PAD + 3 * (SIZE + PAD)],
                      top=label_h)  # ancestral samples, still
        assert len(right) == 6 and all(np.array_equal(a, b) for a, b in zip(right, png_right))


def test_a_gif_with_nothing_to_animate_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--every"):
        save_panels([("a", torch.rand(4, 1, SIZE, SIZE))], tmp_path / "g.gif")
