"""Images in, model inputs out: read any image input as RGB uint8 and preprocess it as a model's
``pretrained_cfg`` says. This is the one resize contract of zoo: prediction, evaluation and training all size
images with :class:`Preprocess` (the training transforms call :meth:`Preprocess.output_size`).

Every input becomes an RGB ``uint8`` tensor ``[3, H, W]`` first (:func:`load_image`), so files, PIL images,
arrays and tensors go through exactly the same resize and normalisation.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

__all__ = ["ImageInput", "load_image", "load_rgb_image", "Preprocess"]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

_UINT16_TO_UINT8 = 257.0  # 65535 / 255


def _check_size(height: int, width: int, name: str) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"{name}: image has zero size ({height}x{width} pixels); pass a non-empty image")


def _pil_to_tensor(img: Image.Image, name: str) -> torch.Tensor:
    """Any PIL mode -> RGB uint8 ``[3, H, W]`` (see :func:`_pil_to_rgb`)."""
    img = _pil_to_rgb(img, name)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _pil_to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Any PIL mode -> an RGB PIL image: 16/32-bit integer and float modes are rescaled, not clipped;
    transparent images are composited on white; palette, grayscale, CMYK and the rest go through ``convert``."""
    _check_size(img.height, img.width, name)
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grayscale (PNG, TIFF); "I" holds 16-bit data
        gray = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / _UINT16_TO_UINT8
        img = Image.fromarray(np.round(gray).astype(np.uint8), "L")
    elif img.mode == "F":  # PIL's float mode is on the 0..255 scale (as convert("F") of an "L" image gives)
        img = Image.fromarray(np.round(np.clip(np.asarray(img), 0, 255)).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")  # convert would copy an RGB image


_EXIF_ORIENTATION = 0x0112
#: a JPEG at least this many times the model's input size (both sides) is decoded at reduced scale for prediction
DRAFT_FACTOR = 2


def _checked_path(path: str | os.PathLike) -> str:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"image not found: {name}")
    if os.path.isdir(name):
        raise ValueError(f"{name} is a directory, not an image file")
    return name


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Image.Image]:
    """``Image.open(path)``; what PIL raises while the image is opened or decoded in the block becomes a clear
    ValueError naming the file."""
    try:
        with Image.open(path) as img:
            yield img
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: {exc}. If you trust this file, raise PIL.Image.MAX_IMAGE_PIXELS") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # SyntaxError: some PIL plugins on bad headers
        raise ValueError(f"cannot read image {path}: the file is corrupt or not an image ({exc})") from exc


def _read_file(path: str | os.PathLike, exif_transpose: bool) -> torch.Tensor:
    name = _checked_path(path)
    with _opened(name) as img:
        img.load()  # decode now, so that truncated files fail here
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        return _pil_to_tensor(img, name)


def load_rgb_image(image: ImageInput, name: str | None = None) -> Image.Image:
    """An image input as a new RGB PIL image, the pixels of :func:`load_image` (EXIF orientation applied). A file is
    decoded straight into it, without the tensor copies :func:`load_image` makes (``zoo.draw`` on a 12000x12000
    file holds one decoded copy, not four)."""
    if not isinstance(image, (str, os.PathLike)):
        return Image.fromarray(load_image(image, name).permute(1, 2, 0).numpy(), "RGB")
    path = _checked_path(image)
    with _opened(path) as img:
        img.load()
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        return _pil_to_rgb(ImageOps.exif_transpose(img) if orientation != 1 else img, path)


def _array_to_tensor(array: np.ndarray | torch.Tensor, name: str, channels_last: bool) -> torch.Tensor:
    """HWC (numpy) or CHW (tensor) array of uint8, uint16 or float in [0, 1] -> RGB uint8 ``[3, H, W]``."""
    kind = "numpy array" if channels_last else "tensor"
    layout = "[H, W, C]" if channels_last else "[C, H, W]"
    described = f"{name} ({kind} of shape {list(array.shape)}, dtype {array.dtype})"
    unsupported = f"{described}: unsupported dtype; pass uint8 (0..255), uint16 (16-bit) or float in [0, 1]"
    if isinstance(array, np.ndarray):
        if array.dtype.kind not in "uif":  # bool, object, complex, strings: nothing torch or we can read
            raise TypeError(unsupported)
        contiguous = np.ascontiguousarray(array)
        t = torch.from_numpy(contiguous if contiguous.flags.writeable else contiguous.copy())
    else:
        t = array.detach().cpu()
    if t.ndim == 2:
        t = t.unsqueeze(-1 if channels_last else 0)
    if t.ndim != 3 or t.shape[-1 if channels_last else 0] not in (1, 3, 4):
        hint = " (tensors are channels-first: use .permute(2, 0, 1) for [H, W, C] data)" if (
            not channels_last and t.ndim == 3 and t.shape[-1] in (1, 3, 4)) else ""
        raise ValueError(f"{described}: expected {layout} with C in (1, 3, 4), or [H, W] grayscale{hint}")
    if channels_last:
        t = t.permute(2, 0, 1)
    _check_size(t.shape[1], t.shape[2], name)
    if t.dtype == torch.uint8:
        pass
    elif t.dtype == torch.uint16:  # 16-bit images
        t = (t.to(torch.float64) / _UINT16_TO_UINT8).round().to(torch.uint8)
    elif t.is_floating_point():
        t = t.to(torch.float32)
        if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
            raise ValueError(f"{described}: float images must hold values in [0, 1]; "
                             "pass uint8 data (0..255) or divide by 255")
        t = (t * 255).round().to(torch.uint8)
    else:
        raise TypeError(unsupported)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:  # RGBA: composite on white, as for files
        alpha = t[3:].to(torch.float32) / 255
        t = (t[:3].to(torch.float32) * alpha + 255 * (1 - alpha)).round().to(torch.uint8)
    return t.contiguous()


