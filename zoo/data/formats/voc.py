"""Pascal VOC datasets: ``Annotations/<id>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt`` (one id a line).

The devkit's corners are 1-based and inclusive: ``(xmin, ymin, xmax, ymax)`` is the pixel-corner box
``(xmin - 1, ymin - 1, xmax, ymax)`` in zoo's (and COCO's) convention. ``difficult`` objects become crowd
annotations, which evaluation ignores as VOC does. Classes: ``labels.txt`` (one name a line, zoo writes it) when
present, else the sorted names found in all of ``Annotations/``; class ``k`` is category id ``k + 1``."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from zoo.data.formats.base import DetectionSplit, Problem

__all__ = ["is_voc", "voc_splits", "read_voc", "write_voc"]


def is_voc(root: Path) -> bool:
    return (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir()


def voc_splits(root: Path) -> dict[str, Path]:
    """``{split: ImageSets/Main/<split>.txt}``; per-class lists (``<class>_<split>.txt``) are not splits."""
    return {p.stem: p for p in sorted((root / "ImageSets" / "Main").glob("*.txt")) if "_" not in p.stem}


def _class_names(root: Path) -> list[str]:
    listed = root / "labels.txt"
    if listed.is_file():
        return [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    names = set()
    for xml in (root / "Annotations").glob("*.xml"):
        try:
            names.update((o.findtext("name") or "").strip() for o in ET.parse(xml).getroot().iter("object"))
        except ET.ParseError:
            continue  # reported when its split is read
    return sorted(names - {""})


def _number(node: ET.Element | None, tag: str) -> float:
    text = None if node is None else node.findtext(tag)
    if text is None:
        raise ValueError(f"no <{tag}>")
    return float(text)


def read_voc(root: Path, split: str) -> DetectionSplit:
    splits = voc_splits(root)
    key = split if split in splits else next((s for s in ("val", "valid") if split in ("val", "valid") and s in splits),
                                             None)
    if key is None:
        raise FileNotFoundError(f"{root}: no ImageSets/Main/{split}.txt (splits: {', '.join(splits) or 'none'})")
    names = _class_names(root)
    index = {n: k for k, n in enumerate(names)}
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    images, annotations, origins, problems = [], [], {}, []
    listed, seen = splits[key], {}
    for number, line in enumerate(listed.read_text().splitlines(), 1):
        stem = line.split()[0] if line.split() else ""
        if not stem:
            continue
        if stem in seen:
            problems.append(Problem(str(listed), f"duplicate id {stem!r} (also line {seen[stem]})", number))
            continue
        seen[stem] = number
        xml = root / "Annotations" / f"{stem}.xml"
        if not xml.is_file():
            problems.append(Problem(str(listed), f"{stem!r} has no annotation file {xml}", number))
            continue
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            problems.append(Problem(str(xml), f"malformed XML ({exc})"))
            continue
        file_name = (tree.findtext("filename") or "").strip()
        if not file_name:
            matches = sorted((root / "JPEGImages").glob(f"{stem}.*"))
            file_name = matches[0].name if matches else f"{stem}.jpg"
        try:
            size = tree.find("size")
            width, height = int(_number(size, "width")), int(_number(size, "height"))
            if width < 1 or height < 1:
                raise ValueError("zero size")
        except ValueError:  # no usable <size>: the image's own
            try:
                with Image.open(root / "JPEGImages" / file_name) as img:
                    width, height = img.size
            except (OSError, SyntaxError, ValueError) as exc:
                problems.append(Problem(str(xml), f"no <size> and the image cannot be read ({exc})"))
                continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                problems.append(Problem(str(xml), f"object class {name!r} is not one of the classes "
                                                  f"({', '.join(names)}{'; from labels.txt' if (root / 'labels.txt').is_file() else ''})"))
                continue
            try:
                box = obj.find("bndbox")
                x0, y0, x1, y1 = (_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as exc:
                problems.append(Problem(str(xml), f"malformed <bndbox> of a {name!r} object ({exc})"))
                continue
            difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
            ann_id = len(annotations) + 1
            bbox = [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": index[name] + 1, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": int(difficult)})
            origins[ann_id] = (str(xml), None)
    return DetectionSplit({"images": images, "annotations": annotations, "categories": categories},
                          root / "JPEGImages", "voc", key, str(listed), problems, origins)


def _fmt(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _element(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = text
    return node


def write_voc(splits: dict[str, DetectionSplit], dst: Path) -> list[str]:
    """VOC layout with ``labels.txt`` (the class order); corners written 1-based inclusive (fractional pixels kept
    to 4 decimals). Images in sub-folders are named ``sub__name``; when names clash between splits every file is
    prefixed with its split (``val_000001.png``)."""
    names = sorted(splits.values(), key=lambda d: d.split)[0].class_names if splits else []
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    (dst / "labels.txt").write_text("".join(n + "\n" for n in names))
    flat = {split: {i: n.replace("/", "__") for i, n in data.short_names().items()} for split, data in splits.items()}
    stems: dict[str, int] = {}
    for names in flat.values():
        for name in names.values():
            stems[Path(name).stem] = stems.get(Path(name).stem, 0) + 1
    clash = any(count > 1 for count in stems.values())
    for split, data in splits.items():
        cats = {c["id"]: c["name"] for c in data.coco["categories"]}
        by_image: dict[int, list[dict]] = {}
        for ann in data.coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        ids = []
        for im in data.coco["images"]:
            file_name = (f"{split}_" if clash else "") + flat[split][im["id"]]
            stem = Path(file_name).stem
            ids.append(stem)
            shutil.copy2(data.image_dir / im["file_name"], dst / "JPEGImages" / file_name)
            root = ET.Element("annotation")
            _element(root, "folder", "JPEGImages")
            _element(root, "filename", file_name)
            size = _element(root, "size")
            for tag, value in (("width", im["width"]), ("height", im["height"]), ("depth", 3)):
                _element(size, tag, str(value))
            for ann in by_image.get(im["id"], []):
                x, y, w, h = ann["bbox"]
                obj = _element(root, "object")
                _element(obj, "name", cats[ann["category_id"]])
                _element(obj, "difficult", str(int(bool(ann.get("iscrowd")))))
                box = _element(obj, "bndbox")
                for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
                    _element(box, tag, _fmt(value))
            ET.indent(root)
            ET.ElementTree(root).write(dst / "Annotations" / f"{stem}.xml", encoding="utf-8")
        (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return []
