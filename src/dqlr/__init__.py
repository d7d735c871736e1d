"""dqlr: restore the deep, degraded slices of confocal z-stacks with DQLR.

The public API is twelve functions of the same shape as the command line, plus the settings types:

    stack = dqlr.read_stack("my_stack.tif")
    result = dqlr.enhance(stack.data)
    dqlr.write_stack("out.tif", result, stack.voxel_size)

Everything else lives in the layers below (dqlr.io, dqlr.model, dqlr.training, dqlr.inference,
dqlr.evaluation, dqlr.reporting); see ARCHITECTURE.md.
"""

from importlib.metadata import PackageNotFoundError, version

from dqlr.api import (
    adapt,
    enhance,
    enhance_files,
    estimate,
    evaluate,
    export,
    load_model,
    read_stack,
    simulate,
    train,
    train_segmenter,
    write_stack,
)
from dqlr.config import Config, EnhanceOptions, RunOptions
from dqlr.errors import DqlrError, DqlrWarning

try:
    __version__ = version("dqlr")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "Config",
    "DqlrError",
    "DqlrWarning",
    "EnhanceOptions",
    "RunOptions",
    "adapt",
    "enhance",
    "enhance_files",
    "estimate",
    "evaluate",
    "export",
    "load_model",
    "read_stack",
    "simulate",
    "train",
    "train_segmenter",
    "write_stack",
]
