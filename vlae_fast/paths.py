"""Where vlae-fast keeps what it downloads, decodes or trains once: one user-cache root for all of it."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$XDG_CACHE_HOME/vlae-fast, else ~/.cache/vlae-fast: data sets (data/), decoded image caches of
    read-only folders (data/cache/) and the MNIST classifier (classifier/)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlae-fast"
