"""Benchmark (not a test): Python onnxruntime on the shipped model, for comparison with
`platescore bench runtime` at the same thread count.

    pip install -r tests/bench/requirements.txt
    python3 tests/bench/python_ort.py --threads 2 --batches 1,4,8,16,32
"""

import argparse
import pathlib
import time

import numpy as np
import onnxruntime as ort

MODEL = pathlib.Path(__file__).resolve().parents[2] / "models" / "food-scorer" / "model.onnx"

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--batches", default="1,4,8,16,32")
parser.add_argument("--seconds", type=float, default=4.0)
args = parser.parse_args()

options = ort.SessionOptions()
options.intra_op_num_threads = args.threads
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
print(f"python onnxruntime {ort.__version__} threads {args.threads}")
for batch in [int(b) for b in args.batches.split(",")]:
    x = np.full((batch, 3, 224, 224), 0.1, dtype=np.float32)
    session.run(None, {"input": x})
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        session.run(None, {"input": x})
        images += batch
    print(f"batch {batch:>2}: {images / (time.perf_counter() - started):7.1f} img/s")
