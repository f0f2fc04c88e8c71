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

__all__ = ["SHAPE_CLASSES", "render_image", "render_crowded_image", "render_tracking_clip", "make_synthetic_coco",
           "write_synthetic_dataset"]

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


def _shape_points(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """A circle's bounding corners, or a polygon's vertices."""
    return [(cx - r, cy - r), (cx + r, cy + r)] if kind == "circle" else _shape_polygon(kind, cx, cy, r, angle)


def _points_box(pts: list[tuple[float, float]]) -> list[float]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _paint(draw: ImageDraw.ImageDraw, kind: str, pts: list[tuple[float, float]], colour: tuple | int) -> None:
    if kind == "circle":
        draw.ellipse(pts, fill=colour)
    else:
        draw.polygon(pts, fill=colour)


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
            pts = _shape_points(SHAPE_CLASSES[kind], cx, cy, r, angle)
            box = _points_box(pts)
            if all(_iou(box, o["bbox"]) < 0.2 for o in objects):
                break
        else:
            continue
        _paint(draw, SHAPE_CLASSES[kind], pts, _contrasting_colour(rng, img, cx, cy))
        objects.append({"category_id": kind + 1, "bbox": [round(float(v), 2) for v in box]})
    return img, objects


def _contrasting_colour(rng: np.random.Generator, image: Image.Image, cx: float, cy: float) -> tuple[int, ...]:
    """A random colour, inverted when it is too close to the background at (cx, cy)."""
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    local = np.asarray(image.getpixel((int(cx), int(cy))), np.int64)
    return tuple(255 - c for c in colour) if np.abs(np.subtract(colour, local)).sum() < 150 else colour


def render_crowded_image(seed: int, image_size: int = 384, num_objects: int = 40,
                         size_range: tuple[float, float] = (14.0, 26.0)) -> tuple[Image.Image, list[dict]]:
    """A large image of many small shapes (diameters ``size_range`` pixels, not touching each other), for sliced
    inference: a detector trained at a small input size sees them at the scale it knows only in tiles.
    Returns the image and objects ``{"category_id": 1..3, "bbox": [x, y, w, h]}`` (fewer when they do not fit)."""
    rng = np.random.default_rng([seed, image_size, num_objects])
    img = _background(rng, image_size)
    draw = ImageDraw.Draw(img)
    objects: list[dict] = []
    for _ in range(num_objects):
        for _attempt in range(50):
            kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            r = rng.uniform(*size_range) / 2
            cx, cy = rng.uniform(r + 1, image_size - r - 1, 2)
            pts = _shape_points(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
            box = _points_box(pts)
            grown = [box[0] - 3, box[1] - 3, box[2] + 6, box[3] + 6]  # keep a gap between shapes
            if all(_iou(grown, o["bbox"]) == 0 for o in objects):
                break
        else:
            continue
        _paint(draw, kind, pts, _contrasting_colour(rng, img, cx, cy))
        objects.append({"category_id": SHAPE_CLASSES.index(kind) + 1, "bbox": [round(float(v), 2) for v in box]})
    return img, objects


def render_tracking_clip(seed: int, num_frames: int = 60, image_size: int = 96, num_objects: int = 3,
                         size_range: tuple[float, float] = (20.0, 30.0), speed_range: tuple[float, float] = (1.0, 2.5),
                         occluder_width: int = 12) -> tuple[list[np.ndarray], list[list[dict]]]:
    """A clip of shapes moving on a fixed background with known identities, for measuring trackers.

    Each shape moves at a constant speed (``speed_range`` pixels per frame), turns slowly and bounces off the
    borders, so paths cross and later shapes pass over earlier ones; a vertical grey pole ``occluder_width`` pixels
    wide (0: none) in the middle hides whatever passes behind it. Returns the frames (RGB uint8 ``[H, W, 3]``) and,
    per frame, the objects ``{"track_id": 1.., "category_id": 1..3, "bbox": [x, y, w, h], "visibility": 0..1}``
    whose box is the tight box of their visible pixels (objects hidden entirely are left out).
    """
    rng = np.random.default_rng([seed, 7919])
    background = _background(rng, image_size)
    shapes = []
    for k in range(num_objects):
        r = rng.uniform(*size_range) / 2
        speed, heading = rng.uniform(*speed_range), rng.uniform(0, 2 * math.pi)
        shapes.append({"kind": SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))], "r": r,
                       "pos": rng.uniform(r + 1, image_size - r - 1, 2),
                       "vel": speed * np.array([math.cos(heading), math.sin(heading)]),
                       "angle": rng.uniform(0, 2 * math.pi), "spin": rng.uniform(-0.05, 0.05)})
    for shape in shapes:
        shape["colour"] = _contrasting_colour(rng, background, *shape["pos"])
    pole = (image_size // 2 - occluder_width // 2, image_size // 2 + (occluder_width + 1) // 2)
    frames, truth = [], []
    for _ in range(num_frames):
        img = background.copy()
        draw = ImageDraw.Draw(img)
        masks = []
        for shape in shapes:  # later shapes are drawn over earlier ones
            pts = _shape_points(shape["kind"], *shape["pos"], shape["r"], shape["angle"])
            _paint(draw, shape["kind"], pts, shape["colour"])
            mask = Image.new("L", img.size)
            _paint(ImageDraw.Draw(mask), shape["kind"], pts, 255)
            masks.append(np.asarray(mask) > 0)
        if occluder_width:
            draw.rectangle((pole[0], 0, pole[1] - 1, image_size), fill=(128, 128, 128))
        covered = np.zeros((image_size, image_size), bool)
        if occluder_width:
            covered[:, pole[0]:pole[1]] = True
        objects = []
        for k in reversed(range(len(shapes))):
            visible = masks[k] & ~covered
            covered |= masks[k]
            if visible.any():
                ys, xs = np.nonzero(visible)
                box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
                objects.append({"track_id": k + 1, "category_id": SHAPE_CLASSES.index(shapes[k]["kind"]) + 1,
                                "bbox": box, "visibility": round(float(visible.sum() / max(masks[k].sum(), 1)), 3)})
        frames.append(np.asarray(img))
        truth.append(sorted(objects, key=lambda o: o["track_id"]))
        for shape in shapes:
            shape["pos"] = shape["pos"] + shape["vel"]
            shape["angle"] += shape["spin"]
            for axis in range(2):  # bounce off the borders
                low, high = shape["r"] + 1, image_size - shape["r"] - 1
                if not low <= shape["pos"][axis] <= high:
                    shape["vel"][axis] = -shape["vel"][axis]
                    shape["pos"][axis] = min(max(shape["pos"][axis], low), high)
    return frames, truth


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
