"""vlae-fast: Variational Ladder Autoencoders (Zhao, Song & Ermon, ICML 2017) with fused Triton kernels.

kernels/ and cli/ sit beside this folder in a checkout and are installed as vlae_fast.kernels and
vlae_fast.cli (pyproject's package-dir; an editable install maps them to the checkout's folders), so
nothing else in the checkout (tests/, bench/, docs/) is part of this package.
"""

__version__ = "0.1.0"
