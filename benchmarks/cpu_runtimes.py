#!/usr/bin/env python3
"""Other CPU runtimes for the shipped default's step graph, tried for issue 14 and not kept.

    .venv/bin/python benchmarks/cpu_runtimes.py                  # ONNX Runtime fp32 and int8
    OTHER_PYTHON benchmarks/cpu_runtimes.py --openvino           # a Python with numpy + openvino

One 512 x 512 slice of the simulated 40 x 512 x 512 stack of enhance_speed.py (slice 20, normalised
per stack, with the slice above's latents as context) through the shipped depth-aware graph, 2
threads, median of 7 runs after a warm-up:
- ONNX Runtime, float32 (what dqlr uses);
- ONNX Runtime, int8 (static quantization of the convolutions, per channel, calibrated on 12
  slices of the validation plant): its speed, and how far its output is from float32's (PSNR of
  the int8 output against the float32 one, data range 1);
- OpenVINO (float32), when run with `--openvino` from a Python that has it (openvino is not a
  dependency of dqlr; this part needs only numpy and openvino, and the inputs this script saved).
Each part adds its figures to benchmarks/results/cpu_runtimes.json and rewrites the .md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GRAPH = ROOT / "src" / "dqlr" / "weights" / "dqlr_depth_aware.onnx"
# the slice and context, handed to the OpenVINO part (which cannot import dqlr)
INPUTS = Path(tempfile.gettempdir()) / "dqlr_cpu_runtimes_inputs.npz"
REPEATS = 7


def timed(run: object) -> tuple[float, object]:
    out = run()  # type: ignore[operator]
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        out = run()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return float(np.median(times)), out


def inputs() -> dict[str, np.ndarray]:
    from dqlr.inference.engines import OnnxEngine
    from dqlr.model.checkpoint import load_model
    from dqlr.normalize import fit_normalization, normalize
    from dqlr.simulation import simulate_plant

    stack = simulate_plant(shape=(40, 512, 512), seed=7).observed
    norm = fit_normalization(stack)
    above = normalize(stack[19], norm)[None].astype(np.float32)
    engine = OnnxEngine(load_model(None, device="cpu"))
    context = engine.encode(above, 0.5)[0][None]
    tiles = normalize(stack[20], norm)[None, None].astype(np.float32)
    return {"tiles": tiles, "level": np.full(1, 0.5, np.float32), "context": context}


def onnx_runtime_part() -> dict[str, float]:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from dqlr.normalize import fit_normalization, normalize
    from dqlr.simulation import simulate_plant

    feed = inputs()
    np.savez(INPUTS, tiles=feed["tiles"], level=feed["level"], context=feed["context"])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.log_severity_level = 3
    validation = simulate_plant(shape=(12, 256, 256), seed=104).observed
    norm = fit_normalization(validation)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(
                {
                    "tiles": normalize(validation[z], norm)[None, None].astype(np.float32),
                    "level": np.full(1, z / 12, np.float32),
                    "context": np.zeros((1, feed["context"].shape[1], 64, 64), np.float32),
                }
                for z in range(12)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8.onnx"
        quantize_static(
            str(GRAPH),
            str(int8),
            Calibration(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
        )
        fp32 = ort.InferenceSession(str(GRAPH), options, providers=["CPUExecutionProvider"])
        quantized = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
        fp32_s, fp32_out = timed(lambda: fp32.run(None, feed)[0])
        int8_s, int8_out = timed(lambda: quantized.run(None, feed)[0])
    error = float(np.mean((np.asarray(int8_out) - np.asarray(fp32_out)) ** 2))
    return {
        "onnxruntime_float32_s": fp32_s,
        "onnxruntime_int8_s": int8_s,
        "int8_psnr_against_float32_db": float(-10 * np.log10(max(error, 1e-12))),
    }


def openvino_part() -> dict[str, object]:
    import openvino as ov

    feed = dict(np.load(INPUTS))
    core = ov.Core()
    model = core.read_model(str(GRAPH))
    model.reshape({name: list(array.shape) for name, array in feed.items()})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    seconds, _ = timed(lambda: request.infer(feed))
    return {"openvino_float32_s": seconds, "openvino_version": ov.__version__}


def report(result: dict[str, Any]) -> str:
    lines = [
        "# Other CPU runtimes for the shipped default (issue 14; not kept)",
        "",
        "Command: `.venv/bin/python benchmarks/cpu_runtimes.py`, and `--openvino` from a Python with "
        "openvino installed. One 512 x 512 slice through the shipped depth-aware step graph, 2 threads, "
        f"median of {REPEATS}.",
        "",
        "| runtime | seconds per slice | speed-up over ONNX Runtime float32 |",
        "|---|---|---|",
    ]
    base = result.get("onnxruntime_float32_s")
    for key, name in (
        ("onnxruntime_float32_s", "ONNX Runtime, float32 (dqlr's engine)"),
        ("onnxruntime_int8_s", "ONNX Runtime, int8 convolutions (static, per channel)"),
        ("openvino_float32_s", f"OpenVINO {result.get('openvino_version', '')}, float32"),
    ):
        if key in result and base:
            lines.append(f"| {name} | {result[key]:.3f} | {base / result[key]:.2f}x |")
    if "int8_psnr_against_float32_db" in result:
        lines += [
            "",
            "The int8 output stands "
            f"{result['int8_psnr_against_float32_db']:.1f} dB PSNR (data range 1) from the float32 one: "
            "a change of the model's result (issue 14 allows the shipped scores to move by 0.1 dB at "
            "most) for a speed-up that does not reach the target on its own.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    saved = RESULTS / "cpu_runtimes.json"
    result = json.loads(saved.read_text()) if saved.exists() else {}
    result.update(openvino_part() if "--openvino" in sys.argv[1:] else onnx_runtime_part())
    saved.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "cpu_runtimes.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
