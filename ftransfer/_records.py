"""Frozen, keyword-only record classes, without importing ``dataclasses``.

Theory of operation
-------------------
Events, packets, entries and results are small immutable records. The standard way
to write them is ``@dataclass(frozen=True, kw_only=True, slots=True)``, but
``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``...),
which costs about 20 ms on the 2-vCPU machines this tool is measured on: a third of
the whole budget for a ``ftransfer get`` to send its request (docs/perf-notes.md).
Every command imports records, so they come from here instead.

A subclass of ``Record`` whose fields are annotated (with ``from __future__ import
annotations``, so annotations are never evaluated) is a frozen record: a tuple
underneath (immutable, built in one C call, fields read by C getters, as
``namedtuple``), with a keyword-only constructor, ``__repr__``, ``__eq__`` (equal
only to a record of the same class, never to a plain tuple), ``__hash__`` and
``__match_args__``. ``class Counters(Record, frozen=False)`` makes a mutable
slotted class instead. A class attribute is the field's default; ``factory(f)``
calls ``f()`` per instance. Type checkers see a dataclass (PEP 681
``dataclass_transform`` on the metaclass), so mypy checks constructor calls and
refuses assignment to frozen fields. ``evolve`` is ``dataclasses.replace``.

Cost: the class is built once, by the metaclass, and its constructor is a
compiled template renamed to the fields (``CodeType.replace``) rather than source
compiled per record: about 30 us a record instead of 150.

Left out on purpose: inheritance between records, ``field()`` metadata, ordering,
``__post_init__``. A record that needs validation does it in a factory function,
where the reason can be told.
"""

from __future__ import annotations

import types
from collections import _tuplegetter  # type: ignore[attr-defined]  # namedtuple's getter
from collections.abc import Callable

TYPE_CHECKING = False  # typing itself costs ~6 ms to import; mypy knows this name
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[object], object]:
        return lambda decorated: decorated


class Factory:
    """A default made fresh for every instance (see ``factory``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def factory(make: Callable[[], T]) -> T:
    """A field default made by ``make()`` for every instance:
    ``items: list[int] = factory(list)``."""
    return Factory(make)  # type: ignore[return-value]  # typed as what it makes


_TEMPLATES: dict[tuple[bool, int], Any] = {}
"""Compiled constructors by (frozen, number of fields), renamed per record."""


def _template(frozen: bool, count: int) -> Any:
    code = _TEMPLATES.get((frozen, count))
    if code is None:
        names = [f"a{i}" for i in range(count)]
        star = ["*", *names] if names else []
        if frozen:
            values = "".join(f"{name}, " for name in names)
            source = f"def __new__({', '.join(['_cls', *star])}):\n"
            source += f"    return _tuple_new(_cls, ({values}))\n"
        else:
            source = f"def __init__({', '.join(['self', *star])}):\n"
            source += "".join(f"    self.{name} = {name}\n" for name in names) or "    pass\n"
        namespace: dict[str, Any] = {"_tuple_new": tuple.__new__}
        exec(source, namespace)
        key = "__new__" if frozen else "__init__"
        code = _TEMPLATES[(frozen, count)] = namespace[key].__code__
    return code


def _constructor(fields: list[str], defaults: dict[str, object], frozen: bool) -> Any:
    """The keyword-only constructor: a template renamed to the fields, defaults in
    ``__kwdefaults__``; factory defaults are made per call by a (slower) wrapper,
    used only by the few records that have them."""
    first = "_cls" if frozen else "self"
    renames: dict[str, Any] = {"co_varnames": (first, *fields)}
    if not frozen:
        renames["co_names"] = tuple(fields)
    code = _template(frozen, len(fields)).replace(**renames)
    function = types.FunctionType(code, {"_tuple_new": tuple.__new__}, code.co_name)
    function.__kwdefaults__ = {
        k: v for k, v in defaults.items() if not isinstance(v, Factory)
    } or None
    factories = {k: v for k, v in defaults.items() if isinstance(v, Factory)}
    if not factories:
        return function

    def with_factories(first: Any, **kwargs: Any) -> Any:
        for name, default in factories.items():
            if name not in kwargs:
                kwargs[name] = default.make()
        return function(first, **kwargs)

    return with_factories


def _repr(self: Any) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
    return f"{type(self).__qualname__}({inner})"


def _frozen_eq(self: Any, other: Any) -> bool:
    if type(other) is not type(self):
        return False
    same: bool = tuple.__eq__(self, other)
    return same


def _frozen_ne(self: Any, other: Any) -> bool:
    return not _frozen_eq(self, other)


def _mutable_eq(self: Any, other: Any) -> bool:
    if type(other) is not type(self):
        return NotImplemented  # type: ignore[no-any-return]
    return all(getattr(self, name) == getattr(other, name) for name in self.__match_args__)


@dataclass_transform(kw_only_default=True, frozen_default=True)
class _RecordMeta(type):
    """Builds records (see the module docstring)."""

    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], *, frozen: bool = True
    ) -> Any:
        if not bases:  # Record itself
            return super().__new__(mcs, name, bases, namespace)
        if bases != (Record,):
            raise TypeError(f"record {name} cannot inherit from anything but Record")
        fields = list(namespace.get("__annotations__", {}))
        defaults = {field: namespace.pop(field) for field in fields if field in namespace}
        namespace["__match_args__"] = tuple(fields)
        namespace.setdefault("__repr__", _repr)  # a record may hide a field (a password)
        if frozen:
            # A tuple underneath: built in one C call (a frozen dataclass sets each
            # field through object.__setattr__, ~1 us more per record, and some are
            # made per datagram); fields are C-level getters, as namedtuple's.
            namespace["__slots__"] = ()
            namespace["__new__"] = _constructor(fields, defaults, frozen=True)
            namespace.update({field: _tuplegetter(i, None) for i, field in enumerate(fields)})
            namespace.update(__eq__=_frozen_eq, __ne__=_frozen_ne, __hash__=tuple.__hash__)
            return type.__new__(mcs, name, (tuple,), namespace)
        namespace["__slots__"] = tuple(fields)
        namespace["__init__"] = _constructor(fields, defaults, frozen=False)
        namespace.update(__eq__=_mutable_eq, __hash__=None)
        return type.__new__(mcs, name, (), namespace)


class Record(metaclass=_RecordMeta):
    """The base of every record (see the module docstring)."""


def evolve(instance: T, **changes: object) -> T:
    """A copy of a record with some fields changed (``dataclasses.replace``)."""
    fields = type(instance).__match_args__  # type: ignore[attr-defined]
    values = {name: getattr(instance, name) for name in fields}
    values.update(changes)
    return type(instance)(**values)
