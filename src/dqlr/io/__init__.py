"""Stacks in and out: TIFF, OME-TIFF, ImageJ hyperstacks and (OME-)Zarr, lazy reads, atomic writes."""

from dqlr.io.core import (
    LazyStack,
    Stack,
    StackWriter,
    check_finite,
    create_stack_writer,
    read_stack,
    stack_format,
    write_stack,
)

__all__ = [
    "LazyStack",
    "Stack",
    "StackWriter",
    "check_finite",
    "create_stack_writer",
    "read_stack",
    "stack_format",
    "write_stack",
]
