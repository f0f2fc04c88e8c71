"""YOLO datasets: ``data.yaml`` (``names`` a list or a ``{id: name}`` dict; ``train`` / ``val`` / ``test`` a folder,
a list of folders or a .txt list of images, relative to ``path`` when given, else to the yaml's folder; a
``../x`` that does not exist is read as ``x``, as ultralytics does for Roboflow's exports), images
under ``.../images/...`` and one ``.../labels/.../<stem>.txt`` per image with ``class cx cy w h`` normalised to
[0, 1]. An image without a label file has no objects. Class ``k`` becomes category id ``k + 1``."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from zoo.data.formats.base import IMAGE_SUFFIXES, DetectionSplit, Problem

__all__ = ["find_yaml", "yolo_splits", "read_yolo", "write_yolo", "label_path"]

_YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")


def find_yaml(root: Path) -> Path | None:
    """The dataset yaml of ``root``: data.yaml (or data.yml, dataset.yaml), else the only *.yaml with ``names``."""
    for name in _YAML_NAMES:
        if (root / name).is_file():
            return root / name
    candidates = [p for p in sorted(root.glob("*.y*ml")) if "names" in p.read_text(errors="replace")]
    return candidates[0] if len(candidates) == 1 else None


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise ValueError(f"{path}: a YOLO dataset yaml needs 'names' (a list of class names or an {{id: name}} map)")
    names = data["names"]
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names or not all(isinstance(k, int) and k >= 0 for k in names):
        raise ValueError(f"{path}: 'names' must be a non-empty list or a map of non-negative integer ids to names, "
                         f"got {data['names']!r}")
    if "nc" in data and data["nc"] != len(names):
        raise ValueError(f"{path}: nc is {data['nc']} but 'names' has {len(names)} classes")
    data["names"] = {k: str(v) for k, v in sorted(names.items())}
    return data


def _base(path: Path, data: dict[str, Any]) -> Path:
    """The folder the split paths are relative to: ``path`` (relative to the yaml's folder), else that folder."""
    if not data.get("path"):
        return path.parent
    base = Path(data["path"])
    return base if base.is_absolute() else path.parent / base


def yolo_splits(root: Path) -> dict[str, Any]:
    path = find_yaml(root)
    if path is None:
        return {}
    data = _load_yaml(path)
    return {k: data[k] for k in ("train", "val", "test") if data.get(k)}


def label_path(image: Path) -> Path | None:
    """The label file of an image: the last ``images`` folder of its path replaced by ``labels``, suffix .txt."""
    parts = list(image.parts)
    if "images" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")


def _images(base: Path, entry: Any, problems: list[Problem], yaml_path: Path) -> list[Path]:
    found: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        where = Path(str(item)) if Path(str(item)).is_absolute() else base / str(item)
        if not where.exists() and str(item).startswith("../"):  # Roboflow's YOLO exports: relative to the root
            where = base / str(item)[3:]
        if where.is_dir():
            found += sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif where.is_file() and where.suffix == ".txt":
            for line in where.read_text().splitlines():
                if line.strip():
                    p = Path(line.strip())
                    found.append(p if p.is_absolute() else where.parent / p)
        else:
            problems.append(Problem(str(yaml_path), f"split folder or list {where} not found"))
    return found


def read_yolo(root: Path, split: str) -> DetectionSplit:
    yaml_path = find_yaml(root)
    if yaml_path is None:
        raise FileNotFoundError(f"{root}: no data.yaml")
    data = _load_yaml(yaml_path)
    key = "val" if split in ("valid", "validation") else split
    if not data.get(key):
        raise FileNotFoundError(f"{yaml_path} has no {key!r} split (it has: "
                                f"{', '.join(k for k in ('train', 'val', 'test') if data.get(k)) or 'none'})")
    base, names, problems = _base(yaml_path, data), data["names"], []
    categories = [{"id": k + 1, "name": n} for k, n in names.items()]
    images, annotations, origins, seen = [], [], {}, {}
    label_dirs: set[Path] = set()
    for path in _images(base, data[key], problems, yaml_path):
        rel = path.relative_to(base) if path.is_relative_to(base) else path
        labels = label_path(path)
        if labels is None:
            problems.append(Problem(str(path), "image is not under an 'images' folder, so it has no labels folder"))
            continue
        label_dirs.add(labels.parent)
        if labels in seen:
            problems.append(Problem(str(path), f"duplicate image: {seen[labels]} has the same label file {labels}"))
            continue
        seen[labels] = path
        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, SyntaxError, ValueError) as exc:
            problems.append(Problem(str(path), f"missing or unreadable image ({exc})"))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": str(rel), "width": width, "height": height})
        if not labels.is_file():
            continue
        for number, line in enumerate(labels.read_text(errors="replace").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            where = (str(labels), number)
            try:
                values = [float(v) for v in fields]
            except ValueError:
                problems.append(Problem(str(labels), f"malformed line {line.strip()!r}: expected 'class cx cy w h'",
                                        number))
                continue
            if len(values) != 5:
                problems.append(Problem(str(labels), f"malformed line: {len(values)} values, expected 5 (class cx cy w "
                                                     "h; segmentation polygons are not read)", number))
                continue
            cls, cx, cy, w, h = values
            if cls != int(cls) or int(cls) not in names:
                problems.append(Problem(str(labels), f"class id {fields[0]} out of range: {yaml_path.name} names "
                                                     f"{min(names)}..{max(names)}", number))
                continue
            ann_id = len(annotations) + 1
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": int(cls) + 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
            origins[ann_id] = where
    stems = {p.with_suffix("") for p in seen}
    for folder in sorted(label_dirs):
        for txt in sorted(folder.glob("*.txt")):
            if txt.with_suffix("") not in stems:
                problems.append(Problem(str(txt), "label file without an image"))
    return DetectionSplit({"images": images, "annotations": annotations, "categories": categories}, base,
                          "yolo", key, str(yaml_path), problems, origins)


def _fmt(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def write_yolo(splits: dict[str, DetectionSplit], dst: Path) -> list[str]:
    """``dst/data.yaml`` + ``dst/images/<split>/`` + ``dst/labels/<split>/``; class = the category's rank in id
    order. Returns warnings (YOLO has no crowd / difficult flag: such objects are written as ordinary ones)."""
    import yaml

    warnings, names = [], None
    for name, data in splits.items():
        categories = sorted(data.coco["categories"], key=lambda c: c["id"])
        names = names or [c["name"] for c in categories]
        index = {c["id"]: k for k, c in enumerate(categories)}
        by_image: dict[int, list[dict]] = {}
        for ann in data.coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        crowd, short = 0, data.short_names()
        for im in data.coco["images"]:
            image = dst / "images" / name / short[im["id"]]
            image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data.image_dir / im["file_name"], image)
            lines = []
            for ann in by_image.get(im["id"], []):
                x, y, w, h = ann["bbox"]
                crowd += bool(ann.get("iscrowd"))
                lines.append(" ".join([str(index[ann["category_id"]])] + [_fmt(v) for v in (
                    (x + w / 2) / im["width"], (y + h / 2) / im["height"], w / im["width"], h / im["height"])]))
            labels = label_path(image)
            labels.parent.mkdir(parents=True, exist_ok=True)
            labels.write_text("".join(line + "\n" for line in lines))
        if crowd:
            warnings.append(f"{name}: {crowd} crowd/difficult objects written as ordinary objects (YOLO has no flag "
                            "for objects to ignore)")
    spec = {k: f"images/{k}" for k in splits}
    spec["names"] = names
    (dst / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return warnings
