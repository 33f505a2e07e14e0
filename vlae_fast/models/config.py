"""What every model config shares: the image, the levels, the output distribution, and their checks.

Each model's config (VLAEConfig, ConvVLAEConfig, HVAEConfig) is a ModelConfig with its own defaults
and fields; a checkpoint stores `to_dict()` as JSON and models.make_config rebuilds it from that dict.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .likelihood import DEFAULT_SCALE, OUTPUTS


@dataclass
class ModelConfig:
    model: str = ""  # the REGISTRY name; each subclass sets its own
    dataset: str = "mnist"  # the data set it was built for (checkpoints find their data through it)
    image_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W
    latent_dims: tuple[int, ...] = (2, 2, 2)  # d_l, bottom first: one code width per level
    hidden: int = 1024  # width of the fully-connected blocks (authors' cs[3])
    output: str = "gaussian"  # r(x; .): the paper's fixed-variance Gaussian; or laplace / bernoulli
    output_scale: float | None = None  # sigma (gaussian) or b (laplace); None = the model's default_scale()
    extra: dict = field(default_factory=dict)  # free-form notes kept in the checkpoint

    DIVISIBLE_BY = 1  # image height and width must be multiples of this (two stride-2 layers: 4)

    def __post_init__(self):
        """Tuples for image_shape / latent_dims, a known output distribution, one positive code width per
        level, H and W divisible by DIVISIBLE_BY, the default scale. ValueError says which value."""
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self.latent_dims = tuple(int(d) for d in self.latent_dims)
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}; got {self.output!r}")
        if not self.latent_dims or min(self.latent_dims) < 1:
            raise ValueError(f"latent_dims needs one positive width per level; got {self.latent_dims}")
        C, H, W = self.image_shape
        if H % self.DIVISIBLE_BY or W % self.DIVISIBLE_BY:
            raise ValueError(f"image height and width must be divisible by {self.DIVISIBLE_BY}; got {H}x{W}")
        if self.output_scale is None:
            self.output_scale = self.default_scale()

    def default_scale(self) -> float | None:
        """The output distribution's scale when the config gives none (authors' MNIST loss)."""
        return DEFAULT_SCALE[self.output]

    @property
    def layers(self) -> int:
        return len(self.latent_dims)

    def to_dict(self) -> dict:
        return asdict(self)
