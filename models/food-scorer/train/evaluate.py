"""Scores a folder laid out like shared/images (`food/<label>/...`, `nonfood/<kind>/...`;
`awkward/` skipped) with one or more model folders, the way the server does, and checks
issue 15's conditions for making a grocery head the default against a base model.

    python3 evaluate.py --images ../../../../shared/images --base ../../food-scorer \\
        --model ../../grocery-scorer [--report conditions.json] [--int8]

Scoring (src/inference/scoring.rs, with the head's gate): pI = softmax(logits[:1000]);
with a head of N classes, pH = softmax(logits[1000:1000+N]), s = logits[1000+N],
g = clamp((s - low) / (high - low), 0, 1), p = concat((1-g) pI, g pH). Food mass = sum of p
over the table's [[food]] indices; is_food = food + hint mass >= food_threshold and food
mass > 0; score = sum(p_i score_i) / food mass; group = the group with the largest mass.

This is an evaluation: nothing here is tuned on the photos it reads.
"""

import argparse
import json
import pathlib
import sys
import tomllib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "export"))
sys.path.insert(0, str(HERE))
from quantize import preprocess  # noqa: E402
from train import combined, session, softmax  # noqa: E402

# What each grocery label of shared/images should come out as.
PACKAGED = {"juice": "Juice", "milk": "Milk", "oatghurt": "Oatghurt", "sour_cream": "Sour-Cream",
            "soy_milk": "Soy-Milk", "yoghurt": "Yoghurt"}
HEALTHY_PREFIXES = ("fruit_", "vegetable_")
INDULGENT = ("pizza", "steak")
PACKAGED_TOLERANCE = 0.5
BELOW_BASE_TOLERANCE = 0.3


class Model:
    def __init__(self, folder: pathlib.Path, file: str | None = None):
        self.folder = folder
        self.spec = json.loads((folder / "manifest.json").read_text())
        self.file = file or self.spec["file"]
        self.sess = session(folder / self.file)
        table = tomllib.loads((folder / "food_classes.toml").read_text())
        self.threshold = table["food_threshold"]
        self.food = np.array([c["index"] for c in table["food"]])
        self.scores = np.array([c["score"] for c in table["food"]], dtype=np.float64)
        self.groups = [c["group"] for c in table["food"]]
        self.hints = np.array([h["index"] for h in table["hint"]])
        self.labels = (folder / self.spec["output"]["labels"]).read_text().splitlines()
        self.head = self.spec.get("head")

    def probs(self, x: np.ndarray) -> np.ndarray:
        logits = self.sess.run(None, {self.spec["input"]["name"]: x})[0]
        if self.head:
            n, gate = self.head["classes"], self.head["gate"]
            return combined(logits, n, gate["low"], gate["high"])
        return softmax(logits.astype(np.float64))

    def interpret(self, p: np.ndarray) -> dict:
        food_p = p[self.food]
        food_mass = float(food_p.sum())
        evidence = food_mass + float(p[self.hints].sum())
        is_food = evidence >= self.threshold and food_mass > 0
        mass = {}
        for g, v in zip(self.groups, food_p):
            mass[g] = mass.get(g, 0.0) + float(v)
        return {
            "is_food": bool(is_food),
            "score": round(float(np.clip((food_p * self.scores).sum() / food_mass, 1, 5)), 4) if is_food else None,
            "group": max(mass, key=mass.get) if is_food else None,
            "food_mass": round(food_mass, 4),
            "evidence": round(evidence, 4),
            "top1": self.labels[int(p.argmax())],
            "top1_p": round(float(p.max()), 4),
        }


def expected_group(label: str) -> str | None:
    if label == "vegetable_mushroom":
        return "fungi"
    if label.startswith("fruit_"):
        return "fruit"
    if label.startswith("vegetable_"):
        return "vegetable"
    if label == "packaged_juice":
        return "beverage"
    if label.startswith("packaged_"):
        return "dairy"
    return None


def photos(images: pathlib.Path) -> list[tuple[str, str, pathlib.Path]]:
    out = []
    for kind in ("food", "nonfood"):
        for p in sorted((images / kind).rglob("*")):
            if p.is_file() and p.name != ".gitkeep":
                out.append((kind, p.parent.name, p))
    return out


def run(models: dict[str, Model], images: pathlib.Path) -> list[dict]:
    rows = []
    first = next(iter(models.values()))
    for kind, label, path in photos(images):
        x = preprocess(path, first.spec)[None]
        row = {"photo": str(path.relative_to(images)), "kind": kind, "label": label}
        for name, m in models.items():
            row[name] = m.interpret(m.probs(x)[0])
        rows.append(row)
    return rows


