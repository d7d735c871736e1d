"""The DQLR network and its parts (encoder, recurrent cell, quantizer, generator)."""

from dqlr.model.network import DQLR, pad_to_multiple
from dqlr.model.quantizer import VectorQuantizer

__all__ = ["DQLR", "VectorQuantizer", "pad_to_multiple"]
