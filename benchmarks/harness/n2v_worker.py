"""Train and apply CAREamics Noise2Void; runs inside .venv-peers, never in dqlr's own environment.

CAREamics pins torch/torchvision versions that clash with dqlr's, so it lives in its own virtualenv
and harness.peers runs this file there on files. It may import only CAREamics (and what CAREamics
itself brings, such as torch), numpy, tifffile and the standard library, never dqlr.

    python n2v_worker.py job.json   # train + predict, writes the job's result file
    python n2v_worker.py --check    # import CAREamics and print the versions as JSON

The last line on stderr of a failed run is a one-line error that harness.peers shows to the user.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

TILE = 256  # slices larger than TILE x TILE are predicted in tiles, which bounds CPU memory
TILE_OVERLAP = 48  # CAREamics' default tile overlap


def _import_torchvision() -> str:
    """Make torchvision importable next to a CPU-only torch; return how it was imported.

    PyPI's torchvision wheels are CUDA builds: beside a CPU torch their compiled ops fail to load,
    and torchvision then dies on import while registering fake kernels for the missing nms/qnms
    operators. CAREamics imports torchvision (LVAE transforms, BMZ export) but N2V uses none of
    its compiled ops, so declaring those two operator schemas lets the pure-Python part load.
    """
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for op in ("nms", "qnms"):
            torch.library.define(
                f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )
        import torchvision  # noqa: F401

        return "python-only (compiled ops not loadable beside this torch)"
    return "full"


def versions() -> dict[str, str]:
    """Versions of the pieces that make the baseline, for the record of every run."""
    mode = _import_torchvision()
    import careamics
    import torch
    import torchvision

    return {
        "careamics_version": careamics.__version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "torchvision_mode": mode,
        "python_version": sys.version.split()[0],
    }


def _shape(path: str) -> tuple[int, ...]:
    """Shape of a TIFF's first series without reading the pixels."""
    with tifffile.TiffFile(path) as tif:
        return tuple(tif.series[0].shape)


def _check_stack(path: str) -> tuple[int, ...]:
    shape = _shape(path)
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a ZYX stack, got shape {shape}")
    return shape


def _write_float32(path: Path, data: np.ndarray) -> None:
    """Write atomically, so an interrupted run never leaves a half-written output behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, np.ascontiguousarray(data, dtype=np.float32), photometric="minisblack")
    os.replace(tmp, path)


def _tile(size: int) -> int:
    """Largest power of 2 that fits in size, at most TILE: tiles never overhang the slice."""
    return min(TILE, 1 << (size.bit_length() - 1))


def _predict(careamist: Any, stack: np.ndarray, multiple: int) -> tuple[np.ndarray, bool]:
    """Denoise one ZYX stack slice by slice; return the result (float32, same shape) and tiling.

    The UNet needs sides that are multiples of 2**depth, so the slices are mirror-padded up to
    one and cropped back. Large slices go through CAREamics' tiled prediction.
    """
    n_z, n_y, n_x = stack.shape
    pad = ((0, 0), (0, -n_y % multiple), (0, -n_x % multiple))
    padded = np.pad(stack.astype(np.float32), pad, mode="symmetric")
    size_y, size_x = padded.shape[1:]
    tiled = size_y * size_x > TILE * TILE
    tiles: dict[str, Any] = {}
    if tiled:
        tile = (_tile(size_y), _tile(size_x))
        tiles = {"tile_size": tile, "tile_overlap": tuple(min(TILE_OVERLAP, t // 2) for t in tile)}
    predictions, _ = careamist.predict(padded, data_type="array", axes="SYX", **tiles)
    result = np.asarray(predictions[0], dtype=np.float32)
    if result.size != padded.size:
        raise RuntimeError(f"CAREamics returned shape {result.shape} for slices of {padded.shape}")
    return result.reshape(padded.shape)[:, :n_y, :n_x], tiled


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train N2V on all slices of the training stacks (axes SYX), then denoise each input stack."""
    info = versions()
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    if job["threads"]:
        # On a shared CPU torch's default (one thread per core) can oversubscribe it and run
        # many times slower; the caller may pin the count, as dqlr train --threads does.
        torch.set_num_threads(job["threads"])

    for path in job["train_files"] + ([job["val_file"]] if job["val_file"] else []):
        _check_stack(path)
    for path in job["inputs"]:
        _check_stack(path)

    minutes = job["minutes"]
    epochs = job["epochs"]
    if epochs is None:
        epochs = -1 if minutes is not None else 30  # 30 is create_n2v_config's default
    trainer_params: dict[str, Any] = {}
    if minutes is not None:
        trainer_params["max_time"] = {"seconds": round(minutes * 60.0, 3)}

    # create_n2v_config's defaults throughout (UNet depth 2 with 32 filters, N2V masking of 0.2%
    # of pixels with uniform 11 px ROI replacement, flips and 90-degree rotations, Adam at torch's
    # defaults with ReduceLROnPlateau, one mean/std over all training data); checked field by
    # field, the advanced factory only adds a fixed seed and Lightning's max_time, which counts
    # from the start of training, not from data loading.
    config = create_advanced_n2v_config(
        experiment_name="n2v",
        data_type="tiff",
        axes="SYX",
        patch_size=[job["patch_size"], job["patch_size"]],
        batch_size=job["batch_size"],
        num_epochs=epochs,
        seed=job["seed"] + 1,  # CAREamics wants a seed > 0; dqlr seeds start at 0
        trainer_params=trainer_params,
    )
    work_dir = Path(job["work_dir"])
    careamist = CAREamist(config, work_dir=work_dir, enable_progress_bar=False)

    start = time.perf_counter()
    careamist.train(train_data=job["train_files"], val_data=job["val_file"])
    train_seconds = time.perf_counter() - start
    trainer = careamist.trainer
    norm = careamist.config.data_config.normalization

    start = time.perf_counter()
    tiled = []
    multiple = 2**careamist.config.algorithm_config.model.depth
    for path, out in zip(job["inputs"], job["outputs"], strict=True):
        result, was_tiled = _predict(careamist, tifffile.imread(path), multiple)
        _write_float32(Path(out), result)
        tiled.append(was_tiled)
    predict_seconds = time.perf_counter() - start

    return {
        **info,
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "max_epochs": epochs,
        "max_seconds": trainer_params.get("max_time", {}).get("seconds"),
        "stopped_by_time": bool(minutes is not None and (epochs < 0 or trainer.current_epoch < epochs)),
        "patch_size": job["patch_size"],
        "batch_size": job["batch_size"],
        "seed": job["seed"],
        "threads": torch.get_num_threads(),
        "normalization": norm.model_dump(),
        "tiled": tiled,
        "checkpoints": [str(p) for p in careamist.get_checkpoints()],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: n2v_worker.py JOB.json | --check", file=sys.stderr)
        return 2
    try:
        if argv[0] == "--check":
            print(json.dumps(versions()))
            return 0
        job = json.loads(Path(argv[0]).read_text())
        result = run(job)
        out = Path(job["result_file"])
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out)
    except Exception as error:
        traceback.print_exc()
        message = " ".join(str(error).split()) or "no message"
        print(f"{type(error).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
