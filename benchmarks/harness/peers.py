"""Baselines from other packages, run in their own virtualenv so their pins never touch dqlr's.

Noise2Void comes from the real CAREamics. CAREamics 0.3.5 pins torchvision <= 0.26, which would pull
torch 2.11 (a multi-GB CUDA build) into dqlr's environment, so it is installed on first use into
.venv-peers/ beside .venv/ and driven as a subprocess (n2v_worker.py) on files.

The recipe keeps that environment light: the same torch 2.13.0 as dqlr (the CPU build where one is
at hand), the torchvision made for it (0.28.0) and CAREamics without its torchvision pin, then the
rest of CAREamics' requirements. CAREamics' N2V uses no compiled torchvision op; the worker makes
torchvision's Python part importable where its compiled part cannot load beside a CPU torch.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dqlr.errors import DqlrError

ENV_NAME = ".venv-peers"
STAMP_NAME = "dqlr-peers.json"
TORCH = "torch==2.13.0"  # dqlr's own torch, the CPU build where the machine has it
TORCHVISION = "torchvision==0.28.0"  # the torchvision released for torch 2.13
CAREAMICS = "careamics==0.3.5"
RECIPE = f"light-1: {TORCH} + {TORCHVISION} + {CAREAMICS} --no-deps + its requirements but torchvision"
WORKER = Path(__file__).with_name("n2v_worker.py")


def default_root() -> Path:
    """The checkout that holds .venv/ (src layout), else the current directory."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


def peers_env(root: Path | None = None) -> Path:
    return (root or default_root()) / ENV_NAME


def _python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def peers_env_ready(root: Path | None = None) -> bool:
    """True when the environment was fully built with the current recipe (no download needed)."""
    stamp = peers_env(root) / STAMP_NAME
    try:
        return json.loads(stamp.read_text()).get("recipe") == RECIPE and _python(stamp.parent).exists()
    except (OSError, ValueError):
        return False


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else "no output"
    return line if len(line) <= 400 else line[:400] + " ..."


