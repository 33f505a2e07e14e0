"""Packaging: vlae_fast is vlae_fast/ plus kernels/ and cli/ (pyproject's package-dir) and nothing else of the
checkout; an editable install (pip install -e ., with or without build isolation) maps kernels/ and cli/ to
vlae_fast.kernels and vlae_fast.cli without any path hook in the package itself."""
import importlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import vlae_fast

REPO = Path(__file__).resolve().parent.parent


def test_the_checkout_is_not_part_of_the_package():
    assert [Path(p).resolve() for p in vlae_fast.__path__] == [REPO / "vlae_fast"]
    for name in ("tests", "bench", "docs"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"vlae_fast.{name}")
    kernels, cli = importlib.import_module("vlae_fast.kernels"), importlib.import_module("vlae_fast.cli")
    assert Path(kernels.__file__).parent == REPO / "kernels" and Path(cli.__file__).parent == REPO / "cli"


@pytest.mark.slow
def test_editable_install_without_build_isolation_in_a_fresh_venv(tmp_path):
    """`pip install --no-deps --no-build-isolation -e .` into a fresh venv whose only other packages (torch,
    typer, setuptools ...) come from this one's site-packages: `python -m vlae_fast.cli` and the `vlae`
    script work from any folder, and the checkout's tests/ do not import as vlae_fast.tests."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # a path listed in a .pth file is added to sys.path, but the .pth files inside it are not read: the
    # dependencies come along, this venv's own editable install of the checkout does not
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args, cwd=tmp_path):
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)

    assert run(py, "-c", "import vlae_fast").returncode != 0  # nothing installed yet
    r = run(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-build-isolation", "-e", REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    for cwd in (tmp_path, REPO):  # from the checkout root too, where ./vlae_fast shadows the install
        r = run(py, "-m", "vlae_fast.cli", "--help", cwd=cwd)
        assert r.returncode == 0 and "Usage: python -m vlae_fast.cli" in r.stdout, r.stderr[-3000:]
        r = run(venv / "bin" / "vlae", "--help", cwd=cwd)
        assert r.returncode == 0 and "Usage: vlae" in r.stdout, r.stderr[-3000:]
        r = run(py, "-c", "import vlae_fast.tests", cwd=cwd)
        assert r.returncode != 0 and "No module named 'vlae_fast.tests'" in r.stderr, (r.stdout, r.stderr)
