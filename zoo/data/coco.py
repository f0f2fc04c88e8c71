"""COCO-format detection datasets through pycocotools, with category ids mapped to contiguous labels."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from zoo.data.transforms import to_model_target

__all__ = ["CocoDetection"]


class CocoDetection(torch.utils.data.Dataset):
    """Images + annotations of a COCO-format json.

    ``dataset[i]`` -> ``(image, target)``: ``image`` after ``transforms`` (a uint8 ``tv_tensors.Image`` when
    ``transforms`` is None), ``target`` = ``{"boxes": [n, 4] normalised cxcywh, "labels": [n] contiguous 0..C-1,
    "image_id": int, "orig_size": [h, w]}``. Crowd and zero-area annotations are skipped.
    ``label_to_category`` / ``category_to_label`` map labels to the json's category ids and back;
    ``class_names`` lists the category names by label. ``ann_file`` may also be a ``pycocotools`` ``COCO`` object
    (any format read by :mod:`zoo.data.formats`: ``CocoDetection(split.image_dir, split.to_coco())``).
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike | Any,
                 transforms: Callable | None = None):
        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        if isinstance(ann_file, (str, os.PathLike)):
            ann_file = Path(ann_file)
            if not ann_file.is_file():
                raise FileNotFoundError(f"annotation file {ann_file} not found")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} not found")
        if isinstance(ann_file, Path):
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(ann_file))
        else:
            self.coco, ann_file = ann_file, self.image_dir
        self.ann_file = ann_file
        self.ids = sorted(self.coco.imgs)
        cats = sorted(self.coco.cats)
        if not cats:
            raise ValueError(f"{ann_file} defines no categories")
        self.label_to_category = {i: c for i, c in enumerate(cats)}
        self.category_to_label = {c: i for i, c in self.label_to_category.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in cats]
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.label_to_category)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """Image (uint8 RGB) and raw target (xyxy pixel ``BoundingBoxes``) before any transform."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as img:
            pixels = np.array(img.convert("RGB"), dtype=np.uint8)
        image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())
        h, w = image.shape[-2:]
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, bw, bh = ann["bbox"]
            if ann.get("iscrowd", 0) or bw <= 0 or bh <= 0:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.category_to_label[ann["category_id"]])
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes_t, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image_id,
            "orig_size": torch.tensor([h, w]),
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.load(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, to_model_target(target)
