"""``zoo.data.synthetic``: a procedural detection dataset (coloured shapes on textured backgrounds) written in COCO
format, for fast tests, demos and the bundled demo weights. Fully determined by ``seed``: image ``i`` of a split
depends only on ``(seed, i)``, so any split can be regenerated bit-exactly.

    python -m zoo.data.synthetic data/shapes --train 2000 --val 100 --seed 0
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SHAPE_CLASSES", "render_image", "make_synthetic_coco", "write_synthetic_dataset"]

#: category names, COCO category ids 1, 2, 3
SHAPE_CLASSES = ("circle", "square", "triangle")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth colour gradient + blurred noise + faint stripes: texture without object-like edges."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    freq, phase = rng.uniform(4, 16), rng.uniform(0, 2 * math.pi)
    img += 12 * np.sin(2 * math.pi * freq * (xx if rng.random() < 0.5 else yy) + phase)[..., None]
    noise = Image.fromarray(rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8)).resize((size, size))
    img += (np.asarray(noise.filter(ImageFilter.GaussianBlur(2)), np.float32) - 127) * 0.25
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3}[kind]
    start = angle + (math.pi / 4 if kind == "square" else -math.pi / 2)
    return [(cx + r * math.cos(start + 2 * math.pi * k / corners), cy + r * math.sin(start + 2 * math.pi * k / corners))
            for k in range(corners)]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def render_image(seed: int, index: int, image_size: int = 160, max_objects: int = 4,
                 size_range: tuple[float, float] = (0.15, 0.45)) -> tuple[Image.Image, list[dict]]:
    """Render image ``index`` of the stream ``seed``: 1..max_objects shapes (sizes a fraction of the image side),
    placed fully inside the image and overlapping little. Returns the image and objects
    ``{"category_id": 1..3, "bbox": [x, y, w, h] pixels}`` (tight boxes of the drawn shapes)."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, image_size)
    draw = ImageDraw.Draw(img)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            kind = int(rng.integers(len(SHAPE_CLASSES)))
            r = rng.uniform(*size_range) * image_size / 2
            cx, cy = rng.uniform(r + 1, image_size - r - 1, 2)
            angle = rng.uniform(0, 2 * math.pi)
            if SHAPE_CLASSES[kind] == "circle":
                pts = [(cx - r, cy - r), (cx + r, cy + r)]
            else:
                pts = _shape_polygon(SHAPE_CLASSES[kind], cx, cy, r, angle)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            if all(_iou(box, o["bbox"]) < 0.2 for o in objects):
                break
        else:
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        local = np.asarray(img.getpixel((int(cx), int(cy))), np.int64)
        if np.abs(np.subtract(colour, local)).sum() < 150:
            colour = tuple(255 - c for c in colour)  # keep contrast with the background
        if SHAPE_CLASSES[kind] == "circle":
            draw.ellipse(pts, fill=colour)
        else:
            draw.polygon(pts, fill=colour)
        objects.append({"category_id": kind + 1, "bbox": [round(float(v), 2) for v in box]})
    return img, objects


def make_synthetic_coco(root: str | Path, split: str, num_images: int, seed: int = 0, image_size: int = 160,
                        max_objects: int = 4) -> Path:
    """Write ``root/<split>/*.png`` and ``root/<split>.json`` (COCO format); returns the annotation path."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img, objects = render_image(seed, i, image_size, max_objects)
        name = f"{i:06d}.png"
        img.save(root / split / name)
        images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
        for o in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": o["category_id"],
                                "bbox": o["bbox"], "area": round(o["bbox"][2] * o["bbox"][3], 2), "iscrowd": 0})
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPE_CLASSES)]
    ann_file = root / f"{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def write_synthetic_dataset(root: str | Path, num_train: int = 2000, num_val: int = 100, seed: int = 0,
                            image_size: int = 160) -> dict[str, Path]:
    """Train and val splits from disjoint streams (``seed`` and ``seed + 1``), in the layout ``zoo train --data``
    reads: ``root/{train,val}.json`` + ``root/{train,val}/``."""
    return {"train": make_synthetic_coco(root, "train", num_train, seed, image_size),
            "val": make_synthetic_coco(root, "val", num_val, seed + 1, image_size)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m zoo.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="output folder")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--val", type=int, default=100, help="held-out images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=160)
    args = p.parse_args(argv)
    paths = write_synthetic_dataset(args.root, args.train, args.val, args.seed, args.image_size)
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
