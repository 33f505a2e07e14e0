"""What the explorer page asks of a model, with every request value checked (InputError -> a 4xx answer).

The page holds the state (one control vector per level); the server is stateless apart from the model,
loaded once and only read. Every answer is plain JSON; images travel as PNG data URLs.
"""
from __future__ import annotations

import base64
import io
import json
import math
import threading

import torch
from PIL import Image
from torch import Tensor

from ..data import ImageSet
from ..images import grid
from ..models.base import LatentModel
from .inputs import MAX_BYTES, InputError, decode_image

SPAN = 3.0  # the page's pads and sliders cover the prior's +-3 sigma
LIMIT = 10.0  # controls accepted up to +-10: posterior means of odd images lie outside +-3, never this far
MAX_JSON_BYTES = 64 << 10  # a decode request is a few hundred numbers


def png_data_url(x: Tensor) -> str:
    """One image [C, H, W] in [0, 1] as a data:image/png URL (native size; the page scales it up)."""
    buf = io.BytesIO()
    Image.fromarray(grid(x[None], pad=0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_int(text: str | None, name: str, lo: int, hi: int) -> int:
    """A query parameter that must be an integer in [lo, hi]."""
    if text is None:
        raise InputError(f"missing query parameter {name!r} (an integer from {lo} to {hi})")
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{name} must be an integer from {lo} to {hi}; got {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise InputError(f"{name} must be from {lo} to {hi}; got {value}")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_controls(body: bytes, dims: tuple[int, ...]) -> list[Tensor]:
    """The body {"controls": [[...d_1 numbers], ..., [...d_L numbers]]} -> list of [1, d_l] float32."""
    if len(body) > MAX_JSON_BYTES:
        raise InputError(f"request body is {len(body)} bytes; the limit is {MAX_JSON_BYTES}", 413)
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise InputError(f"request body is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("controls"), list):
        raise InputError('send {"controls": [[...], ...]}: one list of numbers per level, bottom first')
    levels = payload["controls"]
    if len(levels) != len(dims):
        raise InputError(f"controls has {len(levels)} levels; this model has {len(dims)} ({list(dims)} numbers each)")
    out = []
    for l, (values, d) in enumerate(zip(levels, dims), 1):
        if not isinstance(values, list) or len(values) != d:
            raise InputError(f"level {l} needs a list of {d} numbers")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > LIMIT:
                raise InputError(f"level {l}: every value must be a finite number in [-{LIMIT:g}, {LIMIT:g}]; got {v!r}"[:160])
        out.append(torch.tensor([values], dtype=torch.float32))
    return out


class Explorer:
    """A model and (where it can be read) its test split, answering the page's requests."""

    def __init__(self, model: LatentModel, name: str, test: ImageSet | None = None, why_no_test: str = ""):
        self.model = model.eval().requires_grad_(False)
        self.name, self.test, self.why_no_test = name, test, why_no_test
        self.lock = threading.Lock()  # one model, requests from a thread pool: decode one at a time

    def _controls_json(self, c: list[Tensor]) -> list[list[float]]:
        return [[round(min(max(float(v), -LIMIT), LIMIT), 4) for v in cl[0]] for cl in c]  # what decode accepts

    def info(self) -> dict:
        m = self.model
        return {"name": self.name, "model": m.cfg.model, "dataset": m.cfg.dataset, "control": m.CONTROL,
                "levels": list(m.latent_dims), "image_shape": list(m.cfg.image_shape), "span": SPAN, "limit": LIMIT,
                "test_images": len(self.test) if self.test is not None else 0, "why_no_test": self.why_no_test,
                "max_upload_bytes": MAX_BYTES}

    def decode(self, body: bytes) -> dict:
        c = parse_controls(body, self.model.latent_dims)
        with self.lock:
            x = self.model.decode_controls([cl.to(self.model.device) for cl in c])
        return {"image": png_data_url(x[0])}

    def prior(self, seed: str | None) -> dict:
        g = torch.Generator(device=self.model.device).manual_seed(parse_int(seed, "seed", 0, 2**31 - 1))
        with self.lock:
            c = self.model.prior_controls(1, g)
        return {"controls": self._controls_json(c)}

    def posterior(self, index: str | None) -> dict:
        if self.test is None:
            raise InputError(f"no test images: {self.why_no_test}", 404)
        i = parse_int(index, "index", 0, len(self.test) - 1)
        x = self.test.batch(torch.tensor([i], device=self.test.x.device)).to(self.model.device)
        return self._from_image(x, f"test image {i}")

    def upload(self, body: bytes) -> dict:
        x = decode_image(body, tuple(self.model.cfg.image_shape), "the uploaded file")
        return self._from_image(x[None].to(self.model.device), "your image")

    def _from_image(self, x: Tensor, label: str) -> dict:
        with self.lock:
            c = self.model.encode_controls(x)  # posterior means
        return {"controls": self._controls_json(c), "image": png_data_url(x[0]), "label": label}
