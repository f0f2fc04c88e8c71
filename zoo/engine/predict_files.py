"""Batch inference on image files into an output folder: sharded over ``torchrun`` ranks, resumable.

    out/detections.json   {"model", "weights", "threshold", "top_k", "input_size", "images": [a record per image],
                           "failed": [{"source", "error"} per file that could not be read]}
    out/<stem>.jpg        annotated copies (unless ``draw=False``)
    out/.zoo-parts/       while a run is in progress: settings.json and rank<R>.jsonl, one line per finished image
                          (each rank appends to its own file after every batch)

Every rank predicts a contiguous shard of whole batches of the images not done yet
(:func:`zoo.engine.distributed.shard_range`); at the end rank 0 merges the parts and any earlier
detections.json into detections.json in input order, the file a single process writes, and deletes the parts.
A rerun with the same ``out`` (after an interruption, or with more images) skips every image whose record and
annotated image are already there (a file that could not be read is tried again). Several machines need an ``out``
folder that all of them see.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from zoo.engine import distributed

__all__ = ["predict_files", "output_names", "PARTS_DIR"]

PARTS_DIR = ".zoo-parts"

Key = tuple[str, "str | None"]  # (source path, annotated file name or None)


def output_names(paths: Sequence[str]) -> list[str]:
    """Unique annotated-image file names: the input's stem, numbered when two inputs share it."""
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}.jpg" if count == 0 else f"{stem}_{count}.jpg")
    return names


def _key(record: dict[str, Any]) -> Key:
    """(source, annotated file name or None); a failed file's journal record names its would-be output."""
    annotated = record.get("annotated")
    return record["source"], Path(annotated).name if annotated else record.get("output")


def _check_settings(found: dict[str, Any], settings: dict[str, Any], where: Path) -> None:
    """Refuse to mix results of runs with other settings (model, weights, threshold, top_k, input size)."""
    differences = [f"{k} {found.get(k)!r} there, {v!r} now" for k, v in settings.items() if found.get(k) != v]
    if differences:
        raise ValueError(f"{where} holds results of another run ({'; '.join(differences)}): use another --out, "
                         "or delete it to start over")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a zoo predict result ({exc}): use another --out, or delete it") from exc


