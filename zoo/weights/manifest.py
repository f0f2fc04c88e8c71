"""The weight manifest: one validated record per ``architecture.tag`` (where the file is, how to trust it, what it is).

The manifest ships inside the package as ``zoo/weights_manifest.json`` (package data, so editable and regular
installs read the same file); ``weights_manifest.json`` at the repository root is a link to it for people browsing
the repository. ``ZOO_WEIGHTS_MANIFEST=/path/to/manifest.json`` replaces it (a private registry, or tests).
The schema is :data:`ENTRY_FIELDS` below and is described in docs/weights.md.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = ["Manifest", "WeightsEntry", "HubFile", "PackageFile", "ManifestError", "load_manifest", "validate_manifest",
           "manifest_path", "OWN_LAYOUTS", "PROVENANCES", "LABEL_SETS", "LABEL_SET_SIZES"]

SCHEMA_VERSION = 1
#: checkpoint layouts in a model's own state dict keys, which need no converter: zoo's files and timm's (timm
#: classifiers and backbones). Every other ``format`` is a layout a family declares on its class
#: (``Detector.checkpoint_layouts``): the schema checks its spelling here, without importing the families (or
#: torch); loading checks it against the family before reading the file (zoo.weights.load), as `zoo weights
#: check` does for every entry.
OWN_LAYOUTS = ("zoo", "timm")
_LAYOUT_NAME = re.compile(r"^[a-z0-9]+(?:[-_.][a-z0-9]+)*$")
#: where a metric comes from
PROVENANCES = ("reported upstream", "measured by zoo")


def _imagenet_1k() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_descriptions())


def _objects365() -> tuple[str, ...]:
    from zoo.data.objects365_names import OBJECTS365_366_NAMES

    return OBJECTS365_366_NAMES


def _coco(num_classes: int) -> Callable[[], tuple[str, ...]]:
    def names() -> tuple[str, ...]:
        from zoo.data.coco_names import coco_label_names

        return tuple(coco_label_names(num_classes))
    return names


#: label sets an entry may name instead of listing its labels
LABEL_SETS: dict[str, Callable[[], tuple[str, ...]]] = {
    "coco80": _coco(80), "coco91": _coco(91), "imagenet-1k": _imagenet_1k,
    "objects365": _objects365,  # index = Objects365 category id, 0 unused (D-FINE's num_classes 366)
}
#: their sizes, so that validating a manifest reads no names (imagenet-1k's come from timm, which imports torch)
LABEL_SET_SIZES = {"coco80": 80, "coco91": 91, "imagenet-1k": 1000, "objects365": 366}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# field -> (required, check); each check returns an error text or None
_Check = Callable[[Any], "str | None"]


def _is(kind: type | tuple[type, ...], what: str) -> _Check:
    return lambda v: None if isinstance(v, kind) and not isinstance(v, bool) else f"must be {what}, got {v!r}"


def _is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _optional(check: _Check) -> _Check:
    return lambda v: None if v is None else check(v)


def _one_of(options: Iterable[str]) -> _Check:
    options = tuple(options)
    return lambda v: None if v in options else f"must be one of {', '.join(options)}; got {v!r}"


def _layout_name(v: Any) -> str | None:
    if isinstance(v, str) and _LAYOUT_NAME.match(v):
        return None
    return (f"must be {' or '.join(map(repr, OWN_LAYOUTS))} or the name of a layout a model family declares "
            f"(lowercase letters, digits and '-', e.g. 'official-<family>'), got {v!r}")


def _positive_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v > 0 else f"must be a positive int, got {v!r}"


def _sha256(v: Any) -> str | None:
    return None if isinstance(v, str) and _SHA256.match(v) else f"must be 64 lowercase hex digits, got {v!r}"


def _repo_id(v: Any) -> str | None:
    return None if isinstance(v, str) and _REPO_ID.match(v) else f"must be a Hub repo id 'org/name', got {v!r}"


def _package_path(v: Any) -> str | None:
    ok = (isinstance(v, str) and v and not v.startswith("/") and "\\" not in v
          and all(part not in ("", ".", "..") for part in v.split("/")))
    return None if ok else f"must be a relative path inside the zoo package ('assets/x/model.safetensors'), got {v!r}"


def _label_names(v: Any) -> str | None:
    if isinstance(v, str):
        return None if v in LABEL_SETS else f"must be a list of names or one of {', '.join(LABEL_SETS)}; got {v!r}"
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return None
    return f"must be a non-empty list of strings or a label set name, got {v!r}"


def _floats(n: int, what: str) -> _Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v)
        return None if ok else f"must be {what}, got {v!r}"
    return check


#: hub: where the file is and how to check it (sha256/size may be null only for third-party files)
HUB_FIELDS: dict[str, tuple[bool, _Check]] = {
    "repo_id": (True, _repo_id),
    "revision": (True, _is(str, "a branch, tag or 40-hex commit")),
    "filename": (True, _is(str, "a file path in the repo")),
    "sha256": (True, _optional(_sha256)),
    "size": (True, _optional(_positive_int)),
}
#: package: a file shipped inside the zoo package (small demo weights), always hashed
PACKAGE_FIELDS: dict[str, tuple[bool, _Check]] = {
    "path": (True, _package_path),
    "sha256": (True, _sha256),
    "size": (True, _positive_int),
}
PREPROCESSING_FIELDS: dict[str, tuple[bool, _Check]] = {
    "input_size": (True, _floats(3, "[3, height, width]")),
    "resize_mode": (True, _one_of(("stretch", "shortest_edge", "crop"))),
    "interpolation": (True, _one_of(("bilinear", "bicubic", "nearest"))),
    "mean": (True, _optional(_floats(3, "3 numbers or null"))),
    "std": (True, _optional(_floats(3, "3 numbers or null"))),
    "crop_pct": (False, _is(float, "a float")),
    "shortest_edge": (False, _positive_int),
    "longest_edge": (False, _positive_int),
}
METRIC_FIELDS: dict[str, tuple[bool, _Check]] = {
    "task": (True, _one_of(("object-detection", "image-classification"))),
    "dataset": (True, _is(str, "a dataset id, e.g. coco-val2017")),
    "metric": (True, _one_of(("box_ap", "box_ap50", "top1", "top5"))),
    "value": (True, _is((int, float), "a number")),
    "provenance": (True, _one_of(PROVENANCES)),
    "source": (True, _is(str, "a URL or document the value comes from")),
}
COMPLEXITY_FIELDS: dict[str, tuple[bool, _Check]] = {
    "params_m": (True, _is((int, float), "millions of parameters")),
    "gflops": (True, _optional(_is((int, float), "GFLOPs for one image at input_size"))),
    "input_size": (True, _floats(2, "[height, width]")),
    "provenance": (True, _one_of(PROVENANCES)),
}
ORIGIN_FIELDS: dict[str, tuple[bool, _Check]] = {
    "paper": (True, _is(str, "a paper URL")),
    "title": (True, _is(str, "the paper title")),
    "repo": (True, _is(str, "the upstream code repository URL")),
    "weights": (False, _is(str, "where the upstream weights were published")),
}
#: one manifest entry; exactly one of ``hub`` and ``package`` says where its file is
ENTRY_FIELDS: dict[str, tuple[bool, Any]] = {
    "hub": (False, HUB_FIELDS),
    "package": (False, PACKAGE_FIELDS),
    "default": (False, _is_bool),
    "format": (True, _layout_name),
    "license": (True, _is(str, "a license id such as apache-2.0")),
    "origin": (True, ORIGIN_FIELDS),
    "dataset": (True, _is(str, "the dataset the weights were trained on")),
    "pretrain_dataset": (False, _is(str, "the dataset of an earlier pre-training stage")),
    "num_classes": (True, _positive_int),
    "label_names": (True, _label_names),
    "preprocessing": (True, PREPROCESSING_FIELDS),
    "metrics": (True, [METRIC_FIELDS]),
    "complexity": (True, COMPLEXITY_FIELDS),
    "model_args": (False, _is(dict, "architecture keyword arguments")),
    "notes": (False, _is(str, "free text")),
}


class ManifestError(ValueError):
    """The manifest does not follow the schema (each problem names the entry and field)."""


def _check_fields(where: str, value: Any, spec: Any, errors: list[str]) -> None:
    if isinstance(spec, list):  # a list of records
        if not isinstance(value, list):
            errors.append(f"{where}: must be a list, got {value!r}")
            return
        for i, item in enumerate(value):
            _check_fields(f"{where}[{i}]", item, spec[0], errors)
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            errors.append(f"{where}: must be an object, got {value!r}")
            return
        for key in value.keys() - spec.keys():
            errors.append(f"{where}: unknown field {key!r} (known: {', '.join(spec)})")
        for key, (required, sub) in spec.items():
            if key in value:
                _check_fields(f"{where}.{key}", value[key], sub, errors)
            elif required:
                errors.append(f"{where}: missing field {key!r}")
    else:
        problem = spec(value)
        if problem:
            errors.append(f"{where}: {problem}")


def validate_manifest(data: Any) -> list[str]:
    """Return every schema problem of a parsed manifest (empty when valid)."""
    if not isinstance(data, dict):
        return [f"manifest must be a JSON object, got {type(data).__name__}"]
    errors = [f"unknown top-level field {k!r}" for k in data.keys() - {"schema_version", "weights"}]
    if data.get("schema_version") != SCHEMA_VERSION:
        errors.append(f"schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    weights = data.get("weights")
    if not isinstance(weights, dict) or not weights:
        return errors + ["'weights' must be a non-empty object keyed by 'architecture.tag'"]
    for name, entry in weights.items():
        if not _NAME.match(name):
            errors.append(f"{name!r}: entry names are 'architecture.tag' (lowercase letters, digits, '_')")
        before = len(errors)
        _check_fields(name, entry, ENTRY_FIELDS, errors)
        if len(errors) > before:
            continue
        if ("hub" in entry) == ("package" in entry):
            errors.append(f"{name}: give exactly one of 'hub' (a file on the Hub) and 'package' (a file in zoo)")
        elif "hub" in entry:
            hub = entry["hub"]
            if (hub["sha256"] is None) != (hub["size"] is None):
                errors.append(f"{name}.hub: give both sha256 and size, or neither")
            if hub["sha256"] is None and entry["format"] == "zoo":
                errors.append(f"{name}.hub: files zoo publishes (format 'zoo') must record sha256 and size")
        labels = entry["label_names"]
        count = LABEL_SET_SIZES[labels] if isinstance(labels, str) else len(labels)
        if count != entry["num_classes"]:
            errors.append(f"{name}: {count} label names for num_classes={entry['num_classes']}")
        if entry["preprocessing"]["input_size"][0] != 3:
            errors.append(f"{name}.preprocessing.input_size: the first dimension (channels) must be 3")
    return errors


@dataclass(frozen=True)
class HubFile:
    """A file on the Hub, pinned by revision and (for files zoo publishes) by sha256 and size."""
    repo_id: str
    revision: str
    filename: str
    sha256: str | None
    size: int | None

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filename}@{self.revision}"


@dataclass(frozen=True)
class PackageFile:
    """A file shipped inside the zoo package (``path`` relative to the ``zoo`` folder), pinned by sha256 and size."""
    path: str
    sha256: str
    size: int

    def local_path(self) -> Path:
        return Path(__file__).resolve().parent.parent.joinpath(*self.path.split("/"))

    def __str__(self) -> str:
        return f"zoo/{self.path} (in the package)"


@dataclass(frozen=True)
class WeightsEntry:
    """One set of pretrained weights (``name`` = ``architecture.tag``); fields as in the manifest schema.

    The file is either on the Hub (``hub``) or inside the package (``package``); ``location`` is whichever it is.
    """
    name: str
    hub: HubFile | None
    format: str
    license: str
    origin: Mapping[str, str]
    dataset: str
    num_classes: int
    label_set: str | None
    preprocessing: Mapping[str, Any]
    metrics: tuple[Mapping[str, Any], ...]
    complexity: Mapping[str, Any]
    pretrain_dataset: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    package: PackageFile | None = None
    default: bool = True
    _labels: tuple[str, ...] | None = None

    @property
    def location(self) -> HubFile | PackageFile:
        return self.hub if self.hub is not None else self.package

    @property
    def sha256(self) -> str | None:
        """The file's recorded sha256 (None: a third-party Hub file zoo has not hashed)."""
        return self.location.sha256

    @property
    def where(self) -> str:
        """Short location: ``org/repo@revision`` or ``zoo/<path in the package>``."""
        return f"{self.hub.repo_id}@{self.hub.revision}" if self.hub else f"zoo/{self.package.path}"

    @property
    def hub_id(self) -> str | None:
        """The Hub repo of the file (None for a file inside the package)."""
        return self.hub.repo_id if self.hub is not None else None

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def label_names(self) -> tuple[str, ...]:
        return self._labels if self._labels is not None else LABEL_SETS[self.label_set]()

    def metric(self, metric: str) -> float | None:
        """The value of ``metric`` (e.g. ``box_ap``), or None when the manifest has none."""
        return next((m["value"] for m in self.metrics if m["metric"] == metric), None)

    def pretrained_cfg(self) -> dict[str, Any]:
        """Preprocessing for these weights in ``model.pretrained_cfg`` form (tuples, like the model defaults)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.preprocessing.items()}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> "WeightsEntry":
        labels = data["label_names"]
        hub, package = data.get("hub"), data.get("package")
        return cls(name=name, hub=HubFile(**hub) if hub else None, package=PackageFile(**package) if package else None,
                   default=data.get("default", True), format=data["format"], license=data["license"],
                   origin=dict(data["origin"]), dataset=data["dataset"], num_classes=data["num_classes"],
                   label_set=labels if isinstance(labels, str) else None, preprocessing=dict(data["preprocessing"]),
                   metrics=tuple(dict(m) for m in data["metrics"]), complexity=dict(data["complexity"]),
                   pretrain_dataset=data.get("pretrain_dataset"), model_args=dict(data.get("model_args", {})),
                   notes=data.get("notes", ""), _labels=None if isinstance(labels, str) else tuple(labels))


@dataclass(frozen=True)
class Manifest:
    """All weight entries, in file order; the first tag of an architecture is its default."""
    path: Path
    entries: dict[str, WeightsEntry]

    def architectures(self) -> list[str]:
        return list(dict.fromkeys(e.architecture for e in self.entries.values()))

    def tags(self, architecture: str) -> list[str]:
        return [e.tag for e in self.entries.values() if e.architecture == architecture]

    def default_tag(self, architecture: str) -> str | None:
        """The first tag of ``architecture`` not marked ``"default": false`` (None when there is none)."""
        return next((e.tag for e in self.entries.values() if e.architecture == architecture and e.default), None)

    def resolve(self, architecture: str, tag: str | None = None) -> WeightsEntry:
        """The entry for ``architecture`` and ``tag`` (None = the default tag, see :meth:`default_tag`)."""
        tags = self.tags(architecture)
        if not tags:
            raise KeyError(f"no pretrained weights for {architecture!r} in {self.path}. "
                           f"Architectures with weights: {', '.join(self.architectures())}")
        default = self.default_tag(architecture)
        if tag is None:
            if default is None:
                raise KeyError(f"{architecture} has no default weights, only ones you must name because they are "
                               f"not what pretrained=True promises (e.g. demo weights of another width): "
                               f"{', '.join(f'{architecture}.{t}' for t in tags)}. Name one: "
                               f"'{architecture}.{tags[0]}', pretrained='{tags[0]}' or --weights {tags[0]}")
            tag = default
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"{architecture} has no weights tagged {tag!r}.{hint} Its tags: {', '.join(tags)} "
                           f"(default {default or 'none'})")
        return self.entries[f"{architecture}.{tag}"]

    def find_repo(self, repo_id: str) -> WeightsEntry | None:
        """The entry whose weights live in Hub repo ``repo_id`` (None when no entry does)."""
        return next((e for e in self.entries.values() if e.hub_id == repo_id), None)

    def select(self, patterns: str | Iterable[str]) -> list[WeightsEntry]:
        """Entries whose ``architecture.tag`` matches any fnmatch pattern; a bare architecture means all its tags."""
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        picked = [e for e in self.entries.values()
                  if any(fnmatch.fnmatchcase(e.name, p) or e.architecture == p for p in patterns)]
        if not picked:
            raise KeyError(f"no manifest entry matches {', '.join(patterns) or '(nothing)'}; "
                           "see `zoo weights list`")
        return picked


def manifest_path() -> Path:
    """``$ZOO_WEIGHTS_MANIFEST`` when set, else the manifest shipped with the package."""
    override = os.environ.get("ZOO_WEIGHTS_MANIFEST")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "weights_manifest.json"


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Read and validate a manifest (default :func:`manifest_path`); cached until the file changes."""
    path = Path(path) if path is not None else manifest_path()
    if not path.is_file():
        raise FileNotFoundError(f"weight manifest not found: {path}")
    return _load(str(path.resolve()), path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Manifest:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    errors = validate_manifest(data)
    if errors:
        raise ManifestError(f"{path} does not follow the manifest schema:\n  " + "\n  ".join(errors))
    return Manifest(Path(path), {name: WeightsEntry.from_json(name, e) for name, e in data["weights"].items()})