def load_image(image: ImageInput, name: str | None = None, exif_transpose: bool = True) -> torch.Tensor:
    """Convert one image input to an RGB ``uint8`` tensor ``[3, H, W]``.

    Accepts a file path, a PIL image (any mode: grayscale, RGBA, palette, 16-bit, ...), a numpy array
    ``[H, W, C]`` / ``[H, W]`` (RGB order) or a tensor ``[C, H, W]`` / ``[H, W]``, of dtype uint8, uint16 or float
    in [0, 1]. ``name`` is used in error messages (defaults to the path, or "image"). ``exif_transpose``
    applies the EXIF orientation of files, as photo viewers do (COCO evaluation turns it off: annotations are
    in stored pixel order).
    """
    if isinstance(image, (str, os.PathLike)):
        return _read_file(image, exif_transpose)
    name = name or "image"
    if isinstance(image, Image.Image):
        return _pil_to_tensor(ImageOps.exif_transpose(image) if exif_transpose else image, name)
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image, name, channels_last=True)
    if isinstance(image, torch.Tensor):
        return _array_to_tensor(image, name, channels_last=False)
    raise TypeError(f"{name}: unsupported image type {type(image).__name__}; pass a file path, a PIL image, "
                    "a numpy array [H, W, C] or a tensor [C, H, W]")


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------

_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