def _previous_records(out: Path, settings: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """Records already in ``out``: detections.json of a finished run, then the parts of an unfinished one."""
    records: dict[Key, dict[str, Any]] = {}
    final = out / "detections.json"
    if final.is_file():
        data = _read_json(final)
        _check_settings(data, settings, final)
        records.update((_key(r), r) for r in data["images"])
    parts = out / PARTS_DIR
    if parts.is_dir():
        _check_settings(_read_json(parts / "settings.json"), settings, parts)
        for part in sorted(parts.glob("rank*.jsonl")):
            for line in part.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of an interrupted write: that image is redone
                    continue
                records[_key(record)] = record
    return records


def _plan(out: Path, paths: list[str], keys: list[Key], settings: dict[str, Any]) -> list[int]:
    """(rank 0) Indices of the inputs already done; starts the parts folder for this run."""
    previous = _previous_records(out, settings)
    done = [i for i, key in enumerate(keys) if key in previous and "error" not in previous[key]
            and (key[1] is None or (out / key[1]).is_file())]
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    (out / PARTS_DIR / "settings.json").write_text(json.dumps(settings))
    return done


def _merge(out: Path, keys: list[Key], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """(rank 0) Every input's record, in input order, into detections.json; the parts are deleted after."""
    previous = _previous_records(out, settings)
    missing = [key[0] for key in keys if key not in previous]
    if missing:
        raise ValueError(f"no result for {len(missing)} images (e.g. {missing[0]}) in {out}: with several machines, "
                         "--out must be a folder that every machine sees")
    records = [dict(previous[key], annotated=str(out / key[1])) if key[1] and "error" not in previous[key]
               else previous[key] for key in keys]
    images = [r for r in records if "error" not in r]
    failed = [{"source": r["source"], "error": r["error"]} for r in records if "error" in r]
    tmp = out / "detections.json.tmp"
    with open(tmp, "w") as f:
        json.dump({**settings, "images": images, "failed": failed}, f)
    os.replace(tmp, out / "detections.json")
    shutil.rmtree(out / PARTS_DIR)
    return records


def count_summary(counts: Mapping[str, int]) -> str:
    """``"2 circle, 1 square"``: detections per label, most frequent first."""
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _summary(path: str, det: Any) -> str:
    summary = count_summary(Counter(det.label_names))
    return f"{path}: {len(det)} detections" + (f" ({summary})" if summary else "")


def _broadcast_plan(out: Path, paths: list[str], keys: list[Key], settings: dict[str, Any]) -> list[int]:
    """Rank 0 plans; every rank gets the plan, or raises rank 0's error instead of waiting forever."""
    plan: tuple[list[int] | None, str | None] = (None, None)
    if distributed.rank() == 0:
        try:
            plan = (_plan(out, paths, keys, settings), None)
        except (ValueError, OSError) as exc:
            plan = (None, str(exc))
    done, error = distributed.broadcast_object(plan)
    if error is not None:
        raise ValueError(error)
    return done


@torch.no_grad()
def predict_files(model: torch.nn.Module, paths: Sequence[str], out: str | os.PathLike, model_name: str,
                  weights: str | None = None, score_threshold: float = 0.5, top_k: int = 100, batch_size: int = 8,
                  device: str | torch.device | None = None, input_size: int | None = None, draw: bool = True,
                  verbose: bool = True, slice: tuple[int, int] | None = None, overlap: float = 0.2
                  ) -> list[dict[str, Any]] | None:
    """Detect objects in image files and write detections.json (and annotated images) to ``out``, in a process
    group sharded over the ranks, resuming what ``out`` already holds (see the module docstring).

    Returns the records of every input, in input order, on rank 0 (a file that could not be read gets
    ``{"source", "error"}``: the others are still processed); None on the other ranks. ``verbose`` prints a line per
    image (each rank for its own), how many images were already done and what was written (rank 0). ``slice`` and
    ``overlap`` detect each image tile by tile (:func:`zoo.engine.slicing.predict_sliced`).
    """
    from tqdm.auto import tqdm

    from zoo.data.images import Preprocess, load_image
    from zoo.engine.draw import draw as draw_boxes
    from zoo.engine.predict import predict
    from zoo.engine.slicing import predict_sliced

    lead = distributed.rank() == 0
    out = Path(out)
    paths = distributed.broadcast_object(list(paths))  # one list even if a folder changes while ranks list it
    names = output_names(paths) if draw else [None] * len(paths)
    keys = list(zip(paths, names))
    settings = json.loads(json.dumps({"model": model_name, "weights": weights, "threshold": score_threshold,
                                      "top_k": top_k, "input_size": input_size,
                                      "slice": {"tile": list(slice), "overlap": overlap} if slice else None}))
    done = set(_broadcast_plan(out, paths, keys, settings))
    if done and verbose and lead:
        print(f"{out}: {len(done)} of {len(paths)} images already done, skipping them")
    todo = [i for i in range(len(paths)) if i not in done]
    step = batch_size if Preprocess.from_model(model, input_size).batchable else 1
    mine = [todo[i] for i in distributed.shard_range(len(todo), step)]
    part = out / PARTS_DIR / f"rank{distributed.rank()}.jsonl"
    with open(part, "a") as journal, tqdm(total=len(mine), disable=not (verbose and lead), unit="img",
                                          desc="predict") as bar:
        for start in range(0, len(mine), step):
            chunk, images = [], []
            for i in mine[start:start + step]:
                try:  # one unreadable file must not sink the others: it is recorded with the reason
                    images.append(load_image(paths[i]))
                    chunk.append(i)
                except (ValueError, TypeError, OSError) as exc:
                    journal.write(json.dumps({"source": paths[i], "output": names[i], "error": str(exc)}) + "\n")
            detect = predict if slice is None else functools.partial(predict_sliced, slice=slice, overlap=overlap)
            results = detect(model, images, score_threshold=score_threshold, top_k=top_k, batch_size=step,
                             device=device, input_size=input_size) if images else []
            for i, image, det in zip(chunk, images, results):
                det.source = paths[i]
                record = det.to_dict()
                if names[i] is not None:
                    draw_boxes(image, det).save(out / names[i], quality=95)
                    record["annotated"] = str(out / names[i])
                journal.write(json.dumps(record) + "\n")
                if verbose:
                    bar.write(_summary(paths[i], det))
            journal.flush()
            bar.update(len(chunk))
    distributed.barrier()
    if not lead:
        return None
    records = _merge(out, keys, settings)
    if verbose:
        drawn = sum(name is not None and "error" not in r for name, r in zip(names, records))
        print(f"wrote {out / 'detections.json'}" + (f" and {drawn} annotated images" if drawn else ""))
    return records
