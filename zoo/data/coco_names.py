"""COCO 2017 detection categories: the 80 contiguous class names and the original 1..90 id space.

Models trained with contiguous labels (RT-DETR: 80 classes) predict index ``i`` for ``COCO_CATEGORY_IDS[i]``;
models trained on raw ids (DETR: 91 classes) predict the COCO id itself, so index ``i`` is ``COCO91_NAMES[i]``
("N/A" for the 11 ids COCO never used, and for 0).
"""
from __future__ import annotations

from typing import Any

__all__ = ["COCO_CATEGORIES", "COCO_CATEGORY_IDS", "COCO80_NAMES", "COCO91_NAMES", "coco_label_names",
           "label_names_for"]

#: (COCO category id, name) for the 80 categories of COCO 2017 detection, in id order.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)

#: contiguous label ``i`` -> COCO category id
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(cat_id for cat_id, _ in COCO_CATEGORIES)

#: contiguous label ``i`` -> name (80 entries)
COCO80_NAMES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)

#: COCO category id -> name (91 entries, index = id; unused ids and 0 are "N/A")
COCO91_NAMES: tuple[str, ...] = tuple(dict(COCO_CATEGORIES).get(i, "N/A") for i in range(91))


def coco_label_names(num_classes: int) -> tuple[str, ...] | None:
    """COCO names for an 80-class (contiguous) or 91-class (raw id) model; None for any other class count."""
    return {80: COCO80_NAMES, 91: COCO91_NAMES}.get(num_classes)


def label_names_for(model: Any) -> list[str]:
    """A model's class names: ``pretrained_cfg["label_names"]`` when set, else COCO names for 80/91-class models,
    else ``class_{i}``."""
    num_classes = int(model.num_classes)
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names") or coco_label_names(num_classes)
    names = list(names or [])
    return names + [f"class_{i}" for i in range(len(names), num_classes)]