def _shortest_edge_size(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """DETR's rule: scale the shorter side to ``shortest`` unless the longer side would exceed ``longest``."""
    short, long = min(height, width), max(height, width)
    if long / short * shortest > longest:
        shortest = max(1, int(round(longest * short / long)))
    if short == shortest:
        return height, width
    if width < height:
        return max(1, int(shortest * height / width)), shortest
    return shortest, max(1, int(shortest * width / height))


def _positive_size(value: Any, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, Sequence) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass
class Preprocess:
    """Resize, pad and normalise images as a model expects (built from ``model.pretrained_cfg``).

    ``resize_mode="stretch"`` (RT-DETR): resize to ``size`` = (height, width), ignoring the aspect ratio.
    ``resize_mode="shortest_edge"`` (DETR): ``size`` = (shortest side, longest side limit), aspect kept.
    Batches are zero-padded (after normalisation) to a common size, rounded up to ``size_divisor``; models
    whose ``forward`` takes ``pixel_mask`` get it (1 on valid pixels), others see one image per batch
    when sizes differ. Values are scaled to [0, 1], then ``(x - mean) / std`` when mean/std are set.
    """

    resize_mode: str
    size: tuple[int, int]
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size_divisor: int = 1
    use_mask: bool = False

    @classmethod
    def from_model(cls, model: torch.nn.Module, input_size: int | tuple[int, int] | None = None) -> "Preprocess":
        """Read ``model.pretrained_cfg``; ``input_size`` overrides the size (the shortest side for
        shortest_edge models, with the longest-side limit scaled by the same factor). A size the model cannot run
        on is refused here (``model.check_input_size``)."""
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        mode = cfg.get("resize_mode", "stretch")
        cfg_hw = tuple(cfg.get("input_size", (3, 640, 640))[-2:])
        if mode == "stretch":
            size = _positive_size(input_size if input_size is not None else cfg_hw, "input_size")
        elif mode == "shortest_edge":
            shortest = int(cfg.get("shortest_edge", min(cfg_hw)))
            longest = int(cfg.get("longest_edge", cfg.get("max_size", max(cfg_hw))))
            if input_size is not None:
                new = _positive_size(input_size, "input_size")
                if new[0] != new[1]:
                    raise ValueError(f"input_size for a shortest_edge model is one int (the shortest side), "
                                     f"got {input_size!r}")
                shortest, longest = new[0], max(new[0], int(round(longest * new[0] / shortest)))
            size = (shortest, longest)
        else:
            raise ValueError(f"unknown resize_mode {mode!r} in pretrained_cfg (expected 'stretch' or 'shortest_edge')")
        interpolation = cfg.get("interpolation", "bilinear")
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"unknown interpolation {interpolation!r} (expected one of {sorted(_INTERPOLATION)})")
        if mode == "stretch" and hasattr(model, "check_input_size"):
            model.check_input_size(*size)  # a clear error now rather than a raw one inside the model
        use_mask = "pixel_mask" in inspect.signature(model.forward).parameters
        return cls(mode, size, interpolation, cfg.get("mean"), cfg.get("std"),
                   int(getattr(model, "size_divisor", 1) or 1), use_mask)

    def pretrained_cfg(self) -> dict[str, Any]:
        """The ``pretrained_cfg`` keys that make :meth:`from_model` give this preprocessing back."""
        if self.resize_mode == "stretch":
            return {"resize_mode": "stretch", "input_size": (3, *self.size)}
        return {"resize_mode": "shortest_edge", "shortest_edge": self.size[0], "longest_edge": self.size[1]}

    @property
    def batchable(self) -> bool:
        """Whether images of different sizes can share a batch."""
        return self.resize_mode == "stretch" or self.use_mask

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_mode == "stretch":
            return self.size
        return _shortest_edge_size(height, width, *self.size)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[3, H, W]`` -> uint8 ``[3, h, w]`` with PIL's (antialiased) resize, which the official
        evaluation code uses: the pixels fed to the model are bit-identical to theirs."""
        height, width = self.output_size(*image.shape[-2:])
        if tuple(image.shape[-2:]) == (height, width):
            return image
        pil = Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
        resized = pil.resize((width, height), _INTERPOLATION[self.interpolation])
        return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def load(self, image: ImageInput, name: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Read one image input and resize it as the model takes it: (uint8 ``[3, h, w]``, its original
        (height, width)), the pixels :meth:`resize` of :func:`load_image` gives.

        Memory stays near one decoded copy of the file: a file is resized as a PIL image, never copied to a tensor
        at full size, and a JPEG at least :data:`DRAFT_FACTOR` times the model's input on both sides is decoded
        at 1/2, 1/4 or 1/8 scale by its DCT (PIL's ``draft``), to no less than that factor times the input, so a
        12000x12000 photo is never held at full size (its pixels then differ from a full decode by the rounding of
        the two downscalings; files of ordinary sizes are read exactly as :func:`load_image` reads them)."""
        if not isinstance(image, (str, os.PathLike)):
            pixels = load_image(image, name)
            return self.resize(pixels), (int(pixels.shape[1]), int(pixels.shape[2]))
        path = _checked_path(image)
        with _opened(path) as img:
            stored = (img.height, img.width)
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            turned = orientation in (5, 6, 7, 8)
            height, width = stored[::-1] if turned else stored
            _check_size(height, width, path)
            target = self.output_size(height, width)
            if img.format == "JPEG" and height >= DRAFT_FACTOR * target[0] and width >= DRAFT_FACTOR * target[1]:
                wanted = (DRAFT_FACTOR * target[1], DRAFT_FACTOR * target[0])  # PIL sizes are (width, height)
                img.draft("RGB", wanted[::-1] if turned else wanted)
            img.load()
            img = _pil_to_rgb(ImageOps.exif_transpose(img) if orientation != 1 else img, path)  # no copy
            if (img.height, img.width) != target:
                img = img.resize(target[::-1], _INTERPOLATION[self.interpolation])
            return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous(), (height, width)

    def collate(self, images: Sequence[torch.Tensor], device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Resized uint8 images -> (normalised float ``[B, 3, H, W]`` on ``device``, valid-pixel mask ``[B, H, W]``)."""
        d = self.size_divisor
        height = math.ceil(max(im.shape[1] for im in images) / d) * d
        width = math.ceil(max(im.shape[2] for im in images) / d) * d
        batch = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)
        mask = torch.zeros(len(images), height, width, dtype=torch.long)
        for i, im in enumerate(images):
            batch[i, :, :im.shape[1], :im.shape[2]] = im
            mask[i, :im.shape[1], :im.shape[2]] = 1
        batch, mask = batch.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        x = batch.float().div_(255)
        if self.mean is not None and self.std is not None:
            x = TF.normalize(x, list(self.mean), list(self.std))
        return x * mask[:, None], mask


