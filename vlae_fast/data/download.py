"""Fetch a file from a list of mirrors and accept it only if its SHA-256 matches."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError


def sha256_of(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of the file (SHA-256 unless another hashlib algorithm is named)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name: str, mirrors: list[str], sha256: str, dest_dir: Path, timeout: float = 30.0,
             algorithm: str = "sha256") -> Path:
    """Download `name` from the first mirror that serves it with the right SHA-256 into dest_dir.

    A file whose checksum does not match is deleted and the next mirror is tried; if none works the
    DataError lists each mirror's failure (a checksum mismatch is named as such).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
            got = sha256_of(Path(tmp), algorithm)  # `sha256` holds the expected digest of `algorithm`
            if got != sha256:
                failures.append(f"{url}: checksum mismatch ({algorithm} {got}, expected {sha256}); file rejected")
                continue
            final = dest_dir / name
            os.replace(tmp, final)
            return final
        except OSError as e:  # URLError, HTTPError, timeouts and disk errors are all OSErrors
            failures.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(f"could not download {name}: " + "; ".join(failures))
