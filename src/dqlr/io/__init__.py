"""Stacks in and out: TIFF, OME-TIFF, ImageJ hyperstacks and (OME-)Zarr, lazy reads, atomic writes.

stack: the `Stack` / `LazyStack` types and the input checks; metadata: voxel size and axes from
file metadata; read: `read_stack`; layout: `Layout` (axes, channels and their display, pyramid
levels), `read_layout`; pyramid: NGFF metadata and lower pyramid levels; write: `StackWriter`,
`create_stack_writer`, `write_stack`, `plane_index` (where a plane of a stack lies in a file's
array).
"""

from dqlr.io.layout import Channel, Layout, read_layout
from dqlr.io.read import read_stack
from dqlr.io.stack import LazyStack, Stack, StackView, check_finite, check_stack, resize, stack_format
from dqlr.io.write import StackWriter, create_stack_writer, plane_index, write_stack

__all__ = [
    "Channel",
    "LazyStack",
    "Layout",
    "Stack",
    "StackView",
    "StackWriter",
    "check_finite",
    "check_stack",
    "create_stack_writer",
    "plane_index",
    "read_layout",
    "read_stack",
    "resize",
    "stack_format",
    "write_stack",
]
