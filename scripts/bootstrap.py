#!/usr/bin/env python3
"""Set up (or reuse) the project's virtual environment at .venv/ and run the demo or the tests.

    python3 scripts/bootstrap.py demo   # the main job on the built-in default
    python3 scripts/bootstrap.py test   # ruff check, ruff format --check, mypy, then the test suite

Only the Python standard library is used here, so it runs on a fresh machine. On a machine without
CUDA the CPU build of torch 2.13.0 is installed before dqlr itself, so pip never pulls a multi-GB
CUDA build to satisfy dqlr's torch requirement.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
TORCH = "torch==2.13.0"
STAMP = VENV / ".dqlr-installed"


def run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def has_cuda() -> bool:
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may run under an older python3
        sys.exit("dqlr needs Python 3.11 or newer")
    if not PYTHON.exists():
        run(sys.executable, "-m", "venv", VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch first: with 2.13.0 in place, dqlr's range is satisfied and nothing else is pulled.
    # Without CUDA, DQLR_TORCH_INDEX may name a CPU wheel index (e.g. PyTorch's /whl/cpu) for
    # machines whose default index would hand out the CUDA build.
    index = os.environ.get("DQLR_TORCH_INDEX")
    if index and not has_cuda():
        run(*pip, TORCH, "--index-url", index)
    else:
        run(*pip, TORCH)
    run(*pip, "-e", ".[test,all]")
    STAMP.write_text(wanted)


def check() -> None:
    """Lint, format and type checks before the tests: CI fails on any of them."""
    paths = ["src", "tests", "benchmarks", "scripts", "docs", "README.md"]  # the notebook and README code too
    run(BIN / "ruff", "check", *paths)
    run(BIN / "ruff", "format", "--check", *paths)
    run(PYTHON, "-m", "mypy")


def display() -> list[str]:
    """The napari tests draw with OpenGL: on Linux without a display they run in Xvfb's (.ci/run
    installs it with Mesa's software OpenGL)."""
    headless = not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")
    if not (sys.platform.startswith("linux") and headless):
        return []
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"]
    print(
        "bootstrap: no display and no xvfb-run: the napari tests will abort; install the Debian "
        "packages that .ci/run names (xvfb and Mesa's OpenGL), or run .ci/run",
        file=sys.stderr,
    )
    return []


def main() -> None:
    task = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if task not in {"demo", "test", "setup"}:
        sys.exit("usage: python3 scripts/bootstrap.py demo|test|setup")
    setup()
    if task == "demo":
        run(BIN / "dqlr", "demo", "--out", "out/demo", *sys.argv[2:])
    elif task == "test":
        check()
        run(*display(), PYTHON, "-m", "pytest", *sys.argv[2:])


if __name__ == "__main__":
    main()
