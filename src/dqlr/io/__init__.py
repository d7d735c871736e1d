"""Stacks in and out: TIFF, OME-TIFF, ImageJ hyperstacks and (OME-)Zarr, lazy reads, atomic writes.

stack: the `Stack` / `LazyStack` types and the input checks; metadata: voxel size and axes from
file metadata; read: `read_stack`; write: `StackWriter`, `create_stack_writer`, `write_stack`.
"""

from dqlr.io.read import read_stack
from dqlr.io.stack import LazyStack, Stack, StackView, check_finite, check_stack, stack_format
from dqlr.io.write import StackWriter, create_stack_writer, write_stack

__all__ = [
    "LazyStack",
    "Stack",
    "StackView",
    "StackWriter",
    "check_finite",
    "check_stack",
    "create_stack_writer",
    "read_stack",
    "stack_format",
    "write_stack",
]
