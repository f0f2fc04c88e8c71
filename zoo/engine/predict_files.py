"""Batch inference on image files into an output folder: sharded over ``torchrun`` ranks, resumable.

    out/detections.json   {"model", "weights", "threshold", "top_k", "input_size", "images": [a record per image],
                           "failed": [{"source", "error"} per file that could not be read]}; each record holds
                           ``source_stat`` (the input's size and mtime when it was read)
    out/<stem>.jpg        annotated copies (unless ``draw=False``), names unique within the run
    out/.zoo-parts/       while a run is in progress: settings.json and rank<R>.jsonl, one line per finished image
                          (each rank appends to its own file after every batch)
    out/.zoo-lock         held by the run writing to ``out`` (a second run into the same folder is refused)

Every rank predicts a contiguous shard of whole batches of the images not done yet
(:func:`zoo.engine.distributed.shard_range`); at the end rank 0 merges the parts and any earlier
detections.json into detections.json in input order, the file a single process writes, and deletes the parts.
A rerun with the same ``out`` and the same settings (after an interruption, or with more images) skips every image
whose record and annotated image are already there and whose file has the size and mtime recorded (a changed file,
or one that could not be read, is done again). Results of other settings are moved aside to
``out/earlier-run-<N>/`` and the run starts afresh. Several machines need an ``out`` folder that all of them see.
Nothing is ever written over an input: annotated images are refused in a folder that holds inputs.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from zoo.engine import distributed

__all__ = ["predict_files", "output_names", "PARTS_DIR", "LOCK_FILE"]

PARTS_DIR = ".zoo-parts"
LOCK_FILE = ".zoo-lock"
EARLIER_RUN = "earlier-run-"

# (source path, annotated file name or None, (size, mtime_ns) of the input or None)
Key = tuple[str, "str | None", "tuple[int, int] | None"]


def output_names(paths: Sequence[str]) -> list[str]:
    """Unique annotated-image file names: the input's stem, numbered (``_1``, ``_2``, ...) when the name is taken by
    an earlier input, whether by its stem or by its own numbering (``a.png``, ``a.jpg``, ``a_1.png`` give ``a.jpg``,
    ``a_1.jpg``, ``a_1_1.jpg``); compared without case, for case-insensitive file systems."""
    names: list[str] = []
    used: set[str] = set()
    for path in paths:
        stem = Path(path).stem
        name, count = f"{stem}.jpg", 0
        while name.casefold() in used:
            count += 1
            name = f"{stem}_{count}.jpg"
        used.add(name.casefold())
        names.append(name)
    return names


def _stat(path: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of an input, None when it cannot be read: what tells a changed file from a done one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _key(record: dict[str, Any]) -> Key:
    """(source, annotated file name or None, input stat); a failed file's record names its would-be output."""
    annotated = record.get("annotated")
    stat = record.get("source_stat")
    return (record["source"], Path(annotated).name if annotated else record.get("output"),
            (stat["size"], stat["mtime_ns"]) if stat else None)


