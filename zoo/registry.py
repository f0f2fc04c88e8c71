"""One registry for the whole zoo: model entry points and the components they are built from.

Model entry points are registered with :func:`register_model` (timm style), components (backbones, encoders,
decoders, blocks) with :func:`register_component`, so that a JSON config can name them
(``{"name": "presnet", "depth": 18}``) and users can swap one in (``backbone="resnet50d"``), and model families
(their ``Detector`` class, which declares everything the rest of zoo asks of the family) with
:func:`register_family`, so that weights, export and the engine find a family by its name. The registry
is a leaf: it imports nothing of zoo. ``zoo/__init__`` tells it how to import the families
(:func:`set_family_loader`), and every query imports them once first, so the registry is complete whenever it is
read, while ``import zoo`` (and the command line's start) stays cheap.

Listing names is the exception: :func:`list_models` reads the families' ``@register_model`` decorators from their
source (:func:`declared_models`) while they are not imported yet, so ``zoo list`` answers without torch. Where a
registration cannot be read that way, it imports the families as every other query does.
"""
from __future__ import annotations

import ast
import difflib
import fnmatch
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, TypeVar

__all__ = [
    "register_model", "register_component", "get_component", "list_components",
    "list_models", "is_model", "model_entrypoint", "resolve_model_name", "model_aliases",
    "set_pretrained_tags_provider", "set_family_loader", "load_families", "declared_models", "COMPONENT_KINDS",
    "register_family", "family_class", "list_families",
]

F = TypeVar("F", bound=Callable)

#: Component kinds a detector is composed from.
COMPONENT_KINDS = ("backbone", "encoder", "decoder", "block")

_model_entrypoints: dict[str, Callable] = {}
_model_aliases: dict[str, str] = {}
_components: dict[str, dict[str, Callable]] = defaultdict(dict)
_families: dict[str, type] = {}


_family_loader: Callable[[], None] | None = None
_family_sources: Path | None = None
_families_loaded = False


def set_family_loader(loader: Callable[[], None], sources: str | os.PathLike | None = None) -> None:
    """Set how :func:`load_families` imports the model families (``zoo/__init__`` does, at import), and the folder
    of their source files, where :func:`list_models` reads the registered names without importing them."""
    global _family_loader, _family_sources
    _family_loader = loader
    _family_sources = Path(sources) if sources is not None else None


def load_families() -> None:
    """Import every model family once, so that their decorators have filled the registry."""
    global _families_loaded
    if not _families_loaded and _family_loader is not None:
        _families_loaded = True
        _family_loader()


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def register_model(fn: F | None = None, *, name: str | None = None, aliases: Iterable[str] = ()) -> F:
    """Register a model entry point under its function name (or ``name``), plus optional aliases.

    Registering a name twice is an error: two families must never silently shadow each other.
    """
    def decorator(func: F) -> F:
        load_families()  # a clash with a family's model is then reported here, at the new registration
        model_name = name or func.__name__
        for key in (model_name, *aliases):
            if key in _model_entrypoints or key in _model_aliases:
                raise ValueError(f"model name {key!r} is already registered")
        _model_entrypoints[model_name] = func
        for alias in aliases:
            _model_aliases[alias] = model_name
        module = sys.modules.get(func.__module__)
        if module is not None and hasattr(module, "__all__") and model_name not in module.__all__:
            module.__all__.append(model_name)
        return func

    return decorator(fn) if fn is not None else decorator  # type: ignore[return-value]


def register_component(kind: str, name: str | None = None) -> Callable[[F], F]:
    """Register a component builder (a class or function) of ``kind`` under ``name`` (default: its ``__name__``).

    The name is also stored on the builder as ``component_name``, so that configs can be written from the
    class itself (``{"name": PResNet.component_name, ...}``) rather than from a string to search for.
    """
    if kind not in COMPONENT_KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {COMPONENT_KINDS}")

    def decorator(obj: F) -> F:
        key = name or obj.__name__
        if key in _components[kind]:
            raise ValueError(f"{kind} component {key!r} is already registered")
        _components[kind][key] = obj
        obj.component_name = key
        return obj

    return decorator


T = TypeVar("T", bound=type)


def register_family(cls: T) -> T:
    """Register a detector class as its family, under ``cls.family``: the one place the rest of zoo finds it.

    The class declares the family on itself (see ``zoo.models.base.Detector``: checkpoint layouts, transformers
    mapping, export postprocessing, training recipe). A family of a family (``class DFINE(RTDETR)``) registers
    with its own ``family`` name; registering a name twice, or a class without its own name, is an error.
    """
    load_families()  # a clash with a family of zoo's is then reported here, at the new registration
    family = cls.__dict__.get("family")
    if not isinstance(family, str) or not family:
        raise ValueError(f"{cls.__name__} must set its own class attribute family = '<name>' to be registered")
    if family in _families and _families[family] is not cls:
        raise ValueError(f"model family {family!r} is already registered (by {_families[family].__qualname__})")
    _families[family] = cls
    return cls


def family_class(family: str) -> type:
    """The registered class of ``family``; unknown names list the registered ones."""
    load_families()
    if family not in _families:
        raise KeyError(f"unknown model family {family!r}.{_suggest(family, _families)} "
                       f"Registered families: {', '.join(sorted(_families)) or 'none'}")
    return _families[family]


