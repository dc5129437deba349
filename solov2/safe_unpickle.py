"""Unpickling checkpoints that hold foreign Python objects without running code from them.

Training loops store more than weights: mmengine's checkpoints hold ``message_hub``,
optimizer and scheduler objects whose classes are not installed here, and ordinary
unpickling would import and call whatever the file names. ``module(extra)`` returns a
``pickle_module`` for ``torch.load`` whose unpickler resolves only the names
``torch.load(weights_only=True)`` allows (tensors, storages, dtypes, ``OrderedDict`` ...) plus
``extra``; every other name becomes an inert ``Placeholder`` subclass, so that calling or
building it only records its arguments. Nothing from the file is imported or executed.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any, Iterable


class Placeholder:
    """Stands in for an object of a class that was not rebuilt; keeps what the file held."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.state: Any = None
        self.items: list[Any] = []
        self.entries: dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "Placeholder":
        return placeholder_class(f"{self.qualified_name}()")(*args, **kwargs)

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


def placeholder_class(qualified_name: str) -> type[Placeholder]:
    return type("Placeholder", (Placeholder,), {"qualified_name": qualified_name})


def describe(value: Any) -> str:
    """The class name of ``value``, or of what a placeholder stands in for."""
    if isinstance(value, Placeholder):
        return value.qualified_name
    return type(value).__name__


def _allowed_globals(extra: Iterable[Any]) -> dict[str, Any]:
    from torch import _weights_only_unpickler

    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    for obj in extra:
        allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return allowed


def module(extra: Iterable[Any] = ()) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load(..., weights_only=False)`` that never imports or
    calls anything outside the allowed names (see the module docstring)."""
    allowed = _allowed_globals(extra)

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module_name: str, name: str) -> Any:
            found = allowed.get(f"{module_name}.{name}")
            return found if found is not None else placeholder_class(f"{module_name}.{name}")

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return load(io.BytesIO(data), **kwargs)

    restricted = types.ModuleType("solov2_restricted_pickle")
    restricted.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    restricted.load = load  # type: ignore[attr-defined]
    restricted.loads = loads  # type: ignore[attr-defined]
    restricted.__dict__.update(UnpicklingError=pickle.UnpicklingError)
    return restricted
