"""Self-describing, safe checkpoints: weights + config + normalisation, written atomically.

A checkpoint holds only tensors and plain settings (numbers, strings, lists, dicts), so it is read
with `torch.load(weights_only=True)`: a file someone hands you cannot run code when loaded. It
never holds absolute paths. A training checkpoint also holds the Trainer's state (optimiser,
schedule, sampler, random streams) so that a resumed run continues exactly; `export_model` drops it.
"""

from __future__ import annotations

import pickle
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqlr.atomic import atomic_path, refuse_existing
from dqlr.config import Config
from dqlr.errors import DqlrError
from dqlr.model.graph import export_step_graph, file_digest, model_description, shipped_graph
from dqlr.runtime import surely_cpu

if TYPE_CHECKING:
    import torch

    from dqlr.model.network import DQLR

FORMAT = "dqlr-checkpoint"
VERSION = 2  # 2: config split (mode at the top, no run options), weights_only-safe, no paths
# Models shipped in the package (scripts/train_default_model.py made them); "default" names the one
# used when no --model is given: the variant that won benchmarks/quality.py.
SHIPPED = {
    "paper": "dqlr_paper.pt",
    "noquant": "dqlr_noquant.pt",
    "depth-aware": "dqlr_depth_aware.pt",
}
DEFAULT_MODEL = "depth-aware"
# voxel_size: (z, y, x) µm of the training stacks when known, so a stack of another pixel size
# can be resampled to the model's before enhancing.
MODEL_KEYS = ("config", "model", "normalization", "voxel_size", "init", "epoch", "step", "metrics")


class LoadedModel:
    """A network ready for inference, with the config and facts it was trained with.

    A shipped model on a CPU comes without its torch network (`network=None`): its graph and its
    description beside the weights are all that enhancement on ONNX Runtime needs, and torch
    takes 1.7 s to import (benchmarks/results/enhance_speed.md). The network is loaded from
    `path` on first use of `.network`.
    """

    def __init__(
        self,
        network: DQLR | None,
        config: Config,
        meta: dict[str, Any] | None = None,
        path: str | None = None,
        graph: bytes | None = None,
    ) -> None:
        if network is None and path is None:
            raise DqlrError("internal: a model without its network needs the path of its weights")
        self._network, self.config, self.path, self._graph = network, config, path, graph
        self.meta: dict[str, Any] = {} if meta is None else meta
        # what is made from the model once and reused (an ONNX Runtime session); never pickled
        self.cache: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": {}}

    def __repr__(self) -> str:
        return f"LoadedModel(mode={self.config.mode!r}, path={self.path!r})"

    @property
    def network(self) -> DQLR:
        if self._network is None:
            assert self.path is not None
            self._network = load_model(self.path, "cpu", lightweight=False).network
        return self._network

    @property
    def has_network(self) -> bool:
        """Whether the torch network is loaded (a lightweight model loads it on first use)."""
        return self._network is not None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def device_type(self) -> str:
        """ "cpu" or "cuda", without loading the network of a lightweight model (always the CPU)."""
        return "cpu" if self._network is None else self.device.type

    def step_graph(self) -> bytes:
        """The network's one-slice step as ONNX (see dqlr.model.graph): the graph shipped with
        the weights file when it matches them, else exported once and kept with this model (so a
        network whose weights are changed in place needs a fresh LoadedModel)."""
        if self._graph is None:
            digest = self.meta.get("sha256") or ""
            found = shipped_graph(self.path, digest) if self.path else None
            self._graph = found or export_step_graph(self.network, digest)
        return self._graph


def shipped_choices() -> str:
    return ", ".join(["default", *SHIPPED])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temp file beside `path`, then rename: a crash never leaves half a file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    return Path(path)


def _load_plain(path: Path) -> dict[str, Any]:
    """torch.load that accepts tensors and plain data only; every failure is one DqlrError line."""
    if not path.is_file():
        raise DqlrError(
            f"{path}: model file not found; give a .pt file or a shipped model: {shipped_choices()}"
        )
    if path.suffix.lower() == ".zip":  # a bioimage.io package made by `dqlr export`
        from dqlr.model.package import read_package

        return _checked(path, read_package(path))
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise DqlrError(
                f"{path}: refused: it holds Python objects, not only weights and settings; "
                "dqlr loads plain model files only (not a dqlr model, or one to distrust)"
            ) from None
        raise DqlrError(f"{path}: not a dqlr model file (not a torch checkpoint)") from None
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise DqlrError(f"{path}: not a dqlr model file ({reason})") from None
    return _checked(path, state)


def _checked(path: Path, state: Any) -> dict[str, Any]:
    """The loaded contents if they are a dqlr checkpoint with a version, a config and weights."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DqlrError(f"{path}: not a dqlr model file (train one with `dqlr train`)")
    if not isinstance(state.get("version"), int) or not isinstance(state.get("config"), dict):
        raise DqlrError(f"{path}: a damaged dqlr model file (no format version or config); get it again")
    if not isinstance(state.get("model"), dict):
        raise DqlrError(f"{path}: a damaged dqlr model file (no weights); get it again")
    return state


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, after checking it is a dqlr checkpoint of this format."""
    path = Path(path)
    state = _load_plain(path)
    version = state["version"]
    if version > VERSION:
        raise DqlrError(f"{path}: made by a newer dqlr (format {version}); upgrade dqlr")
    if version < VERSION:
        raise DqlrError(
            f"{path}: made by an older dqlr (format {version}); convert it once with "
            f"`dqlr convert {path} -o NEW.pt`"
        )
    return state


