"""What export and INT8 quantization buy on the digits MLP: latency, throughput, size, accuracy.

Trains the default digits MLP (seeded; Adam, lr 1e-3, batch 64), exports it with
``serving.export`` and quantizes it both ways with ``serving.quantize``, then times four
runtimes on the same test rows and prints one Markdown table:

- PyTorch eager FP32 (``torch.no_grad``, eval mode)
- onnxruntime FP32
- onnxruntime INT8 dynamic
- onnxruntime INT8 static (QDQ, per-channel, calibrated on 512 training rows)

Latency is the median (p50) of ``--repeats`` single calls at batch 1 and at batch 64; rows/s is
the batch size divided by that median. All runtimes use ``--threads`` intra-op threads. To damp
noise on a shared machine, the runtimes take turns in blocks of 25 timed calls (each after 5
untimed ones): turns put load from other processes on all of them alike, and blocks keep each
runtime's weights in cache, as in a replica serving one model. Accuracy is on the held-out test
split (269 rows).

    python bench/bench_export.py
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from serving.export import ONNX_OPSET, export_onnx
from serving.quantize import quantize_dynamic_int8, quantize_static_int8
from train_loops.data import DataSpec, PreparedDataset, prepare_dataset
from train_loops.models import ModelSpec, build_model, fit_standardization

BATCH_SIZES = (1, 64)
BLOCK = 25
WARM_CALLS = 5


def train(prepared: PreparedDataset, epochs: int) -> nn.Module:
    features, labels = prepared.load("train")
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp"), prepared.num_features, prepared.num_classes)
    fit_standardization(model, features)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    return model.eval()


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda rows: session.run(None, {"input": rows})[0]


def torch_runner(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(rows)).numpy()

    return run


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--repeats", type=int, default=500, help="timed calls per batch size")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        directory = Path(scratch)
        prepared = prepare_dataset(DataSpec(), directory / "data")
        model = train(prepared, args.epochs)
        train_features, _ = prepared.load("train")
        test_features, test_labels = prepared.load("test")
        fp32 = export_onnx(model, prepared.num_features, directory / "fp32.onnx")
        dynamic = quantize_dynamic_int8(fp32, directory / "int8-dynamic.onnx")
        static = quantize_static_int8(fp32, directory / "int8-static.onnx", train_features[:512])
        state = io.BytesIO()
        torch.save(model.state_dict(), state)

        runtimes = {
            "PyTorch eager FP32": (torch_runner(model), len(state.getvalue()), "state_dict .pt"),
            "ORT FP32": (ort_runner(fp32, args.threads), fp32.stat().st_size, ".onnx"),
            "ORT INT8 dynamic": (
                ort_runner(dynamic, args.threads),
                dynamic.stat().st_size,
                ".onnx",
            ),
            "ORT INT8 static (QDQ)": (
                ort_runner(static, args.threads),
                static.stat().st_size,
                ".onnx",
            ),
        }
        accuracy = {
            name: float(np.mean(run(test_features).argmax(1) == test_labels))
            for name, (run, _, _) in runtimes.items()
        }
        p50_ms: dict[tuple[str, int], float] = {}
        for batch_size in BATCH_SIZES:
            rows = np.ascontiguousarray(
                np.resize(test_features, (batch_size, test_features.shape[1]))
            )
            timings: dict[str, list[float]] = {name: [] for name in runtimes}
            for block_start in range(0, args.repeats, BLOCK):
                for name, (run, _, _) in runtimes.items():
                    for _ in range(WARM_CALLS):
                        run(rows)
                    for _ in range(min(BLOCK, args.repeats - block_start)):
                        start = time.perf_counter()
                        run(rows)
                        timings[name].append(time.perf_counter() - start)
            for name, samples in timings.items():
                p50_ms[name, batch_size] = float(np.median(samples)) * 1e3

    print(
        f"digits MLP ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{args.epochs} epochs; opset {ONNX_OPSET}; {args.threads} thread(s); "
        f"{args.repeats} timed calls per runtime and batch size"
    )
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}\n"
    )
    header = ["runtime", "p50 ms @1", "p50 ms @64", "rows/s @1", "rows/s @64", "size", "accuracy"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for name, (_, size, kind) in runtimes.items():
        latency_1, latency_64 = p50_ms[name, 1], p50_ms[name, 64]
        print(
            f"| {name} | {latency_1:.3f} | {latency_64:.3f} | {1e3 / latency_1:,.0f} | "
            f"{64e3 / latency_64:,.0f} | {size / 1024:,.0f} KiB ({kind}) | {accuracy[name]:.4f} |"
        )


if __name__ == "__main__":
    main()
