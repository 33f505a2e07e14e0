"""`vlae explore`, `vlae swap`, `vlae export`: thin Typer commands over vlae_fast.explore and vlae_fast.export,
registered in app.py with one line each."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vlae_fast.data import load_for_checkpoint
from vlae_fast.explore.inputs import read_images
from vlae_fast.explore.swap import swap_levels
from vlae_fast.export import DTYPES, export_checkpoint
from vlae_fast.images import save_images
from vlae_fast.rundir import checkpoint_path
from vlae_fast.train import resolve_device

from .common import CKPT, DATA_DIR, DEVICE, err, load, out, user_errors


def explore(
    ckpt: Path = CKPT,
    host: str = typer.Option("127.0.0.1", help="Address to listen on. The default is reachable from this machine only; "
                             "0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    data_dir: Optional[Path] = DATA_DIR,
    device: str = typer.Option("cpu", help="cpu (decoding one image takes milliseconds) or cuda[:N]."),
) -> None:
    """A live latent explorer in the browser: drag each level's control (a 2-d pad, or sliders for wider
    levels) and watch the decoded image change; start from a prior draw, a test image or your own image."""
    from vlae_fast.explore.server import load_explorer, serve

    with user_errors():
        explorer = load_explorer(checkpoint_path(ckpt), str(resolve_device(device)), data_dir)
        if explorer.test is None:
            err.print(f"no test images ({explorer.why_no_test}); the page offers prior draws and uploads",
                      highlight=False, soft_wrap=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"[bold yellow]warning:[/] listening on {host}: anyone who can reach this machine can use the page",
                      highlight=False)
        serve(explorer, host, port, on_ready=lambda url: out.print(f"explore {ckpt} at {url}  (Ctrl-C stops)",
                                                                    highlight=False, soft_wrap=True))


def swap(
    ckpt: Path = CKPT,
    from_: str = typer.Option(..., "--from", help="Image(s) A whose level K is carried over: test-set indices "
                              "and/or image files, comma-separated.", show_default=False),
    to: str = typer.Option(..., "--to", help="Image(s) B that receive it (as many as --from, or one on a side).",
                           show_default=False),
    level: Optional[List[int]] = typer.Option(None, "--level", help="Level K to swap, 1 = bottom; repeat for "
                                              "several (default: every level, one row each)."),
    out_path: Path = typer.Option(Path("swap.png"), "--out", help="PNG grid or .npz (key x: [rows, pairs, C, H, W])."),
    data_dir: Optional[Path] = DATA_DIR,
    device: str = DEVICE,
) -> None:
    """Give B the level-K code of A and decode: style transfer through the ladder (Figures 5-6). Rows: A, B,
    B reconstructed, then B with A's level K, one row per level; columns: the (A, B) pairs."""
    with user_errors():
        model, info = load(ckpt, device, out_path, (".png", ".npz"))
        test = None

        def test_images():
            nonlocal test
            test = test if test is not None else load_for_checkpoint(info, "test", data_dir)
            return test

        shape = tuple(model.cfg.image_shape)
        xa, xb = read_images(from_, shape, test_images, "--from"), read_images(to, shape, test_images, "--to")
        res = swap_levels(model, xa, xb, level)
        path = save_images(res["grid"], out_path)
    out.print(f"wrote {res['grid'].shape[1]} swap(s) to {path}; rows: {', '.join(res['labels'])}",
              highlight=False, soft_wrap=True)


def export(
    ckpt: Path = CKPT,
    out_path: Path = typer.Option(..., "--out", help="The .safetensors file to write.", show_default=False),
    dtype: str = typer.Option("float32", help=f"Weights stored as: {', '.join(DTYPES)} (half the size; "
                              "widened to float32 on load)."),
) -> None:
    """A checkpoint to share: weights and config only, no optimizer state or RNG states. Every command
    reads it; `train --resume` cannot continue from it."""
    with user_errors():
        source = checkpoint_path(ckpt)
        path = export_checkpoint(source, out_path, dtype)
    before, after = source.stat().st_size, path.stat().st_size
    out.print(f"wrote {path}: {after / 1e6:.1f} MB ({dtype} weights and config) from {before / 1e6:.1f} MB",
              highlight=False, soft_wrap=True)
