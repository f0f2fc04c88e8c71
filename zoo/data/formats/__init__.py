"""Detection datasets as people have them, read into one in-memory COCO form (:class:`DetectionSplit`) that
training (:class:`zoo.data.coco.CocoDetection`) and evaluation (pycocotools) consume, and written back in any
layout:

- ``coco``: zoo's layout (``<split>.json`` + ``<split>/``) or COCO's (``annotations/instances_<split>2017.json``
  + ``<split>2017/``), :mod:`zoo.data.formats.coco`;
- ``roboflow``: a Roboflow COCO export (``train/ valid/ test/`` each with ``_annotations.coco.json``);
- ``yolo``: ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/*.txt``, :mod:`zoo.data.formats.yolo`;
- ``voc``: Pascal VOC (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``), :mod:`zoo.data.formats.voc`.

:func:`load_split` refuses a split with errors (:func:`check` finds them all; ``zoo data check DIR`` prints them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from PIL import Image

from zoo.data.formats.base import DataError, DetectionSplit, Problem
from zoo.data.formats.coco import read_roboflow, read_zoo, roboflow_splits, write_coco, zoo_splits
from zoo.data.formats.voc import is_voc, read_voc, voc_splits, write_voc
from zoo.data.formats.yolo import find_yaml, read_yolo, write_yolo, yolo_splits

__all__ = ["FORMATS", "WRITABLE", "DetectionSplit", "Problem", "DataError", "detect_format", "list_splits",
           "read_split", "check", "load_split", "convert"]

#: format name -> reader(root, split)
FORMATS: dict[str, Callable[[Path, str], DetectionSplit]] = {
    "yolo": read_yolo, "voc": read_voc, "roboflow": read_roboflow, "coco": read_zoo}
#: format name -> writer(splits, dst) (returns warnings)
WRITABLE = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}

#: a box may stick out of its image by this many pixels (rounding in exports) before it is an error
EDGE_TOLERANCE = 0.5

_LOOKED_FOR = ("YOLO: data.yaml (or one *.yaml with 'names')",
               "Pascal VOC: Annotations/ + JPEGImages/ (+ ImageSets/Main/<split>.txt)",
               "Roboflow COCO: <split>/_annotations.coco.json (train/, valid/, test/)",
               "COCO: <split>.json + <split>/, or annotations/instances_<split>2017.json + <split>2017/")


def detect_format(root: str | os.PathLike) -> str:
    """The format of the dataset folder ``root``: ``yolo``, ``voc``, ``roboflow`` or ``coco``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found")
    if find_yaml(root) is not None:
        return "yolo"
    if is_voc(root):
        return "voc"
    if roboflow_splits(root):
        return "roboflow"
    if zoo_splits(root):
        return "coco"
    raise ValueError(f"{root}: not a dataset folder zoo can read; looked for\n  " + "\n  ".join(_LOOKED_FOR)
                     + "\n(or pass a COCO json and its images with --ann/--images)")


def list_splits(root: str | os.PathLike, fmt: str | None = None) -> list[str]:
    """The split names the dataset at ``root`` has (``train``, ``val``, ...; Roboflow's ``valid`` as it is)."""
    root = Path(root)
    fmt = fmt or detect_format(root)
    found = {"yolo": yolo_splits, "voc": voc_splits, "roboflow": roboflow_splits, "coco": zoo_splits}[fmt](root)
    return list(found)


def read_split(root: str | os.PathLike, split: str = "train", fmt: str | None = None) -> DetectionSplit:
    """Read one split of the dataset at ``root`` (format detected unless ``fmt``), without checking it."""
    root = Path(root)
    fmt = fmt or detect_format(root)
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; one of {', '.join(FORMATS)}")
    return FORMATS[fmt](root, split)


def check(data: DetectionSplit) -> list[Problem]:
    """Every problem of a split: the reader's, plus missing or unreadable images, image sizes that differ from
    the annotations', duplicate image files, zero-area boxes and boxes outside their image. Missing image sizes
    are filled in from the files. Sorted by file and line."""
    problems = list(data.problems)
    files: dict[str, int] = {}
    images = {}
    for im in data.coco["images"]:
        path = data.image_dir / im["file_name"]
        if im["file_name"] in files:
            problems.append(Problem(str(path), f"duplicate image: ids {files[im['file_name']]} and {im['id']} are "
                                               "the same file"))
        files[im["file_name"]] = im["id"]
        images[im["id"]] = im
        try:
            with Image.open(path) as img:
                width, height = img.size
        except FileNotFoundError:
            problems.append(Problem(str(path), f"image not found (listed in {data.source})"))
            continue
        except (OSError, SyntaxError, ValueError) as exc:
            problems.append(Problem(str(path), f"unreadable image ({exc})"))
            continue
        im.setdefault("width", width)
        im.setdefault("height", height)
        if (im["width"], im["height"]) != (width, height):
            problems.append(Problem(str(path), f"image is {width}x{height} but {data.source} says "
                                               f"{im['width']}x{im['height']}"))
    for ann in data.coco["annotations"]:
        file, line = data.origins.get(ann["id"], (data.source, None))
        x, y, w, h = ann["bbox"]
        im = images.get(ann["image_id"], {})
        what = f"box [x {x:.6g}, y {y:.6g}, w {w:.6g}, h {h:.6g}] (annotation {ann['id']})"
        if w <= 0 or h <= 0:
            problems.append(Problem(file, f"zero-area {what}", line))
        elif "width" in im and (x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > im["width"] + EDGE_TOLERANCE
                                or y + h > im["height"] + EDGE_TOLERANCE):
            problems.append(Problem(file, f"{what} is outside its {im['width']}x{im['height']} image "
                                          f"{im['file_name']}", line))
    return sorted(problems, key=lambda p: (p.file, p.line or 0))


def load_split(root: str | os.PathLike, split: str = "train", fmt: str | None = None) -> DetectionSplit:
    """Read and check one split; a split with errors raises :class:`DataError` naming the first one."""
    data = read_split(root, split, fmt)
    errors = [p for p in check(data) if p.severity == "error"]
    if errors:
        raise DataError(f"{data.source}: {len(errors)} error{'s' * (len(errors) > 1)} in the {data.split!r} split, "
                        f"the first: {errors[0]}; run `zoo data check {root}` to list them all", errors)
    return data


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, fmt: str | None = None) -> list[str]:
    """Write every split of the dataset at ``src`` to ``dst`` in format ``to`` (``coco``, ``yolo`` or ``voc``).
    Refuses a source with errors and a ``dst`` that is not empty. Returns warnings (what the format cannot hold)."""
    if to not in WRITABLE:
        raise ValueError(f"cannot write format {to!r}; one of {', '.join(WRITABLE)}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new folder")
    splits = {}
    for split in list_splits(src, fmt):
        name = "val" if split in ("valid", "validation") else split
        splits[name] = load_split(src, split, fmt)
    names = {tuple(d.class_names) for d in splits.values()}
    if len(names) > 1:
        raise ValueError(f"{src}: the splits have different classes ({' / '.join(map(str, names))})")
    dst.mkdir(parents=True, exist_ok=True)
    return WRITABLE[to](splits, dst) or []
