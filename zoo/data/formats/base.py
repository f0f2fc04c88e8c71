"""What every dataset reader produces: one split as an in-memory COCO dataset (the dict pycocotools reads) with
the folder its ``file_name``s are relative to, and the problems found while reading it."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Problem", "DetectionSplit", "DataError", "IMAGE_SUFFIXES"]

#: image file suffixes the YOLO and VOC readers take as images (lower case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file (and 1-based line, for text labels) and what is wrong."""

    file: str
    message: str
    line: int | None = None
    severity: str = "error"   # "error" (training and evaluation refuse the set) or "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.severity}: {self.message}"


class DataError(ValueError):
    """A dataset with errors; ``problems`` lists all of them."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


@dataclass
class DetectionSplit:
    """One split of a dataset, whatever its format on disk.

    ``coco``: ``{"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id", "image_id",
    "category_id", "bbox": [x, y, w, h] pixels, "area", "iscrowd"}], "categories": [{"id", "name"}]}``, with
    ``file_name`` relative to ``image_dir``; ``iscrowd`` 1 marks objects evaluation ignores (COCO crowds, VOC
    ``difficult``). ``problems``: what the reader found wrong (:func:`zoo.data.formats.check` adds the image checks);
    ``origins``: where each annotation was read (file, line), when not from ``source``.
    """

    coco: dict[str, Any]
    image_dir: Path
    format: str
    split: str
    source: str                       # the file or folder it was read from, for messages
    problems: list[Problem] = field(default_factory=list)
    origins: dict[int, tuple[str, int | None]] = field(default_factory=dict)  # annotation id -> (file, line)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in sorted(self.coco["categories"], key=lambda c: c["id"])]

    def short_names(self) -> dict[int, str]:
        """Image id -> its ``file_name`` without the folders all of the split's images share (``images/val/`` of a
        YOLO split), the name writers give the copied image."""
        import posixpath

        names = {im["id"]: Path(im["file_name"]).as_posix() for im in self.coco["images"]}
        parents = {posixpath.dirname(n) for n in names.values()}
        common = posixpath.commonpath(list(parents)) if parents and "" not in parents else ""
        return {i: n[len(common):].lstrip("/") if common else n for i, n in names.items()}

    def to_coco(self) -> Any:
        """A ``pycocotools.coco.COCO`` over :attr:`coco` (what :class:`zoo.data.coco.CocoDetection` and
        :func:`zoo.engine.evaluate.evaluate` take in place of an annotation file)."""
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.coco
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints
            coco.createIndex()
        return coco
