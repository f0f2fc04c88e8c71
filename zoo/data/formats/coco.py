"""COCO json datasets: zoo's layout (``DIR/<split>.json`` + ``DIR/<split>/``, or COCO's own
``DIR/annotations/instances_<split>2017.json`` + ``DIR/<split>2017/``), a Roboflow COCO export
(``DIR/{train,valid,test}/_annotations.coco.json`` beside the images) and any json + image folder."""
from __future__ import annotations

import json
import math
import numbers
import shutil
from pathlib import Path
from typing import Any

from zoo.data.formats.base import DetectionSplit, Problem

__all__ = ["read_coco_file", "zoo_splits", "roboflow_splits", "read_zoo", "read_roboflow", "write_coco",
           "roboflow_placeholder", "ROBOFLOW_ANN", "SPLIT_ALIASES"]

ROBOFLOW_ANN = "_annotations.coco.json"
#: other names a split goes by in some layouts (Roboflow calls val "valid")
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val", "validation")}


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def read_coco_file(ann_file: str | Path, image_dir: str | Path, split: str = "", fmt: str = "coco") -> DetectionSplit:
    """Read a COCO json: malformed entries (duplicate ids, unknown images or categories, bad boxes) are left out
    and reported in ``problems``; an unreadable json raises ``ValueError``."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file {ann_file} not found")
    try:
        data = json.loads(ann_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{ann_file} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{ann_file} is not a COCO detection file: it needs 'images' and 'categories' lists")
    src, problems = str(ann_file), []
    categories, cat_ids = [], set()
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            problems.append(Problem(src, f"category {cat!r} needs an integer 'id' and a 'name'"))
        elif cat["id"] in cat_ids:
            problems.append(Problem(src, f"duplicate category id {cat['id']}"))
        else:
            cat_ids.add(cat["id"])
            categories.append(dict(cat))
    images, image_ids = [], set()
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            problems.append(Problem(src, f"image {im!r} needs an integer 'id' and a 'file_name'"))
        elif im["id"] in image_ids:
            problems.append(Problem(src, f"duplicate image id {im['id']} ({im['file_name']})"))
        else:
            image_ids.add(im["id"])
            images.append(dict(im))
    annotations, ann_ids = [], set()
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict):
            problems.append(Problem(src, f"annotation {ann!r} is not an object"))
            continue
        bbox, what = ann.get("bbox"), f"annotation {ann.get('id')!r}"
        if not isinstance(ann.get("id"), int) or isinstance(ann.get("id"), bool):
            problems.append(Problem(src, f"annotation without an integer 'id' (image {ann.get('image_id')!r})"))
        elif ann.get("id") in ann_ids:
            problems.append(Problem(src, f"duplicate annotation id {ann.get('id')!r}"))
        elif ann.get("image_id") not in image_ids:
            problems.append(Problem(src, f"{what} refers to image id {ann.get('image_id')!r}, which is not in 'images'"))
        elif ann.get("category_id") not in cat_ids:
            problems.append(Problem(src, f"{what} has category id {ann.get('category_id')!r}, not one of the "
                                         f"categories {sorted(cat_ids)}"))
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            problems.append(Problem(src, f"{what}: bbox {bbox!r} is not 4 numbers [x, y, w, h]"))
        else:
            ann_ids.add(ann.get("id"))
            annotations.append(dict(ann, iscrowd=int(ann.get("iscrowd", 0)),
                                    area=ann.get("area", bbox[2] * bbox[3])))
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return DetectionSplit(coco, Path(image_dir), fmt, split, src, problems)


def roboflow_placeholder(categories: list[dict], annotations: list[dict]) -> int | None:
    """Roboflow exports put the dataset's name first as category 0, the supercategory of every class, with no
    annotations. Its id when that is exactly the case, else None: a category that has annotations or is not the
    supercategory of all the others is a real class and is kept."""
    first = next((c for c in categories if c["id"] == 0), None)
    others = [c for c in categories if c["id"] != 0]
    if first is None or not others or any(a["category_id"] == 0 for a in annotations):
        return None
    if all(c.get("supercategory") == first["name"] for c in others):
        return 0
    return None


def _split_names(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


def zoo_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (json, image folder)}`` of zoo's layout (``<split>.json`` + ``<split>/``) or COCO's
    (``annotations/instances_<split>2017.json`` + ``<split>2017/``) under ``root``."""
    found = {}
    for path in sorted(root.glob("*.json")):
        if (root / path.stem).is_dir():
            found[path.stem] = (path, root / path.stem)
    for path in sorted(root.glob("annotations/instances_*2017.json")):
        split = path.name[len("instances_"):-len("2017.json")]
        if split and (root / f"{split}2017").is_dir():
            found.setdefault(split, (path, root / f"{split}2017"))
    return found


def roboflow_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    return {d.name: (d / ROBOFLOW_ANN, d) for d in sorted(root.iterdir()) if (d / ROBOFLOW_ANN).is_file()}


def _pick(splits: dict[str, Any], split: str, root: Path, what: str) -> Any:
    for name in _split_names(split):
        if name in splits:
            return name, splits[name]
    raise FileNotFoundError(f"{root}: no split {split!r} in this {what} (it has: {', '.join(splits) or 'none'})")


def read_zoo(root: Path, split: str) -> DetectionSplit:
    name, (ann, images) = _pick(zoo_splits(root), split, root, "COCO layout")
    return read_coco_file(ann, images, name, "coco")


def read_roboflow(root: Path, split: str) -> DetectionSplit:
    """A Roboflow split; the placeholder category is judged on all the splits together (so that every split
    has the same classes)."""
    splits = roboflow_splits(root)
    name, (ann, images) = _pick(splits, split, root, "Roboflow export")
    data = read_coco_file(ann, images, name, "roboflow")
    everything = [a for other, (path, _) in splits.items()
                  for a in (data.coco["annotations"] if other == name else
                            json.loads(path.read_text()).get("annotations", []))]
    placeholder = roboflow_placeholder(data.coco["categories"], everything)
    if placeholder is not None:
        data.coco["categories"] = [c for c in data.coco["categories"] if c["id"] != placeholder]
    return data


def write_coco(splits: dict[str, DetectionSplit], dst: Path) -> None:
    """zoo's layout: ``dst/<split>.json`` + ``dst/<split>/`` (images copied; ids, categories and annotations kept,
    file names without the folders all images of the split share)."""
    for name, data in splits.items():
        folder, short = dst / name, data.short_names()
        images = []
        for im in data.coco["images"]:
            target = folder / short[im["id"]]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data.image_dir / im["file_name"], target)
            images.append(dict(im, file_name=short[im["id"]]))
        folder.mkdir(parents=True, exist_ok=True)
        (dst / f"{name}.json").write_text(json.dumps(dict(data.coco, images=images)))
