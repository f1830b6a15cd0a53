"""Shared helpers of the benchmark scripts (paths of ../shared/data, markdown tables)."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def shared_data() -> Path:
    env = os.environ.get("DISCOBOX_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def dataset_root(name: str) -> Path:
    """The folder of one ``../shared/data`` set (or a folder with train.json/val.json/images);
    exits with a one-line message when it has no train.json."""
    root = Path(name) if Path(name).is_dir() else shared_data() / name
    if not (root / "train.json").is_file():
        raise SystemExit(f"{root}: no train.json (is ../shared/data present?)")
    return root


def one_class_copy(name: str) -> Path:
    """A class-agnostic copy of a data set (every annotation in one category, ``object``) in
    ``benchmarks/out/one_class/<name>_1class``, images linked, not copied: mask AP without the
    classification."""
    root = dataset_root(name)
    out = OUT / "one_class" / f"{root.name}_1class"
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        coco = json.loads((root / f"{split}.json").read_text())
        coco["categories"] = [{"id": 1, "name": "object", "supercategory": "object"}]
        for ann in coco["annotations"]:
            ann["category_id"] = 1
        (out / f"{split}.json").write_text(json.dumps(coco))
    link = out / "images"
    if not link.exists():
        link.symlink_to((root / "images").resolve(), target_is_directory=True)
    return out


def dataset_overrides(name: str) -> list[str]:
    """Data keys of one ``../shared/data`` set (or a folder with train.json/val.json/images)."""
    root = dataset_root(name)
    cats = json.loads((root / "train.json").read_text())["categories"]
    names = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    return [
        f"model.num_classes={len(names)}",
        f"data.class_names={json.dumps(names)}",
        f"data.train_json={root / 'train.json'}",
        f"data.train_images={root / 'images'}",
        f"data.val_json={root / 'val.json'}",
        f"data.val_images={root / 'images'}",
    ]


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
