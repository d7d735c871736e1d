"""How a stack degrades with depth, estimated from the stack alone, and how to reproduce it.

model: the `DepthDegradation` record; noise: camera noise by photon transfer (or, without flat
regions, from high-pass residuals); blur: blur from power spectra; estimate: `estimate_degradation`
(blur, halo, attenuation, background per slice); assess: the blur's error, whether it is reliable
and notes on fallbacks; synthesis: `degrade`, `make_pairs` and `tissue_centres` (where pairs are
cropped); ops: stack access and Gaussian filters they share.
"""

from dqlr.degradation.estimate import estimate_degradation
from dqlr.degradation.model import DepthDegradation
from dqlr.degradation.noise import estimate_noise
from dqlr.degradation.synthesis import degrade, make_pairs, tissue_centres

__all__ = [
    "DepthDegradation",
    "degrade",
    "estimate_degradation",
    "estimate_noise",
    "make_pairs",
    "tissue_centres",
]
