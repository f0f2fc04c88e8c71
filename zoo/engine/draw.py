"""``zoo.draw``: boxes, labels and scores drawn onto an image, one colour per class."""
from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

from zoo.data.images import ImageInput, load_rgb_image
from zoo.engine.predict import Detections
from zoo.engine.validate import score_threshold as check_score_threshold

__all__ = ["draw", "class_color"]


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, well-spread colour for class ``label`` (golden-ratio steps around the hue circle)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw(image: ImageInput, detections: Detections, score_threshold: float | None = None,
         line_width: int | None = None, font_size: int | None = None) -> Image.Image:
    """Return a copy of ``image`` (any input :func:`zoo.engine.predict.load_image` accepts) as an RGB PIL image
    with each detection's box and "label score" caption (tracked detections: "#id label score", one colour per
    id). ``score_threshold`` hides lower-scored detections; line width and font size default to values scaled with
    the image size.
    """
    if not isinstance(detections, Detections):
        raise TypeError(f"detections must be a zoo Detections object (from model.predict), "
                        f"got {type(detections).__name__}")
    if score_threshold is not None:
        score_threshold = check_score_threshold(score_threshold)
    canvas = load_rgb_image(image)  # a new image: the caller's is never drawn on
    height, width = canvas.height, canvas.width
    if (height, width) != tuple(detections.image_size):
        raise ValueError(f"the detections were made on an image of {detections.image_size[0]}x"
                         f"{detections.image_size[1]} pixels but this image is {height}x{width}; "
                         "draw them on the image that was passed to predict")
    painter = ImageDraw.Draw(canvas)
    line_width = line_width or max(1, round(max(height, width) / 320))
    font = ImageFont.load_default(size=font_size or max(10, round(max(height, width) / 50)))
    track_ids = detections.track_ids.tolist() if detections.track_ids is not None else [-1] * len(detections)
    rows = sorted(zip(detections.scores.tolist(), detections.boxes.tolist(), detections.labels.tolist(),
                      detections.label_names, track_ids), key=lambda row: row[0])
    for score, box, label, name, track_id in rows:  # lowest score first, so the best detections are drawn on top
        if score_threshold is not None and score < score_threshold:
            continue
        color = class_color(track_id if track_id >= 0 else label)  # tracked: one colour per object
        painter.rectangle(box, outline=color, width=line_width)
        caption = (f"#{track_id} " if track_id >= 0 else "") + f"{name} {score:.2f}"
        left, top, right, bottom = painter.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left + 2 * line_width, bottom - top + 2 * line_width
        x = min(max(box[0], 0), max(width - text_w, 0))
        y = box[1] - text_h if box[1] - text_h >= 0 else box[1]  # above the box, inside it at the top edge
        painter.rectangle((x, y, x + text_w, y + text_h), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        painter.text((x + line_width - left, y + line_width - top), caption, font=font,
                     fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
    return canvas
