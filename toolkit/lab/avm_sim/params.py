"""Request parameters the way a Rails application sees them.

Query string, form body and JSON body are merged into one nested mapping (body wins),
and bracket keys are expanded: ``volumes[]=1&volumes[]=2`` → ``{"volumes": ["1", "2"]}``,
``data[path]=x`` → ``{"data": {"path": "x"}}``, ``a[0][b]=y`` → ``{"a": [{"b": "y"}]}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

_KEY_PART: Final = re.compile(r"\[([^\]]*)\]")


def parse_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Expand bracket keys into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        _insert(root, parts, value)
    expanded: dict[str, Any] = _listify(root)
    return expanded


def _insert(node: dict[str, Any], parts: list[str], value: str) -> None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        following = parts[i + 1] if not last else None
        if last:
            node[part] = value
            return
        if following == "":
            bucket = node.setdefault(part, [])
            if not isinstance(bucket, list):
                bucket = node[part] = [bucket]
            if i + 1 == len(parts) - 1:
                bucket.append(value)
                return
            # a[][b]=… : start a new element when the key repeats
            if not bucket or not isinstance(bucket[-1], dict) or parts[i + 2] in bucket[-1]:
                bucket.append({})
            _insert(bucket[-1], parts[i + 2 :], value)
            return
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child


def _listify(value: Any) -> Any:
    """Turn dicts keyed ``"0", "1", …`` into lists, recursively."""
    if isinstance(value, list):
        return [_listify(v) for v in value]
    if not isinstance(value, dict):
        return value
    converted = {k: _listify(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Params:
    """Merged request parameters with tolerant typed accessors."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_request(cls, query: str, body: bytes, content_type: str) -> Params:
        values = parse_pairs(parse_qsl(query, keep_blank_values=True))
        ctype = content_type.split(";", 1)[0].strip().lower()
        looks_json = ctype in ("application/json", "text/json") or body.lstrip()[:1] in (b"{", b"[")
        if body and looks_json:
            try:
                doc = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            if isinstance(doc, dict):
                values = _merge(values, doc)
            elif isinstance(doc, list):
                values = _merge(values, {"_json": doc})
        elif body:
            form = parse_pairs(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
            values = _merge(values, form)
        return cls(values)

    def scoped(self, key: str) -> Params:
        """``data[...]`` parameters as their own set, merged over the top-level ones."""
        inner = self.values.get(key)
        if isinstance(inner, dict):
            return Params(_merge(self.values, inner))
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def text(self, key: str, default: str = "") -> str:
        value = self.values.get(key)
        if value is None or isinstance(value, (dict, list)):
            return default
        return str(value)

    def has(self, key: str) -> bool:
        return key in self.values and self.values[key] not in (None, "")

    def integer(self, key: str) -> int | None:
        value = self.values.get(key)
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
        return None

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.values.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")

    def int_list(self, key: str) -> list[int] | None:
        """``volumes[]=1&volumes[]=2``, JSON ``[1, 2]``, ``"1,2"`` or a single value.
        None when a value is not an integer."""
        value = self.values.get(key)
        if value is None:
            return []
        items = value if isinstance(value, list) else str(value).split(",")
        out: list[int] = []
        for item in items:
            if isinstance(item, bool):
                return None
            if isinstance(item, int):
                out.append(item)
            elif isinstance(item, str) and item.strip().isdigit():
                out.append(int(item.strip()))
            elif isinstance(item, str) and not item.strip():
                continue
            else:
                return None
        return out

    def dict_list(self, key: str) -> list[dict[str, Any]]:
        value = self.values.get(key)
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            return []
        return [v for v in value if isinstance(v, dict)]
