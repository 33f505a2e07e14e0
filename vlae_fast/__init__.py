"""vlae-fast: Variational Ladder Autoencoders (Zhao, Song & Ermon, ICML 2017) with fused Triton kernels."""
from pathlib import Path as _Path

__version__ = "0.1.0"

# In a plain checkout (nothing installed), kernels/ and cli/ sit beside this folder; the install maps
# them to vlae_fast.kernels and vlae_fast.cli (pyproject's package-dir). Make the checkout behave the
# same by letting this package's submodule search also look one level up.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "kernels" / "__init__.py").is_file() and (_checkout / "cli" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (the package's own __path__)
