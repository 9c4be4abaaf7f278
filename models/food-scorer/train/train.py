"""Train a scorer on your own photos: a linear head on EfficientNet-Lite0's pooled features,
grafted beside the ImageNet head into one ONNX file the server loads as a model of its own.

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python train.py --photos DIR | --list CSV  --classes CSV \\
        --out ../../my-scorer [--id my-scorer] [--base ..] [--seed 15] [--holdout 0.15] \\
        [--data-licence "CC-BY-4.0 ..."] [--data-licence-file LICENSE] [--data-readme README.md] \\
        [--eval-photos DIR]

Input:
- `--photos DIR`: one subfolder per label, photos inside (any depth); or `--list CSV` with
  header `path,label[,split]`, paths relative to the CSV, split `train` or `holdout`.
- `--classes CSV`: header `label,group,score,rationale`, one row per label; score 1-5.

What it does, CPU only, deterministic for a seed (same model.onnx bytes on a second run):
1. preprocesses every photo as the server does (export/quantize.py's `preprocess`) and runs
   the base model once, keeping the pooled 1280-float features (`/Reshape_output_0`, the
   input of the ImageNet Gemm) and the ImageNet logits;
2. holds out a stratified, seeded share per class (unless the list gives the split);
3. fits a class-balanced softmax regression (standardised features, L2, Adam, full batch,
   fixed iterations from zero weights) on the train split, reports held-out accuracy and
   per-class recall;
4. computes per-class centroids of the L2-normalised train features; the gate (`head.gate`:
   low/high = 1st/10th percentile of the held-out photos' best cosine similarity) tells the
   server how far to trust the head over ImageNet's classes for a photo;
5. grafts onto the base graph: output `logits` = Concat(ImageNet logits [1000], head logits
   [N], best centroid similarity [1]); writes model.onnx, labels.txt, manifest.json,
   food_classes.toml (the base table plus one `[[food]]` per head class), tips.toml into a
   temporary folder, checks ONNX Runtime on the written file against numpy, then renames it
   to `--out` (an existing `--out` is replaced only then);
6. with `PLATESCORE_BIN` set and `--eval-photos`, runs `$PLATESCORE_BIN eval` on the result.
"""

import argparse
import csv
import datetime
import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parent / "export"))
from quantize import preprocess  # noqa: E402  the server's preprocessing, kept in one place

FEATURES = "/Reshape_output_0"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo"}
ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
THREADS = 2
BATCH = 16


class Fail(Exception):
    """A user error: printed as one clear line, exit status 2."""


# --- inputs -------------------------------------------------------------------------------