def conditions(rows: list[dict], name: str, base: str, table_scores: dict[str, int] | None) -> dict:
    res = {}
    food = [r for r in rows if r["kind"] == "food"]
    nonfood = [r for r in rows if r["kind"] == "nonfood"]
    recall = np.mean([r[name]["is_food"] for r in food])
    spec = np.mean([not r[name]["is_food"] for r in nonfood])
    bal = (recall + spec) / 2
    res["balanced_accuracy"] = {"value": round(float(bal), 4), "recall": round(float(recall), 4),
                                "specificity": round(float(spec), 4), "pass": bool(bal >= 0.98),
                                "missed_food": [r["photo"] for r in food if not r[name]["is_food"]]}
    grocery = [r for r in food if expected_group(r["label"])]
    bad = [{"photo": r["photo"], "is_food": r[name]["is_food"], "group": r[name]["group"], "want": expected_group(r["label"])}
           for r in grocery if not r[name]["is_food"] or r[name]["group"] != expected_group(r["label"])]
    res["grocery_food_right_group"] = {"ok": len(grocery) - len(bad), "of": len(grocery), "pass": not bad, "failures": bad}
    if name != base:
        below = []
        for r in food:
            if r["label"].startswith(HEALTHY_PREFIXES) and r[base]["score"] is not None:
                ours = r[name]["score"]
                if ours is None or ours < r[base]["score"] - BELOW_BASE_TOLERANCE:
                    below.append({"photo": r["photo"], "base": r[base]["score"], "model": ours})
        compared = sum(1 for r in food if r["label"].startswith(HEALTHY_PREFIXES) and r[base]["score"] is not None)
        res["fruit_veg_not_below_base_by_0.3"] = {"compared": compared, "pass": not below, "failures": below,
                                                  "note": "photos the base model calls not food have no base score to compare"}
    cv = [r for r in food if r["label"] in ("vegetable_carrots", "vegetable_asparagus")]
    res["carrots_asparagus_ge_4"] = {"scores": {r["photo"]: r[name]["score"] for r in cv},
                                     "pass": all(r[name]["score"] is not None and r[name]["score"] >= 4 for r in cv)}
    if table_scores is not None:
        pk = [r for r in food if r["label"].startswith("packaged_")]
        out = {}
        ok = True
        for r in pk:
            want = table_scores.get(PACKAGED[r["label"].removeprefix("packaged_")])
            got = r[name]["score"]
            good = r[name]["is_food"] and want is not None and abs(got - want) <= PACKAGED_TOLERANCE
            ok &= bool(good)
            out[r["photo"]] = {"score": got, "table": want, "is_food": r[name]["is_food"], "top1": r[name]["top1"]}
        res[f"packaged_food_score_within_{PACKAGED_TOLERANCE}_of_table"] = {"pass": ok, "photos": out}
    res["nonfood_stays_nonfood"] = {"pass": all(not r[name]["is_food"] for r in nonfood),
                                    "failures": [r["photo"] for r in nonfood if r[name]["is_food"]]}
    healthy = [r[name]["score"] for r in food if r["label"].startswith(HEALTHY_PREFIXES) and r[name]["score"] is not None]
    indulgent = [r[name]["score"] for r in food if r["label"] in INDULGENT and r[name]["score"] is not None]
    res["healthy_minus_indulgent"] = {
        "healthy_mean": round(float(np.mean(healthy)), 4) if healthy else None, "healthy_scored": len(healthy),
        "indulgent_mean": round(float(np.mean(indulgent)), 4) if indulgent else None, "indulgent_scored": len(indulgent),
        "gap": round(float(np.mean(healthy) - np.mean(indulgent)), 4) if healthy and indulgent else None,
        "note": "means over the photos each model calls food",
    }
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=pathlib.Path, default=HERE.parents[3] / "shared" / "images")
    parser.add_argument("--base", type=pathlib.Path, default=HERE.parent)
    parser.add_argument("--model", type=pathlib.Path, required=True)
    parser.add_argument("--report", type=pathlib.Path)
    parser.add_argument("--rows", type=pathlib.Path, help="per-photo JSON")
    args = parser.parse_args()

    base = Model(args.base.resolve())
    model = Model(args.model.resolve())
    bname, mname = base.folder.name, model.folder.name
    rows = run({bname: base, mname: model}, args.images)
    head_scores = None
    if model.head:
        first = model.head["first"]
        head_scores = {model.labels[i]: int(s) for i, s in zip(model.food, model.scores) if i >= first}
    res_base = conditions(rows, bname, bname, head_scores)
    res_model = conditions(rows, mname, bname, head_scores)
    gap_ok = (res_model["healthy_minus_indulgent"]["gap"] or -9) >= (res_base["healthy_minus_indulgent"]["gap"] or 9)
    res_model["healthy_minus_indulgent"]["pass"] = bool(gap_ok)
    report = {"images": str(args.images), "photos": len(rows), bname: res_base, mname: res_model,
              "all_pass": all(v.get("pass", True) for v in res_model.values())}
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if args.rows:
        args.rows.write_text(json.dumps(rows, indent=1) + "\n")
    print("\nphoto | base food/score/group/top1 | model food/score/group/top1")
    for r in rows:
        b, m = r[bname], r[mname]
        print(f"{r['photo'][:70]:70s} | {b['is_food']!s:5} {b['score']!s:6} {b['group']!s:9} {b['top1'][:18]:18s} | "
              f"{m['is_food']!s:5} {m['score']!s:6} {m['group']!s:9} {m['top1'][:18]}")


if __name__ == "__main__":
    main()