def _step(what: str, cmd: list[str | Path], progress: bool) -> str:
    """Run one setup command; a failure becomes a one-line DqlrError naming the step."""
    if progress:
        print(f"peers env: {what} ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    except OSError as error:
        raise DqlrError(f"cannot create {ENV_NAME} ({what}): {error}") from None
    if done.returncode != 0:
        raise DqlrError(f"cannot create {ENV_NAME} ({what}): {_last_line(done.stderr or done.stdout)}")
    return done.stdout


def _has_cuda() -> bool:
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


def _careamics_requirements(python: Path, progress: bool) -> list[str]:
    """CAREamics' own requirements, less extras and the torchvision pin that drags in torch 2.11."""
    code = "import importlib.metadata as m, json; print(json.dumps(m.requires('careamics') or []))"
    found = json.loads(_step("reading CAREamics' requirements", [python, "-c", code], progress))
    keep = [r for r in found if "extra ==" not in r]
    return [r for r in keep if re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower() != "torchvision"]


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Two processes building the environment at once would corrupt it; the second one waits.

    The lock file lives inside the environment's folder, which is git-ignored.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_peers_env(root: Path | None = None, progress: bool = True) -> Path:
    """Create .venv-peers on first use (downloads packages) and return its python; idempotent."""
    env = peers_env(root)
    python = _python(env)
    if peers_env_ready(root):
        return python
    with _lock(env / ".dqlr-peers.lock"):
        if peers_env_ready(root):
            return python
        start = time.perf_counter()
        if not python.exists():
            _step(f"creating {env}", [sys.executable, "-m", "venv", env], progress)
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        # Same rule as scripts/bootstrap.py: a CPU wheel index, if named, serves torch and its
        # torchvision on machines without CUDA, so nothing CUDA-sized is downloaded.
        index = os.environ.get("DQLR_TORCH_INDEX")
        where = ["--index-url", index] if index and not _has_cuda() else []
        _step(f"installing {TORCH}", [*pip, TORCH, *where], progress)
        _step(
            f"installing {TORCHVISION} and {CAREAMICS} without dependencies",
            [*pip, "--no-deps", TORCHVISION, CAREAMICS, *where],
            progress,
        )
        requirements = _careamics_requirements(python, progress)
        _step("installing CAREamics' other requirements", [*pip, TORCH, *requirements], progress)
        check = _step("checking that CAREamics imports", [python, WORKER, "--check"], progress)
        stamp = {
            "recipe": RECIPE,
            "requirements": requirements,
            "setup_seconds": round(time.perf_counter() - start, 1),
            **json.loads(check.strip().splitlines()[-1]),
        }
        (env / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if progress:
            print(f"peers env: ready at {env}", file=sys.stderr, flush=True)
    return python


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise DqlrError(f"{name} must be positive, got {value}")


def noise2void(
    train_files: list[Path],
    val_file: Path | None,
    inputs: list[Path],
    outputs: list[Path],
    work_dir: Path,
    minutes: float | None = None,
    epochs: int | None = None,
    patch_size: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    threads: int = 0,
    root: Path | None = None,
) -> dict[str, Any]:
    """Train CAREamics N2V (standard 2-D config, slices as samples) and denoise each input stack.

    Training stops after `epochs` or `minutes` (Lightning's max_time), whichever comes first; with
    neither, CAREamics' default of 30 epochs. threads > 0 pins torch's CPU threads (0: torch's
    default). Outputs are float32 TIFFs in the input's intensity scale. Returns the worker's record:
    train_seconds, predict_seconds, epochs, steps, versions, normalisation, ...
    """
    if not train_files:
        raise DqlrError("noise2void needs at least one training stack")
    if len(inputs) != len(outputs):
        raise DqlrError(f"{len(inputs)} inputs but {len(outputs)} outputs")
    for path in [*train_files, *inputs, *([val_file] if val_file else [])]:
        if not Path(path).is_file():
            raise DqlrError(f"{path}: no such file")
    _positive("minutes", minutes)
    _positive("epochs", epochs)
    _positive("batch_size", batch_size)
    if threads < 0:
        raise DqlrError(f"threads must be 0 (torch's default) or positive, got {threads}")
    if patch_size < 8 or patch_size & (patch_size - 1):
        raise DqlrError(f"patch_size must be a power of 2 from 8 up (CAREamics' rule), got {patch_size}")

    python = ensure_peers_env(root)
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "train_files": [str(Path(p).resolve()) for p in train_files],
        "val_file": str(Path(val_file).resolve()) if val_file else None,
        "inputs": [str(Path(p).resolve()) for p in inputs],
        "outputs": [str(Path(p).resolve()) for p in outputs],
        "work_dir": str(work_dir),
        "result_file": str(work_dir / "n2v_result.json"),
        "minutes": minutes,
        "epochs": epochs,
        "patch_size": patch_size,
        "batch_size": batch_size,
        "seed": seed,
        "threads": threads,
    }
    job_file = work_dir / "n2v_job.json"
    job_file.write_text(json.dumps(job, indent=2))
    Path(job["result_file"]).unlink(missing_ok=True)
    log = work_dir / "n2v_worker.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # the worker must see only the peers environment
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(
            [str(python), str(WORKER), str(job_file)],
            cwd=work_dir,
            env=env,
            stdout=handle,
            stderr=subprocess.PIPE,
            text=True,
        )
        handle.write(done.stderr)
    if done.returncode != 0:
        raise DqlrError(f"Noise2Void failed ({log}): {_last_line(done.stderr)}")
    result = json.loads(Path(job["result_file"]).read_text())
    result["total_seconds"] = time.perf_counter() - start
    result["peers_python"] = str(python)
    return result


def noise2void_cached(
    stacks: dict[str, Any],
    work_dir: Path,
    train_files: list[Path],
    val_file: Path | None,
    minutes: float | None = None,
    threads: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`noise2void` on named in-memory stacks, kept in work_dir ({name}_input.tif, {name}_n2v.tif and
    info.json, spaces in names as underscores): a finished run there is reused. Returns the run's
    record and each stack's result."""
    from dqlr.io import read_stack, write_stack

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    inputs = [work_dir / f"{name.replace(' ', '_')}_input.tif" for name in stacks]
    outputs = [p.with_name(p.name.replace("_input", "_n2v")) for p in inputs]
    record = work_dir / "info.json"
    if not (record.exists() and all(o.exists() for o in outputs)):
        for path, stack in zip(inputs, stacks.values(), strict=True):
            write_stack(path, stack, force=True)
        for out in outputs:
            out.unlink(missing_ok=True)
        info = noise2void(train_files, val_file, inputs, outputs, work_dir, minutes=minutes, threads=threads)
        record.write_text(json.dumps(info, indent=2, default=str))
    info = json.loads(record.read_text())
    return info, {name: read_stack(out).data for name, out in zip(stacks, outputs, strict=True)}
