"""Plain data bent towards a pydantic model the way Go's yaml bends it towards a struct.

Files written for the Go tool load unchanged: a scalar given where a string is expected
keeps the text written (`cpu: 1` is "1", `DEBUG: yes` is "yes"), and null leaves a field
at its default. `conform` also collects the keys the model does not know.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from shared.architecture.yaml_source import FieldPath


@dataclass
class Conformed:
    data: Any
    unknown: list[tuple[FieldPath, list[str]]] = field(default_factory=list)  # key, known keys
    entries: set[FieldPath] = field(default_factory=set)  # values of a name -> model mapping


def conform(data: Any, model: type[BaseModel], raw: Mapping[FieldPath, str]) -> Conformed:
    """`data` shaped for `model` as Go's yaml would read it, with the model's unknown keys."""
    conformer = _Conformer(raw)
    shaped = conformer.model(model, data, (), passthrough=False)
    return Conformed(shaped, conformer.unknown, conformer.entries)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


@dataclass(frozen=True)
class _Shape:
    """What `_Conformer.value` needs to know of a field's annotation."""

    annotation: Any  # without `| None`
    model: bool
    origin: Any
    args: tuple[Any, ...]


_SHAPES: dict[Any, _Shape] = {}


def _shape(annotation: Any) -> _Shape:
    """The annotation's shape, worked out once per annotation: the typing introspection
    was half of conforming a 1,000-service file (14,000 `get_origin` calls)."""
    try:
        return _SHAPES[annotation]
    except KeyError:
        pass
    except TypeError:  # an annotation that cannot be a key (unhashable metadata)
        return _shape_of(annotation)
    shape = _SHAPES[annotation] = _shape_of(annotation)
    return shape


def _shape_of(annotation: Any) -> _Shape:
    bare = _without_none(annotation)
    return _Shape(bare, _is_model(bare), get_origin(bare), get_args(bare))


class _Conformer:
    def __init__(self, raw: Mapping[FieldPath, str]) -> None:
        self.raw = raw
        self.unknown: list[tuple[FieldPath, list[str]]] = []
        self.entries: set[FieldPath] = set()

    def model(self, model: type[BaseModel], value: Any, path: FieldPath, passthrough: bool) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic says what is wrong
        fields = model.model_fields
        passthrough = passthrough or model.model_config.get("extra") == "allow"
        shaped: dict[str, Any] = {}
        for key, item in value.items():
            info = fields.get(key)
            if info is None:
                if not passthrough:
                    self.unknown.append(((*path, key), list(fields)))
                shaped[key] = item
            elif item is not None:  # null leaves the field at its default, as in Go
                shaped[key] = self.value(info.annotation, item, (*path, key), passthrough)
        return shaped

    def value(self, annotation: Any, value: Any, path: FieldPath, passthrough: bool) -> Any:
        shape = _shape(annotation)
        if shape.model:
            return self.model(shape.annotation, value, path, passthrough)
        if shape.annotation is str:
            return self.text(value, path)
        if shape.origin is list and isinstance(value, list):
            (item,) = shape.args
            return [self.value(item, v, (*path, i), passthrough) for i, v in enumerate(value)]
        if shape.origin is dict and isinstance(value, dict):
            _, item = shape.args
            return {k: self.entry(item, v, (*path, k), passthrough) for k, v in value.items()}
        return value

    def entry(self, annotation: Any, value: Any, path: FieldPath, passthrough: bool) -> Any:
        if _is_model(annotation):
            self.entries.add(path)
            value = {} if value is None else value
        elif annotation is str and value is None:
            return ""
        return self.value(annotation, value, path, passthrough)

    def text(self, value: Any, path: FieldPath) -> Any:
        if isinstance(value, bool | int | float):
            return self.raw.get(path, str(value))
        return value
