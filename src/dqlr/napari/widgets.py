"""napari dock widgets: Enhance (a stack, in a worker thread, with progress and cancel) and Estimate
(the stack's degradation by depth, plotted in the dock).

The work is dqlr's public functions (`adapt`, `enhance`, `estimate`) run by napari's thread
workers; the widgets only gather settings, start the worker and show what comes back. A result
keeps the scale and position of its source layer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from matplotlib import rc_context
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

import dqlr
from dqlr.config import EnhanceOptions, RunOptions
from dqlr.model.checkpoint import DEFAULT_MODEL, SHIPPED
from dqlr.napari.layers import voxel_size_of
from dqlr.reporting.figures import degradation_plot


class CancelledError(Exception):
    """Raised from enhance's progress callable when the user cancels; ends the run cleanly."""


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (a queued Qt signal)."""

    advanced = Signal(int, int)


def enhance_in_thread(
    data: np.ndarray,
    model: str,
    options: EnhanceOptions,
    adapt_minutes: float | None,
    report: Callable[[int, int], object],
    cancelled: Callable[[], bool],
) -> np.ndarray | None:
    """What the worker thread runs: optionally adapt the model to the stack, then enhance it,
    reporting (slices done, total) after each slice. None when cancelled."""
    if adapt_minutes:
        report(0, 0)  # busy, no count: adapting has no slice count
        with tempfile.TemporaryDirectory(prefix="dqlr-adapt-") as folder:
            run = RunOptions.of(progress=False)
            adapted = dqlr.adapt([data], folder, model, minutes=adapt_minutes, run=run, options=options)
            loaded = dqlr.load_model(adapted.best, device=options.device)
    else:
        loaded = dqlr.load_model(model, device=options.device)
    if cancelled():
        return None

    def progress(done: int, total: int) -> None:
        if cancelled():
            raise CancelledError
        report(done, total)

    try:
        return dqlr.enhance(data, loaded, options, progress=progress)
    except CancelledError:
        return None


class EnhanceWidget(Container):
    """Enhance the chosen image with a shipped model (`mode`) or a model file, optionally adapting
    the model to the stack first; the result is added as a new layer with the same scale."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        defaults = EnhanceOptions()
        self._viewer = napari_viewer
        self.image = cast(ComboBox, create_widget(annotation=napari.layers.Image, label="image"))
        self.mode = ComboBox(label="mode", choices=list(SHIPPED), value=DEFAULT_MODEL)
        self.model_file = FileEdit(label="model file", filter="*.pt", nullable=True, value=None)
        self.adapt = CheckBox(text="adapt the model to this stack first", value=False)
        self.adapt_minutes = FloatSpinBox(label="adapt minutes", value=3.0, min=0.1, max=600.0, step=0.5)
        self.tile = SpinBox(label="tile size", value=defaults.tile, min=16, max=8192, step=16)
        self.both_directions = CheckBox(
            text="both directions (each slice also sees the one below; twice the time)",
            value=defaults.both_directions,
        )
        self.run = PushButton(text="Enhance")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="slices", value=0, min=0, max=1)
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.image,
                self.mode,
                self.model_file,
                self.adapt,
                self.adapt_minutes,
                self.tile,
                self.both_directions,
                self.run,
                self.cancel,
                self.progress,
                self.status,
            ]
        )
        self.worker: Any = None
        self._relay = _Relay()
        self._relay.advanced.connect(self._advanced)
        self.run.changed.connect(self.start)
        self.cancel.changed.connect(self.stop)

    def start(self) -> None:
        """Start enhancing the chosen image in a worker thread."""
        layer = self.image.value
        if layer is None:
            self.status.value = "open an image first"
            return
        tile = self.tile.value
        overlap = min(EnhanceOptions().overlap, tile // 2)  # the overlap shrinks with a small tile
        options = EnhanceOptions.of(
            tile=tile,
            overlap=overlap,
            voxel_size=voxel_size_of(layer.scale),
            both_directions=self.both_directions.value,
        )
        model = str(self.model_file.value) if self.model_file.value else self.mode.value
        minutes = self.adapt_minutes.value if self.adapt.value else None
        self.worker = create_worker(
            enhance_in_thread,
            np.asarray(layer.data),
            model,
            options,
            minutes,
            self._relay.advanced.emit,
            self._cancel_requested,
            _ignore_errors=True,  # shown in the status line and napari's notifications
        )
        self.worker.returned.connect(partial(self._add_result, layer))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.run.enabled, self.cancel.enabled = False, True
        self.progress.value = 0
        self.status.value = "adapting the model…" if minutes else f"enhancing {layer.name}…"
        self.worker.start()

    def stop(self) -> None:
        """Ask the worker to stop after the current slice (napari's own cancel does the same)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling…"

    def _cancel_requested(self) -> bool:
        return bool(self.worker is not None and self.worker.abort_requested)

    def _advanced(self, done: int, total: int) -> None:
        self.progress.max = total  # 0: busy without a count
        self.progress.value = done
        if total:
            self.status.value = f"enhancing: slice {done} of {total}"

    def _add_result(self, source: Any, result: np.ndarray | None) -> None:
        if result is None:  # cancelled
            return
        self._viewer.add_image(
            result,
            name=f"{source.name} dqlr",
            scale=source.scale,
            translate=source.translate,
            metadata={"dqlr": {"source": source.name}},
        )
        self.status.value = f"added {source.name} dqlr"

    def _failed(self, error: Exception) -> None:
        self.status.value = f"failed: {error}"

    def _finished(self) -> None:
        if self.worker is not None and self.worker.abort_requested:  # then nothing was returned
            self.status.value = "cancelled"
        self.run.enabled, self.cancel.enabled = True, False


class EstimateWidget(Container):
    """Estimate the chosen image's degradation by depth (blur, halo, attenuation, background) and
    plot it in the dock."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.image = cast(ComboBox, create_widget(annotation=napari.layers.Image, label="image"))
        self.run = PushButton(text="Estimate")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.run, self.status])
        self.canvas: FigureCanvasQTAgg | None = None
        self.worker: Any = None
        self.run.changed.connect(self.start)

    def start(self) -> None:
        """Estimate in a worker thread; the plot replaces the previous one."""
        layer = self.image.value
        if layer is None:
            self.status.value = "open an image first"
            return
        self.worker = create_worker(
            dqlr.estimate,
            np.asarray(layer.data),
            voxel_size=voxel_size_of(layer.scale),
            _ignore_errors=True,
        )
        self.worker.returned.connect(partial(self._show, layer.name))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.run.enabled = False
        self.status.value = f"estimating {layer.name}…"
        self.worker.start()

    def _show(self, name: str, degradation: Any) -> None:
        with rc_context({"font.size": 7}):  # a dock is narrow; the setting is put back on exit
            figure = degradation_plot(degradation, columns=2)
        figure.set_layout_engine("constrained")  # laid out again whenever the dock is resized
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumHeight(360)
        if self.canvas is not None:
            self.native.layout().removeWidget(self.canvas)
            self.canvas.deleteLater()
        self.native.layout().addWidget(canvas)
        self.canvas = canvas
        notes = list(degradation.notes)
        if not degradation.reliable:
            notes.append("the blur by depth could not be measured")
        self.status.value = f"{name}: " + ("; ".join(notes) if notes else "estimated")

    def _failed(self, error: Exception) -> None:
        self.status.value = f"failed: {error}"

    def _finished(self) -> None:
        self.run.enabled = True