def list_families() -> list[str]:
    """Names of the registered model families."""
    load_families()
    return sorted(_families)


def get_component(kind: str, name: str) -> Callable:
    """Return the builder registered as ``name`` for ``kind``; unknown names suggest close ones."""
    load_families()
    registry = _components.get(kind, {})
    if name not in registry:
        raise KeyError(
            f"no {kind} component named {name!r}.{_suggest(name, registry)} "
            f"Registered {kind}s: {', '.join(sorted(registry))}"
        )
    return registry[name]


def list_components(kind: str) -> list[str]:
    load_families()
    return sorted(_components.get(kind, {}))


def list_models(
    filter: str | Iterable[str] = "",
    exclude_filters: str | Iterable[str] = (),
    pretrained: bool = False,
    include_aliases: bool = False,
) -> list[str]:
    """Sorted registered model names matching fnmatch ``filter`` and none of ``exclude_filters``.

    ``pretrained=True`` keeps only models with at least one weight entry in the manifest and then
    returns ``architecture.tag`` names, like timm.
    """
    architectures, aliases = _model_names()
    names = sorted(architectures | set(aliases) if include_aliases else architectures)
    if pretrained:
        tags = _pretrained_tags_provider() if _pretrained_tags_provider is not None else ()
        names = sorted(k for k in tags if k.split(".", 1)[0] in architectures)
    includes = [filter] if isinstance(filter, str) else list(filter)
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    if any(includes):
        names = [n for n in names if any(fnmatch.fnmatchcase(n, f) for f in includes if f)]
    for pattern in excludes:
        names = [n for n in names if not fnmatch.fnmatchcase(n, pattern)]
    return names


def _model_names() -> tuple[set[str], dict[str, str]]:
    """Registered model names and aliases (alias -> name): declared in the families' source while they are not
    imported, else (or when the source cannot be read statically) the registry's, after importing them."""
    if not _families_loaded and _family_sources is not None:
        declared = declared_models(_family_sources)
        if declared is not None:  # plus any model registered before the families were imported
            aliases = {alias: name for name, names in declared.items() for alias in names}
            return set(declared) | set(_model_entrypoints), {**aliases, **_model_aliases}
    load_families()
    return set(_model_entrypoints), dict(_model_aliases)


def declared_models(folder: str | os.PathLike) -> dict[str, tuple[str, ...]] | None:
    """Model name -> aliases for every ``@register_model`` decorator in the Python files under ``folder``, read
    without importing them.

    Returns None when that reading could be incomplete, so that the caller imports the families instead: no
    source files declare a model (an install without sources), or a file uses ``register_model`` in any other
    way (a call, a renamed import, arguments that are not literals).
    """
    declared: dict[str, tuple[str, ...]] = {}
    for path in sorted(Path(folder).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "register_model" not in text:
            continue
        found = _declarations(ast.parse(text, filename=str(path)))
        if found is None:
            return None
        declared.update(found)
    return declared or None


def _is_register_model(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "register_model"
            or isinstance(node, ast.Attribute) and node.attr == "register_model")


def _declarations(tree: ast.Module) -> dict[str, tuple[str, ...]] | None:
    """The literal ``@register_model`` / ``@register_model(name=..., aliases=...)`` declarations on the module's
    top-level functions (those run when it is imported), or None when ``register_model`` is used in any other way
    (inside a function or a class, in a call, renamed), which cannot be read without running the module."""
    found: dict[str, tuple[str, ...]] = {}
    uses = sum(_is_register_model(node) for node in ast.walk(tree) if isinstance(node, ast.expr))
    renamed = any(isinstance(node, ast.alias) and node.name == "register_model" and node.asname
                  for node in ast.walk(tree))
    decorators = 0
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            if not _is_register_model(call.func if call else decorator):
                continue
            decorators += 1
            options: dict[str, object] = {"name": None, "aliases": ()}
            for keyword in call.keywords if call else ():
                if keyword.arg not in options:
                    return None
                try:
                    options[keyword.arg] = ast.literal_eval(keyword.value)
                except (ValueError, TypeError):
                    return None
            if call and call.args:
                return None
            found[str(options["name"] or node.name)] = tuple(options["aliases"])  # type: ignore[arg-type]
    return found if decorators == uses and not renamed else None


def resolve_model_name(name: str) -> str:
    """Map an alias to its canonical architecture name; unknown names raise with suggestions."""
    load_families()
    name = _model_aliases.get(name, name)
    if name not in _model_entrypoints:
        known = list(_model_entrypoints) + list(_model_aliases)
        raise ValueError(f"unknown model {name!r}.{_suggest(name, known)} See zoo.list_models() for all names.")
    return name


def is_model(name: str) -> bool:
    load_families()
    return name in _model_entrypoints or name in _model_aliases


def model_entrypoint(name: str) -> Callable:
    return _model_entrypoints[resolve_model_name(name)]


def model_aliases() -> dict[str, str]:
    """alias -> model name (read from the families' declarations while they are not imported)."""
    return _model_names()[1]


_pretrained_tags_provider: Callable[[], Iterable[str]] | None = None


def set_pretrained_tags_provider(provider: Callable[[], Iterable[str]]) -> None:
    """Tell :func:`list_models` where ``architecture.tag`` weight names come from (the weights manifest)."""
    global _pretrained_tags_provider
    _pretrained_tags_provider = provider
