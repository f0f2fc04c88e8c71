"""One table of key renames that converts state dicts both ways (another library's layout <-> zoo's).

A rule pairs two key prefixes written as templates, ``"model.decoder.layers.{i}.fc1."`` <->
``"decoder.decoder.layers.{i}.linear1."``: ``{name}`` matches one dotted component (digits unless the rule gives the
placeholder a value table, e.g. ``{"b": {"0": "a", "1": "b"}}`` for ``layer.0`` <-> ``branch2a``). A key is renamed
by the first rule whose template is a prefix of it; the rest of the key is kept. Because both directions read the
same ordered table, list a rule before any rule whose template on either side is a prefix of its own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

__all__ = ["KeyRule", "KeyMap", "merge_qkv", "split_in_proj", "fold_top_level_heads"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class KeyRule:
    """``theirs`` <-> ``ours`` (templates); ``values[name]`` maps a placeholder's value on their side to ours;
    ``read_also`` are other spellings of ``theirs`` that are accepted when reading but never written."""
    theirs: str
    ours: str
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    read_also: tuple[str, ...] = ()


def _compile(template: str, values: Mapping[str, Mapping[str, str]], side: int) -> re.Pattern:
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        table = values.get(m[1])
        choices = (table.keys() if side == 0 else table.values()) if table else None
        parts.append(f"(?P<{m[1]}>{'|'.join(map(re.escape, choices))})" if choices else rf"(?P<{m[1]}>\d+)")
        pos = m.end()
    return re.compile("".join(parts) + re.escape(template[pos:]))


class KeyMap:
    """Rename keys between a foreign layout (``theirs``) and zoo's (``ours``) with one ordered list of rules."""

    def __init__(self, rules: Iterable[KeyRule]):
        self.rules = list(rules)
        self._theirs = [[_compile(t, r.values, 0) for t in (r.theirs, *r.read_also)] for r in self.rules]
        self._ours = [_compile(r.ours, r.values, 1) for r in self.rules]

    def to_ours(self, key: str) -> str | None:
        """Their key -> our key; None when no rule matches."""
        for rule, patterns in zip(self.rules, self._theirs):
            for pattern in patterns:
                m = pattern.match(key)
                if m:
                    found = {k: rule.values[k][v] if k in rule.values else v for k, v in m.groupdict().items()}
                    return rule.ours.format(**found) + key[m.end():]
        return None

    def to_theirs(self, key: str) -> str | None:
        """Our key -> their key (the canonical spelling); None when no rule matches."""
        for rule, pattern in zip(self.rules, self._ours):
            m = pattern.match(key)
            if m:
                found = {k: {v: t for t, v in rule.values[k].items()}[v] if k in rule.values else v
                         for k, v in m.groupdict().items()}
                return rule.theirs.format(**found) + key[m.end():]
        return None

    def load(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Their state dict -> ours: keys renamed (unmatched keys kept, so that a strict load names them) and
        separate q/k/v projections packed."""
        return merge_qkv({self.to_ours(k) or k: v for k, v in state_dict.items()})

    def save(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict -> theirs: packed projections split, keys renamed; a key no rule covers is an error."""
        out, unmapped = {}, []
        for key, value in split_in_proj(state_dict).items():
            theirs = self.to_theirs(key)
            if theirs is None:
                unmapped.append(key)
            else:
                out[theirs] = value.contiguous()
        if unmapped:
            raise KeyError(f"{len(unmapped)} keys have no counterpart in the target layout: "
                           + ", ".join(unmapped[:8]) + (" ..." if len(unmapped) > 8 else ""))
        return out


#: ``...{q,k,v}_proj.{weight,bias}`` of an attention module whose name ends in ``_attn``
QKV = re.compile(r"^(.*_attn)\.([qkv])_proj\.(weight|bias)$")
#: ``nn.MultiheadAttention``'s packed projection
IN_PROJ = re.compile(r"^(.*_attn)\.in_proj_(weight|bias)$")


def merge_qkv(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``...{q,k,v}_proj.{weight,bias}`` -> ``nn.MultiheadAttention``'s ``...in_proj_{weight,bias}`` (q, k, v rows)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = QKV.match(key)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[key] = value
    for (prefix, kind), found in parts.items():
        missing = sorted({"q", "k", "v"} - set(found))
        if missing:
            raise KeyError(f"{prefix}: checkpoint has no {'/'.join(missing)}_proj.{kind} to go with the others")
        out[f"{prefix}.in_proj_{kind}"] = torch.cat([found["q"], found["k"], found["v"]], 0)
    return out


def split_in_proj(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``nn.MultiheadAttention``'s ``...in_proj_{weight,bias}`` -> ``...{q,k,v}_proj.{weight,bias}`` (row blocks)."""
    out = {}
    for key, value in state_dict.items():
        m = IN_PROJ.match(key)
        if m:
            for name, part in zip("qkv", value.chunk(3, 0)):
                out[f"{m[1]}.{name}_proj.{m[2]}"] = part
        else:
            out[key] = value
    return out


def fold_top_level_heads(state_dict: Mapping[str, torch.Tensor], heads: tuple[str, ...] = ("class_embed", "bbox_embed"),
                         prefix: str = "model.decoder.") -> dict[str, torch.Tensor]:
    """transformers' detection models may save their heads twice (tied copies at the top level, ``class_embed.*``,
    beside ``model.decoder.class_embed.*``) or, in older saves, only at the top: keep the nested copies and read a
    top-level head only where its nested copy is absent."""
    top = {k: v for k, v in state_dict.items() if k.split(".")[0] in heads}
    body = {k: v for k, v in state_dict.items() if k not in top}
    body.update({k: v for k, v in top.items() if f"{prefix}{k}" not in body})
    return body