def read_classes(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise Fail(f"class table {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"label", "group", "score", "rationale"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise Fail(f"{path}: header must be label,group,score,rationale (got {reader.fieldnames})")
        rows = []
        for n, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            group = (row["group"] or "").strip()
            rationale = (row["rationale"] or "").strip()
            if not label or not group or not rationale:
                raise Fail(f"{path}:{n}: label, group and rationale must not be empty")
            if "\n" in label or '"' in label or "\\" in label:
                raise Fail(f"{path}:{n}: label {label!r} may not contain quotes, backslashes or newlines")
            if not re.fullmatch(r"[a-z][a-z0-9_]*", group):
                raise Fail(f"{path}:{n}: group {group!r} must be lower_snake_case")
            try:
                score = int((row["score"] or "").strip())
            except ValueError:
                score = None
            if score is None or not 1 <= score <= 5:
                raise Fail(f"{path}:{n}: score for {label!r} must be an integer from 1 to 5 (got {row['score']!r})")
            if any(r["label"] == label for r in rows):
                raise Fail(f"{path}:{n}: label {label!r} appears twice")
            rows.append({"label": label, "group": group, "score": score, "rationale": rationale})
    if len(rows) < 2:
        raise Fail(f"{path}: need at least 2 classes, found {len(rows)}")
    return rows


def read_photos(args) -> list[dict]:
    """[{path, label, split (or None)}], sorted for determinism."""
    photos = []
    if args.photos:
        root = args.photos
        if not root.is_dir():
            raise Fail(f"--photos {root} is not a folder")
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            for p in sorted(sub.rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                    photos.append({"path": p, "label": sub.name, "split": None})
    else:
        if not args.list.is_file():
            raise Fail(f"--list {args.list} does not exist")
        base = args.list.resolve().parent
        with args.list.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise Fail(f"{args.list}: header must be path,label[,split] (got {reader.fieldnames})")
            for n, row in enumerate(reader, start=2):
                split = (row.get("split") or "").strip() or None
                if split not in (None, "train", "holdout"):
                    raise Fail(f"{args.list}:{n}: split must be train or holdout (got {split!r})")
                path = (row["path"] or "").strip()
                if not path:
                    raise Fail(f"{args.list}:{n}: empty path")
                photos.append({"path": base / path, "label": (row["label"] or "").strip(), "split": split})
        splits = {p["split"] is None for p in photos}
        if len(splits) > 1:
            raise Fail(f"{args.list}: give a split for every row or for none")
    if not photos:
        raise Fail("no photos found")
    photos.sort(key=lambda p: (p["label"], str(p["path"])))
    return photos


def check_labels(classes: list[dict], photos: list[dict]) -> None:
    known = {c["label"] for c in classes}
    unknown = sorted({p["label"] for p in photos} - known)
    if unknown:
        raise Fail(f"photos labelled {unknown} have no row in the class table")
    counts = {c["label"]: 0 for c in classes}
    for p in photos:
        counts[p["label"]] += 1
    empty = [label for label, n in counts.items() if n == 0]
    if empty:
        raise Fail(f"class-table labels with no photos: {empty}")
    if photos[0]["split"] is not None:
        train = {p["label"] for p in photos if p["split"] == "train"}
        missing = sorted(known - train)
        if missing:
            raise Fail(f"labels with no train photo: {missing}")


def assign_split(photos: list[dict], share: float, seed: int) -> None:
    """Stratified: per label, round(share * n) photos held out, at least 1 when n >= 2 and
    share > 0, never all of them. Seeded, independent of file-system order."""
    if photos[0]["split"] is not None:
        return
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for p in photos:
        by_label.setdefault(p["label"], []).append(p)
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda p: str(p["path"]))
        rng.shuffle(group)
        k = int(round(share * len(group)))
        if share > 0 and len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        else:
            k = 0
        for i, p in enumerate(group):
            p["split"] = "holdout" if i < k else "train"


# --- features -------------------------------------------------------------------------------


def session(model: onnx.ModelProto | pathlib.Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    src = str(model) if isinstance(model, pathlib.Path) else model.SerializeToString()
    return ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def feature_model(base: onnx.ModelProto) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(base)
    probe.graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", 1280]))
    return probe


def extract(base: onnx.ModelProto, spec: dict, paths: list[pathlib.Path], cache: pathlib.Path | None, base_sha: str):
    """(features [n, 1280], imagenet logits [n, 1000]) for the photos, in order."""
    key = hashlib.sha256(base_sha.encode())
    for p in paths:
        st = p.stat()
        key.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    key = key.hexdigest()
    if cache and cache.is_file():
        data = np.load(cache)
        if str(data["key"]) == key:
            print(f"features: {len(paths)} photos from cache {cache}")
            return data["features"], data["logits"]
    sess = session(feature_model(base))
    name = spec["input"]["name"]
    feats, logits = [], []
    start = time.perf_counter()
    for i in range(0, len(paths), BATCH):
        batch = []
        for p in paths[i : i + BATCH]:
            try:
                batch.append(preprocess(p, spec))
            except Exception as err:  # noqa: BLE001 - named and fatal
                raise Fail(f"cannot read photo {p}: {type(err).__name__}: {err}") from err
        lo, fe = sess.run([spec["output"]["name"], FEATURES], {name: np.stack(batch)})
        logits.append(lo)
        feats.append(fe)
        done = min(i + BATCH, len(paths))
        if done % (BATCH * 20) == 0 or done == len(paths):
            print(f"features: {done}/{len(paths)} photos, {time.perf_counter() - start:.0f} s", flush=True)
    feats, logits = np.concatenate(feats), np.concatenate(logits)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=np.array(key), features=feats, logits=logits)
    return feats, logits


# --- the head -------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_head(x: np.ndarray, y: np.ndarray, classes: int, l2: float, iters: int, lr: float):
    """Class-balanced multinomial logistic regression on standardised features, full-batch
    Adam from zero weights (deterministic). Returns (W [1280, N], b [N]) on raw features."""
    x = x.astype(np.float64)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    z = (x - mu) / sd
    n = len(y)
    counts = np.bincount(y, minlength=classes)
    weight = (n / (classes * counts))[y]
    weight = weight / weight.sum()
    onehot = np.eye(classes)[y]
    w = np.zeros((z.shape[1], classes))
    b = np.zeros(classes)
    state = [[np.zeros_like(w), np.zeros_like(w)], [np.zeros_like(b), np.zeros_like(b)]]
    for t in range(1, iters + 1):
        g = (softmax(z @ w + b) - onehot) * weight[:, None]
        grads = (z.T @ g + l2 * w, g.sum(axis=0))
        for param, grad, (m, v) in zip((w, b), grads, state):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w / sd[:, None], b - (mu / sd) @ w


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def centroids(x: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    xn = unit(x.astype(np.float64))
    return unit(np.stack([xn[y == c].mean(axis=0) for c in range(classes)]))


def similarity(x: np.ndarray, cent: np.ndarray) -> np.ndarray:
    return (unit(x.astype(np.float64)) @ cent.T).max(axis=1)


# --- graft ----------------------------------------------------------------------------------


def graft(base: onnx.ModelProto, spec: dict, w: np.ndarray, b: np.ndarray, cent: np.ndarray) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(base)
    graph = model.graph
    out_name = spec["output"]["name"]
    if len(graph.output) != 1 or graph.output[0].name != out_name:
        raise Fail(f"base model must have one output {out_name!r}")
    if FEATURES not in {o for n in graph.node for o in n.output}:
        raise Fail(f"base model has no tensor {FEATURES}: not the EfficientNet-Lite0 export this recipe expects")
    # The ImageNet Gemm now writes an internal tensor; the new `logits` is the Concat.
    for node in graph.node:
        for i, o in enumerate(node.output):
            if o == out_name:
                node.output[i] = "imagenet_logits"
        for i, o in enumerate(node.input):
            if o == out_name:
                node.input[i] = "imagenet_logits"
    n = w.shape[1]
    graph.initializer.extend(
        [
            numpy_helper.from_array(w.astype(np.float32), "head.weight"),
            numpy_helper.from_array(b.astype(np.float32), "head.bias"),
            numpy_helper.from_array(cent.T.astype(np.float32).copy(), "head.centroids_t"),
            numpy_helper.from_array(np.array([1e-12], dtype=np.float32), "head.eps"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Gemm", [FEATURES, "head.weight", "head.bias"], ["head_logits"], name="/head/Gemm"),
            helper.make_node("ReduceL2", [FEATURES], ["head/norm"], name="/head/ReduceL2", axes=[1], keepdims=1),
            helper.make_node("Max", ["head/norm", "head.eps"], ["head/norm_eps"], name="/head/Max"),
            helper.make_node("Div", [FEATURES, "head/norm_eps"], ["head/unit"], name="/head/Div"),
            helper.make_node("MatMul", ["head/unit", "head.centroids_t"], ["head/cosine"], name="/head/MatMul"),
            helper.make_node("ReduceMax", ["head/cosine"], ["head_similarity"], name="/head/ReduceMax", axes=[1], keepdims=1),
            helper.make_node(
                "Concat", ["imagenet_logits", "head_logits", "head_similarity"], [out_name], name="/head/Concat", axis=1
            ),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", 1000 + n + 1]))
    del graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    return model


# --- the folder ----------------------------------------------------------------------------


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def food_table(base_text: str, version: str, classes: list[dict], first: int, source: str) -> str:
    text, count = re.subn(r'(?m)^version = ".*"$', f"version = {toml_str(version)}", base_text, count=1)
    if count != 1:
        raise Fail("base food_classes.toml has no version line")
    lines = [
        "",
        f"# The trained head's classes (indices {first}-{first + len(classes) - 1}), from {source}. The server",
        "# mixes them with the ImageNet classes above through the manifest's `head.gate`.",
    ]
    for i, c in enumerate(classes):
        lines += [
            "",
            "[[food]]",
            f"index = {first + i}",
            f"label = {toml_str(c['label'])}",
            f"group = {toml_str(c['group'])}",
            f"score = {c['score']}",
            f"rationale = {toml_str(c['rationale'])}",
        ]
    return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_folder(tmp, args, spec, base_dir, model, classes, info) -> dict:
    n = len(classes)
    (tmp / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
    sha = sha256_of(tmp / "model.onnx")
    base_labels = (base_dir / spec["output"]["labels"]).read_text(encoding="utf-8").splitlines()
    if len(base_labels) != 1000:
        raise Fail(f"base labels file has {len(base_labels)} lines, expected 1000")
    (tmp / "labels.txt").write_text("\n".join(base_labels + [c["label"] for c in classes]) + "\n", encoding="utf-8")
    source = args.trained_on or (str(args.photos) if args.photos else str(args.list))
    table = food_table(
        (base_dir / "food_classes.toml").read_text(encoding="utf-8"), f"{args.id}-{args.date}.1", classes, 1000, source
    )
    tomllib.loads(table)
    (tmp / "food_classes.toml").write_text(table, encoding="utf-8")
    tips = args.tips or (base_dir / "tips.toml")
    tomllib.loads(tips.read_text(encoding="utf-8"))
    shutil.copyfile(tips, tmp / "tips.toml")
    if args.data_licence_file:
        shutil.copyfile(args.data_licence_file, tmp / "LICENSE")
    if args.data_readme:
        shutil.copyfile(args.data_readme, tmp / "README.md")

    manifest = {k: v for k, v in spec.items() if k not in ("int8", "max_abs_diff_vs_torch", "name", "version")}
    manifest = {
        "id": args.id,
        "name": args.name or args.id,
        "version": f"efficientnet-lite0-{args.id}-{sha[:12]}",
        **manifest,
        "file": "model.onnx",
        "sha256": sha,
        "output": {"name": spec["output"]["name"], "classes": 1000 + n + 1, "labels": "labels.txt"},
        "base": {"id": base_dir.name, "version": spec.get("version"), "sha256": spec.get("sha256")},
        "licence": f"{spec['licence']}; head trained on: {args.data_licence or 'the user-supplied photos (licence not given)'}",
        "head": {
            "first": 1000,
            "classes": n,
            "similarity": 1000 + n,
            "gate": {"low": info["gate_low"], "high": info["gate_high"]},
            "trained_on": source,
            "photos": {"train": info["train"], "holdout": info["holdout"]},
            "holdout_accuracy": info["holdout_accuracy"],
            "seed": args.seed,
            "fit": info["fit"],
            "recipe": "models/food-scorer/train/train.py",
        },
    }
    manifest["exported_with"] = {**spec.get("exported_with", {}), "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


# --- scoring as the server does it (for the summary and the self-check) ---------------------


def combined(logits: np.ndarray, n: int, low: float, high: float) -> np.ndarray:
    """[batch, 1000 + n] probabilities: ImageNet's and the head's softmax mixed by the gate."""
    logits = logits.astype(np.float64)
    p_imagenet = softmax(logits[:, :1000])
    p_head = softmax(logits[:, 1000 : 1000 + n])
    g = np.clip((logits[:, 1000 + n] - low) / (high - low), 0, 1)[:, None]
    return np.concatenate([(1 - g) * p_imagenet, g * p_head], axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--photos", type=pathlib.Path, help="folder with one subfolder of photos per label")
    src.add_argument("--list", type=pathlib.Path, help="CSV path,label[,split]; paths relative to the CSV")
    parser.add_argument("--classes", type=pathlib.Path, required=True, help="CSV label,group,score,rationale")
    parser.add_argument("--base", type=pathlib.Path, default=HERE.parent, help="base model folder (models/food-scorer)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="models/<id>: written whole or not at all")
    parser.add_argument("--id", help="model id (default: the --out folder's name)")
    parser.add_argument("--name", help="display name (default: the id)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--holdout", type=float, default=0.15, help="share held out per class when the list has no split")
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--cache", type=pathlib.Path, help="feature cache (.npz), reused when photos and base are unchanged")
    parser.add_argument("--trained-on", help="one line on the data, for the manifest")
    parser.add_argument("--data-licence", help="the training photos' licence, for the manifest")
    parser.add_argument("--data-licence-file", type=pathlib.Path, help="copied into the model folder as LICENSE")
    parser.add_argument("--data-readme", type=pathlib.Path, help="copied into the model folder as README.md")
    parser.add_argument("--tips", type=pathlib.Path, help="tips.toml to ship (default: the base's)")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="for the class table's version")
    parser.add_argument("--eval-photos", type=pathlib.Path, help="with PLATESCORE_BIN set: run `platescore eval` on it")
    args = parser.parse_args()
    started = time.perf_counter()

    args.out = args.out.resolve()
    args.id = args.id or args.out.name
    if not ID_RE.match(args.id):
        raise Fail(f"model id {args.id!r} must match [A-Za-z0-9._-]+")
    if not 0 <= args.holdout < 1:
        raise Fail("--holdout must be in [0, 1)")
    for opt in ("data_licence_file", "data_readme", "tips"):
        path = getattr(args, opt)
        if path and not path.is_file():
            raise Fail(f"--{opt.replace('_', '-')} {path} does not exist")
    base_dir = args.base.resolve()
    spec = json.loads((base_dir / "manifest.json").read_text())
    if "head" in spec:
        raise Fail(f"base {base_dir} already has a head: train on the ImageNet model (models/food-scorer)")
    base_path = base_dir / spec["file"]
    base_sha = sha256_of(base_path)
    if base_sha != spec["sha256"]:
        raise Fail(f"{base_path} does not match its manifest's sha256")

    classes = read_classes(args.classes)
    photos = read_photos(args)
    check_labels(classes, photos)
    assign_split(photos, args.holdout, args.seed)
    index = {c["label"]: i for i, c in enumerate(classes)}
    y = np.array([index[p["label"]] for p in photos])
    train = np.array([p["split"] == "train" for p in photos])
    hold = ~train
    n = len(classes)
    print(f"{len(photos)} photos, {n} classes: {train.sum()} train, {hold.sum()} held out")

    base = onnx.load(str(base_path))
    feats, imagenet_logits = extract(base, spec, [p["path"] for p in photos], args.cache, base_sha)

    t = time.perf_counter()
    w, b = fit_head(feats[train], y[train], n, args.l2, args.iters, args.lr)
    print(f"head: fitted in {time.perf_counter() - t:.1f} s (l2 {args.l2}, {args.iters} Adam iterations, lr {args.lr})")
    cent = centroids(feats[train], y[train], n)
    head_logits = feats.astype(np.float64) @ w + b
    sim = similarity(feats, cent)
    pred = head_logits.argmax(axis=1)
    train_acc = float((pred[train] == y[train]).mean())
    recall = {}
    if hold.any():
        acc = float((pred[hold] == y[hold]).mean())
        for i, c in enumerate(classes):
            m = hold & (y == i)
            if m.any():
                recall[c["label"]] = (int((pred[m] == i).sum()), int(m.sum()))
        low, high = (float(v) for v in np.percentile(sim[hold], [1, 10]))
        gate_from = "held-out"
    else:
        acc = None
        low, high = (float(v) for v in np.percentile(sim[train], [1, 10]))
        gate_from = "train (no photo held out)"
    if high - low < 0.01:
        print(f"gate: 1st and 10th percentile too close ({low:.4f}, {high:.4f}); high set to low + 0.01")
        high = low + 0.01
    low, high = round(low, 4), round(high, 4)
    print(f"train accuracy {train_acc:.4f}; held-out accuracy {acc if acc is None else round(acc, 4)}")
    print(f"gate from {gate_from} similarity: low (1st pct) {low}, high (10th pct) {high}")
    if recall:
        print("held-out recall per class: " + ", ".join(f"{k} {a}/{t_}" for k, (a, t_) in recall.items()))

    model = graft(base, spec, w, b, cent)
    info = {
        "gate_low": low,
        "gate_high": high,
        "train": int(train.sum()),
        "holdout": int(hold.sum()),
        "holdout_accuracy": None if acc is None else round(acc, 4),
        "fit": {"kind": "class-balanced softmax regression on standardised features, full-batch Adam from zeros",
                "l2": args.l2, "iterations": args.iters, "lr": args.lr},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{args.id}.tmp-", dir=args.out.parent))
    tmp.chmod(0o755)
    try:
        manifest = write_folder(tmp, args, spec, base_dir, model, classes, info)
        # Self-check: the written file, through ONNX Runtime, against numpy.
        check = np.linspace(0, len(photos) - 1, min(len(photos), 32)).astype(int)
        sess = session(tmp / "model.onnx")
        got = np.concatenate(
            [sess.run(None, {spec["input"]["name"]: np.stack([preprocess(photos[i]["path"], spec) for i in check[j : j + BATCH]])})[0]
             for j in range(0, len(check), BATCH)]
        )
        want = np.concatenate([imagenet_logits[check], head_logits[check], sim[check, None]], axis=1)
        diff = np.abs(got - want)
        same = (got[:, 1000 : 1000 + n].argmax(1) == pred[check]).mean()
        print(f"self-check on {len(check)} photos: max |ORT - numpy| imagenet {diff[:, :1000].max():.2e}, head {diff[:, 1000:1000+n].max():.2e}, "
              f"similarity {diff[:, -1].max():.2e}; same head top-1 {same:.0%}")
        if diff[:, :1000].max() > 1e-3 or diff[:, 1000:].max() > 1e-3 or same < 1:
            raise Fail("self-check failed: ONNX Runtime disagrees with numpy on the written model")
        labels = (tmp / "labels.txt").read_text().splitlines()
        if len(labels) != 1000 + n or got.shape[1] != 1000 + n + 1:
            raise Fail("self-check failed: labels or output width wrong")
        if args.out.exists():
            old = args.out.parent / f".{args.id}.old-{os.getpid()}"
            args.out.rename(old)
            tmp.rename(args.out)
            shutil.rmtree(old)
        else:
            tmp.rename(args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    print(f"wrote {args.out}: model.onnx sha256 {manifest['sha256']}, version {manifest['version']}")
    print(f"done in {time.perf_counter() - started:.1f} s")

    bin_ = os.environ.get("PLATESCORE_BIN")
    if bin_ and args.eval_photos:
        env = {**os.environ, "PLATESCORE_MODELS_DIR": str(args.out.parent)}
        cmd = [bin_, "eval", str(args.eval_photos), "--model", args.id]
        print("$ PLATESCORE_MODELS_DIR=" + env["PLATESCORE_MODELS_DIR"] + " " + " ".join(cmd), flush=True)
        return subprocess.run(cmd, env=env).returncode
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