def _config_from_v1(values: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept run options in the config and the mode twice; format 2 has one `mode`."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    train = values.get("train", {})
    mode = train.pop("mode", "paper")
    for run_option in ("device", "amp", "num_threads"):
        train.pop(run_option, None)
    condition = values.get("model", {}).pop("condition", mode == "depth-aware")
    values["mode"] = "depth-aware" if condition else "paper"
    return values


def _without_paths(normalization: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep only the file name of each training stack: a model must not carry its maker's paths."""
    if not normalization:
        return normalization
    stacks = [
        {**s, "name": Path(str(s.get("name", ""))).name} for s in normalization.get("training_stacks", [])
    ]
    return {**normalization, "training_stacks": stacks}


def convert_checkpoint(old: str | Path, new: str | Path, force: bool = False) -> Path:
    """Rewrite a format-1 model file in today's format (weights unchanged, run options and paths
    dropped). The old file is read with weights_only=True too, so converting is safe."""
    old, new = Path(old), Path(new)
    refuse_existing(new, force)
    if new.resolve() == old.resolve():
        raise DqlrError(f"{new}: is the input; write the converted model to another path")
    state = _load_plain(old)
    if state.get("version") != 1:
        raise DqlrError(f"{old}: format {state.get('version')}; only format 1 needs converting")
    config = Config.from_dict(_config_from_v1(state["config"]), source=str(old))
    converted = {k: state[k] for k in MODEL_KEYS if k in state}
    converted["config"] = config.to_dict()
    converted["normalization"] = _without_paths(state.get("normalization"))
    return save_checkpoint(new, converted)


def export_model(checkpoint: str | Path, path: str | Path) -> Path:
    """Copy a training checkpoint without the Trainer's state: a small file to share."""
    state = read_checkpoint(checkpoint)
    return save_checkpoint(path, {k: state[k] for k in MODEL_KEYS if k in state})


def shipped_model_path(name: str = "default") -> Path:
    """Path of a model shipped inside the package: "default" or one of SHIPPED."""
    name = DEFAULT_MODEL if name == "default" else name
    if name not in SHIPPED:
        raise DqlrError(f"unknown shipped model '{name}'; choose one of {shipped_choices()}")
    path = Path(str(resources.files("dqlr") / "weights" / SHIPPED[name]))
    if not path.is_file():
        raise DqlrError(f"{path}: shipped model missing; reinstall dqlr or pass --model")
    return path


def describe_model(model: LoadedModel) -> str:
    """One line on what a model is and what it was trained on (for `dqlr models`)."""
    stacks = [s.get("name", "?") for s in (model.meta.get("normalization") or {}).get("training_stacks", [])]
    voxel = model.meta.get("voxel_size")
    steps = model.meta.get("step")
    parts = [
        f"mode {model.config.mode}",
        "quantized" if model.config.model.quantize else "no quantization",
        f"trained on {len(stacks)} stack(s) ({', '.join(stacks[:4])}{', ...' if len(stacks) > 4 else ''})"
        if stacks
        else "training stacks not recorded",
        f"voxel size {' x '.join(f'{v:g}' for v in voxel)} µm" if voxel else "voxel size not recorded",
    ]
    if steps is not None:
        parts.append(f"{steps} training steps")
    return "; ".join(parts)


def resolve_model_path(path: str | Path | None) -> Path:
    """A file path as given, or the file of a shipped model named "default", "paper", ..."""
    if path is None:
        return shipped_model_path("default")
    if (str(path) in SHIPPED or str(path) == "default") and not Path(path).exists():
        return shipped_model_path(str(path))
    return Path(path)


def build_network(config: Config) -> DQLR:
    """The untrained network a config describes (the mode decides its depth conditioning)."""
    from dqlr.model.network import DQLR

    return DQLR(config.model, condition=config.conditioned)


META_KEYS = ("epoch", "step", "normalization", "voxel_size", "init", "metrics")


def describe_weights(path: str | Path) -> dict[str, Any]:
    """The JSON description of a weights file that lets a CPU enhance without torch (see
    model_description): all of the checkpoint but its weights, and the weights file's digest."""
    from dqlr.model.graph import DIGEST_KEY

    state = read_checkpoint(path)
    return {
        DIGEST_KEY: file_digest(path),
        "config": state["config"],
        **{k: state.get(k) for k in META_KEYS},
    }


def load_model(
    path: str | Path | None = None, device: str | torch.device = "cpu", lightweight: bool = True
) -> LoadedModel:
    """Load a checkpoint (or a shipped model by name, the default when None) for inference.

    On a CPU, a weights file with its graph and description beside it (the shipped models) loads
    without torch (`lightweight`); its network is read when first used."""
    path = resolve_model_path(path)
    if lightweight and surely_cpu(device) and path.is_file():
        digest = file_digest(path)
        description, graph = model_description(path, digest), shipped_graph(path, digest)
        if description is not None and graph is not None:
            config = Config.from_dict(description["config"], source=str(path))
            meta = {k: description.get(k) for k in META_KEYS}
            meta.update(mode=config.mode, sha256=digest)
            return LoadedModel(None, config, meta, str(path), graph)
    import torch

    from dqlr.runtime import pick_device

    state = read_checkpoint(path)
    config = Config.from_dict(state["config"], source=str(path))
    # The random initial weights are overwritten; drawn on a stream of their own, they leave the
    # caller's random numbers alone. (Building on the "meta" device instead cost 2.3 s per start.)
    with torch.random.fork_rng(devices=[]):
        network = build_network(config)
    try:
        network.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as error:
        first = str(error).splitlines()[0][:120]
        raise DqlrError(f"{path}: weights do not match its config ({first})") from None
    network.to(pick_device(device)).eval()
    meta = {k: state.get(k) for k in META_KEYS}
    meta["mode"] = config.mode
    meta["sha256"] = file_digest(path)
    return LoadedModel(network=network, config=config, meta=meta, path=str(path))
