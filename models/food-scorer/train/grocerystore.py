"""Writes train.py's inputs for the GroceryStoreDataset (MIT): a list CSV with the coarse
labels (the dataset's train split -> train, its val split -> holdout), and beside it the
dataset's LICENSE and a README.md with the provenance, which train.py copies into the model.

    python3 grocerystore.py [--dataset ../../../../shared/datasets/grocerystore] --out /tmp/grocery
    python3 train.py --list /tmp/grocery/list.csv --classes grocery_classes.csv \\
        --out ../../grocery-scorer --data-licence-file /tmp/grocery/LICENSE \\
        --data-readme /tmp/grocery/README.md --data-licence "$(cat /tmp/grocery/licence.txt)" \\
        --trained-on "$(cat /tmp/grocery/trained_on.txt)"

Labels come from dataset/train.txt and val.txt (`path, fine id, coarse id`) and the coarse
class names of dataset/classes.csv (column 3), as the dataset's SOURCE.md asks; never from
folder names. `--fine` writes the fine class names instead (81 classes).
"""

import argparse
import csv
import os
import pathlib
import shutil

HERE = pathlib.Path(__file__).resolve().parent
WORK = HERE.parents[3]

README = """# Training data: GroceryStoreDataset

The head of this model was trained on the train split ({train} photos) of the
GroceryStoreDataset and evaluated on its val split ({val} photos), {classes} {kind} classes.

- Source: the public GitHub repository `marcusklasson/GroceryStoreDataset`, commit
  `fc80ba90f803d79d0383df52c5a4ac5de99ff6fc`.
- Licence: MIT, Copyright (c) 2019 Marcus Klasson (`LICENSE` beside this file). The authors
  took the natural images with a smartphone in grocery stores.
- Cite: Marcus Klasson, Cheng Zhang, Hedvig Kjellström, "A Hierarchical Grocery Store Image
  Dataset with Visual and Semantic Labels", IEEE Winter Conference on Applications of
  Computer Vision (WACV), 2019.
- Labels: the coarse class names of `dataset/classes.csv`, via `dataset/train.txt` and
  `dataset/val.txt`. Not used: the test split and the downloaded iconic images.
- Recipe: `models/food-scorer/train/grocerystore.py`, then `train.py` with
  `grocery_classes.csv` (groups, 1-5 scores and their rationale).
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=pathlib.Path, default=WORK / "shared" / "datasets" / "grocerystore")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for list.csv, LICENSE, README.md")
    parser.add_argument("--fine", action="store_true", help="fine class names instead of coarse")
    args = parser.parse_args()

    data = args.dataset / "dataset"
    names = {}
    with (data / "classes.csv").open(newline="") as f:
        for row in csv.reader(f):
            if row[1].strip().isdigit():
                fine, coarse = int(row[1]), int(row[3])
                names[("fine", fine)] = row[0].strip()
                names[("coarse", coarse)] = row[2].strip()
    kind = "fine" if args.fine else "coarse"
    args.out.mkdir(parents=True, exist_ok=True)
    rows, counts = [], {"train": 0, "holdout": 0}
    for source, split in (("train.txt", "train"), ("val.txt", "holdout")):
        for line in (data / source).read_text().splitlines():
            if not line.strip():
                continue
            rel, fine, coarse = (part.strip() for part in line.split(","))
            label = names[(kind, int(fine if args.fine else coarse))]
            path = os.path.relpath((data / rel).resolve(), args.out.resolve())
            rows.append((path, label, split))
            counts[split] += 1
    with (args.out / "list.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    classes = len({r[1] for r in rows})
    shutil.copyfile(args.dataset / "LICENSE", args.out / "LICENSE")
    (args.out / "README.md").write_text(
        README.format(train=counts["train"], val=counts["holdout"], classes=classes, kind=kind)
    )
    (args.out / "licence.txt").write_text(
        "GroceryStoreDataset, MIT (c) 2019 Marcus Klasson; Klasson, Zhang, Kjellstrom, WACV 2019\n"
    )
    (args.out / "trained_on.txt").write_text(
        f"GroceryStoreDataset (MIT, marcusklasson/GroceryStoreDataset@fc80ba90f803): train split, "
        f"{classes} {kind} classes; val split held out\n"
    )
    print(f"{args.out / 'list.csv'}: {counts['train']} train + {counts['holdout']} holdout photos, {classes} {kind} classes")


if __name__ == "__main__":
    main()