def _differences(found: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """What differs between the settings of the results found and this run's (model, weights, threshold, ...)."""
    return [f"{k} {found.get(k)!r} there, {v!r} now" for k, v in settings.items() if found.get(k) != v]


def _read_json(path: Path) -> Any:
    """A JSON file zoo predict wrote (detections.json, settings.json); anything else is refused, never replaced."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a zoo predict result ({exc}): use another --out, or delete it") from exc
    if not isinstance(data, dict) or (path.name == "detections.json" and not isinstance(data.get("images"), list)):
        raise ValueError(f"{path} is not a zoo predict result (no list of images): use another --out, or delete it")
    return data


def _journal(part: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a part. An interrupted write (a kill, a full disk) can leave a partial last line: with
    ``repair`` it is cut off, so that the next record starts on a line of its own (that image is redone)."""
    data = part.read_bytes()
    if repair and data and not data.endswith(b"\n"):
        with open(part, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    records = []
    for line in data.splitlines():
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):  # a partial line: that image is redone
            continue
    return records


def _previous_records(out: Path, repair: bool = False) -> dict[Key, dict[str, Any]]:
    """Records already in ``out``: detections.json of a finished run, then the parts of an unfinished one."""
    records: dict[Key, dict[str, Any]] = {}
    final = out / "detections.json"
    if final.is_file():
        data = _read_json(final)
        records.update((_key(r), r) for r in data["images"])
    parts = out / PARTS_DIR
    if parts.is_dir():
        for part in sorted(parts.glob("rank*.jsonl")):
            records.update((_key(r), r) for r in _journal(part, repair))
    return records


def _check_inputs(out: Path, paths: Sequence[str], draw: bool) -> None:
    """Refuse an ``out`` where zoo would write over an input, or mix its annotated images with the inputs (where
    they could replace an input of the same name and would be read as inputs by the next run)."""
    where = out.resolve()
    inputs = {Path(p).resolve(): p for p in paths}
    if where / "detections.json" in inputs:
        raise ValueError(f"{inputs[where / 'detections.json']} is an input: zoo predict would write detections.json "
                         "over it; choose another --out")
    if draw:
        shared = next((p for resolved, p in inputs.items() if resolved.parent == where), None)
        if shared is not None:
            raise ValueError(f"--out {out} holds input images (e.g. {shared}): annotated images written there could "
                             "replace inputs of the same name and would be read as inputs by the next run; choose "
                             "another --out (e.g. a new folder), or --no-draw to write only detections.json")


def _set_aside(out: Path, settings: dict[str, Any]) -> None:
    """Move the results of a run with other settings (detections.json, the parts, the annotated images they name)
    to ``out/earlier-run-<N>/``, so that this run starts afresh and nothing is lost; an empty journal (a run that
    stopped before its first image) is simply removed."""
    final, parts = out / "detections.json", out / PARTS_DIR
    stale: list[tuple[Path, list[str]]] = []
    if final.is_file():
        found = _read_json(final)
        if _differences(found, settings):
            stale.append((final, _differences(found, settings)))
    if parts.is_dir():
        found = _read_json(parts / "settings.json") if (parts / "settings.json").is_file() else {}
        if _differences(found, settings):
            if not any(_journal(part) for part in parts.glob("rank*.jsonl")):
                shutil.rmtree(parts)  # zoo's own journal with no result in it
            else:
                stale.append((parts, _differences(found, settings)))
    if not stale:
        return
    number = 1
    while (out / f"{EARLIER_RUN}{number}").exists():
        number += 1
    aside = out / f"{EARLIER_RUN}{number}"
    aside.mkdir()
    names = set()
    for path, _ in stale:
        records = _read_json(path)["images"] if path == final else \
            [r for part in path.glob("rank*.jsonl") for r in _journal(part)]
        names.update(Path(r["annotated"]).name for r in records if r.get("annotated"))
    for name in sorted(names):
        if (out / name).is_file():
            os.replace(out / name, aside / name)
    for path, _ in stale:
        if path == final:
            data = _read_json(final)
            for r in data["images"]:
                if r.get("annotated"):
                    r["annotated"] = str(aside / Path(r["annotated"]).name)
            (aside / "detections.json").write_text(json.dumps(data))
            final.unlink()
        else:
            os.replace(path, aside / "parts")
    print(f"{out}: held the results of an earlier run with other settings ({'; '.join(stale[0][1])}): moved them to "
          f"{aside}", file=sys.stderr)


def _plan(out: Path, paths: list[str], keys: list[Key], settings: dict[str, Any], draw: bool) -> list[int]:
    """(rank 0, holding the lock) Indices of the inputs already done; starts the parts folder for this run."""
    _set_aside(out, settings)
    previous = _previous_records(out, repair=True)
    done = [i for i, key in enumerate(keys) if key[2] is not None and key in previous and "error" not in previous[key]
            and (key[1] is None or (out / key[1]).is_file())]
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    (out / PARTS_DIR / "settings.json").write_text(json.dumps(settings))
    return done


def _merge(out: Path, keys: list[Key], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """(rank 0) Every input's record, in input order, into detections.json; the parts are deleted after."""
    previous = _previous_records(out)
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


def _lock(out: Path):
    """(rank 0) The folder's lock, held for the whole run: a second run into ``out`` is refused, not interleaved."""
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{out} is in use by another zoo predict (it holds {out / LOCK_FILE}): wait for that run to "
                         "finish, or use another --out") from None
    return lock


def _broadcast_plan(out: Path, paths: list[str], keys: list[Key], settings: dict[str, Any], draw: bool):
    """Rank 0 locks ``out`` and plans; every rank gets the plan, or raises rank 0's error instead of waiting forever.
    Returns (indices done, the lock on rank 0 or None)."""
    plan: tuple[list[int] | None, str | None] = (None, None)
    lock = None
    if distributed.rank() == 0:
        try:
            _check_inputs(out, paths, draw)
            lock = _lock(out)
            plan = (_plan(out, paths, keys, settings, draw), None)
        except (ValueError, OSError) as exc:
            if lock is not None:
                lock.release()
                lock = None
            plan = (None, str(exc))
    done, error = distributed.broadcast_object(plan)
    if error is not None:
        raise ValueError(error)
    return done, lock


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

    from zoo.data.images import Preprocess
    from zoo.engine.draw import draw as draw_boxes
    from zoo.engine.predict import detect_batches
    from zoo.engine.slicing import predict_sliced

    lead = distributed.rank() == 0
    out = Path(out)
    # one list (and one stat per input) even if a folder changes while the ranks list it
    paths, stats = distributed.broadcast_object((list(paths), [_stat(p) for p in paths] if lead else None))
    names = output_names(paths) if draw else [None] * len(paths)
    keys: list[Key] = list(zip(paths, names, stats))
    settings = json.loads(json.dumps({"model": model_name, "weights": weights, "threshold": score_threshold,
                                      "top_k": top_k, "input_size": input_size,
                                      "slice": {"tile": list(slice), "overlap": overlap} if slice else None}))
    done_list, lock = _broadcast_plan(out, paths, keys, settings, draw)
    try:
        done = set(done_list)
        if done and verbose and lead:
            print(f"{out}: {len(done)} of {len(paths)} images already done, skipping them")
        todo = [i for i in range(len(paths)) if i not in done]
        preprocess = Preprocess.from_model(model, input_size)
        step = batch_size if preprocess.batchable else 1
        mine = [todo[i] for i in distributed.shard_range(len(todo), step)]
        part = out / PARTS_DIR / f"rank{distributed.rank()}.jsonl"
        with open(part, "a") as journal, tqdm(total=len(mine), disable=not (verbose and lead), unit="img",
                                              desc="predict") as bar:
            for start in range(0, len(mine), step):
                # the batch holds the images at the model's input size only (Preprocess.load): a huge file is
                # decoded on its own, and read again at full size for its annotated copy, one at a time
                chunk, resized, sizes = [], [], []
                for i in mine[start:start + step]:
                    stat = {"size": stats[i][0], "mtime_ns": stats[i][1]} if stats[i] else None
                    try:  # one unreadable file must not sink the others: it is recorded with the reason
                        # sliced inference cuts tiles from the full-size image; otherwise the model's size is enough
                        image, size = preprocess.load(paths[i]) if slice is None else (paths[i], None)
                    except (ValueError, TypeError, OSError) as exc:
                        journal.write(json.dumps({"source": paths[i], "output": names[i], "source_stat": stat,
                                                  "error": str(exc)}) + "\n")
                        continue
                    chunk.append(i)
                    resized.append(image)
                    sizes.append(size)
                if not chunk:
                    results = []
                elif slice is None:
                    results = detect_batches(model, [(resized, sizes, [paths[i] for i in chunk])], preprocess,
                                             score_threshold, top_k, device)
                else:  # tile by tile, one file at a time; an unreadable one is recorded like the others
                    results = []
                    for i in list(chunk):
                        try:
                            results.append(predict_sliced(model, paths[i], slice=slice, overlap=overlap,
                                                          score_threshold=score_threshold, top_k=top_k,
                                                          batch_size=batch_size, device=device,
                                                          input_size=input_size))
                        except (ValueError, TypeError, OSError) as exc:
                            stat = {"size": stats[i][0], "mtime_ns": stats[i][1]} if stats[i] else None
                            journal.write(json.dumps({"source": paths[i], "output": names[i], "source_stat": stat,
                                                      "error": str(exc)}) + "\n")
                            chunk.remove(i)
                for i, det in zip(chunk, results):
                    det.source = paths[i]
                    record = det.to_dict()
                    record["source_stat"] = {"size": stats[i][0], "mtime_ns": stats[i][1]} if stats[i] else None
                    if names[i] is not None:
                        draw_boxes(paths[i], det).save(out / names[i], quality=95)
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
    finally:
        if lock is not None:
            lock.release()
    if verbose:
        drawn = sum(name is not None and "error" not in r for name, r in zip(names, records))
        print(f"wrote {out / 'detections.json'}" + (f" and {drawn} annotated images" if drawn else ""))
    return records
