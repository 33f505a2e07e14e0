"""The `vlae` command-line interface (installed as vlae_fast.cli)."""
from .app import app, main

__all__ = ["app", "main"]
