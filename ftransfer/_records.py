"""Frozen, keyword-only record classes, without importing ``dataclasses``.

Theory of operation
-------------------
Events, packets, entries and results are small immutable records. The standard way
to write them is ``@dataclass(frozen=True, kw_only=True, slots=True)``, but
``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``...),
which costs about 20 ms on the 2-vCPU machines this tool is measured on: a third of
the whole budget for a ``ftransfer get`` to send its request (docs/perf-notes.md).
Every command imports records, so they come from here instead.

``@record`` turns a class whose fields are annotated (with ``from __future__ import
annotations``, so annotations are never evaluated) into a frozen record: a tuple
underneath (immutable, built in one C call, fields read by C getters, as
``namedtuple``), with a keyword-only constructor, ``__repr__``, ``__eq__`` (equal
only to a record of the same class: not to a tuple), ``__hash__`` and
``__match_args__``. ``@record(frozen=False)`` makes a mutable slotted class instead
(counters). A class
attribute is the field's default; a ``factory(f)`` default calls ``f()`` per
instance. Type checkers see a dataclass (PEP 681 ``dataclass_transform``), so mypy
checks constructor calls and refuses assignment to frozen fields. ``evolve`` is
``dataclasses.replace``.

What is left out, on purpose: inheritance between records, ``field()`` metadata,
ordering, ``__post_init__``. A record that needs validation does it in a factory
function, where the reason can be told.
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # typing itself costs ~6 ms to import; mypy knows this name
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[object], object]:
        return lambda decorated: decorated


_MISSING = object()


class Factory:
    """A default made fresh for every instance (see ``factory``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def factory(make: Callable[[], T]) -> T:
    """A field default made by ``make()`` for every instance:
    ``items: list[int] = factory(list)``."""
    return Factory(make)  # type: ignore[return-value]  # typed as what it makes


def _source(fields: list[str], defaults: dict[str, object], frozen: bool) -> str:
    """``__new__`` (frozen: a tuple) or ``__init__`` (mutable: slots), keyword-only."""
    params, body = [], []
    for name in fields:
        default = defaults.get(name, _MISSING)
        if default is _MISSING:
            params.append(name)
        elif isinstance(default, Factory):
            params.append(f"{name}=_MISSING")
            body.append(f"    if {name} is _MISSING: {name} = _d_{name}.make()")
        else:
            params.append(f"{name}=_d_{name}")
    if frozen:
        signature = ", ".join(["_cls", "*", *params] if params else ["_cls"])
        values = "".join(f"{name}, " for name in fields)
        return (
            f"def __new__({signature}):\n"
            + "".join(line + "\n" for line in body)
            + f"    return _tuple_new(_cls, ({values}))\n"
        )
    signature = ", ".join(["self", "*", *params] if params else ["self"])
    body += [f"    self.{name} = {name}" for name in fields] or ["    pass"]
    return f"def __init__({signature}):\n" + "".join(line + "\n" for line in body)


def _compile(fields: list[str], defaults: dict[str, object], frozen: bool) -> Any:
    namespace: dict[str, Any] = {"_MISSING": _MISSING, "_tuple_new": tuple.__new__}
    namespace.update({f"_d_{name}": value for name, value in defaults.items()})
    exec(_source(fields, defaults, frozen), namespace)
    return namespace["__new__" if frozen else "__init__"]


def _repr(self: Any) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
    return f"{type(self).__qualname__}({inner})"


def _frozen_eq(self: Any, other: Any) -> bool:
    if type(other) is not type(self):
        return False
    same: bool = tuple.__eq__(self, other)
    return same


def _frozen_ne(self: Any, other: object) -> bool:
    return not _frozen_eq(self, other)


def _mutable_eq(self: Any, other: Any) -> bool:
    if type(other) is not type(self):
        return NotImplemented  # type: ignore[no-any-return]
    return all(getattr(self, name) == getattr(other, name) for name in self.__match_args__)


def _build(cls: type[T], frozen: bool) -> type[T]:
    if cls.__bases__ != (object,):
        raise TypeError(f"record {cls.__name__} cannot inherit")
    fields = list(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 (no inspect: see above)
    defaults = {name: cls.__dict__[name] for name in fields if name in cls.__dict__}
    namespace = {
        key: value
        for key, value in cls.__dict__.items()
        if key not in defaults and key not in ("__dict__", "__weakref__")
    }
    namespace["__match_args__"] = tuple(fields)
    namespace["__repr__"] = _repr
    if frozen:
        # A tuple underneath: built in one C call (a frozen dataclass sets each field
        # through object.__setattr__, ~1 us more per record, and some are made per
        # datagram); fields are C-level getters, as namedtuple's.
        namespace["__slots__"] = ()
        namespace["__new__"] = _compile(fields, defaults, frozen=True)
        namespace.update({name: _getter(index) for index, name in enumerate(fields)})
        namespace.update(__eq__=_frozen_eq, __ne__=_frozen_ne, __hash__=tuple.__hash__)
        bases: tuple[type, ...] = (tuple,)
    else:
        namespace["__slots__"] = tuple(fields)
        namespace["__init__"] = _compile(fields, defaults, frozen=False)
        namespace.update(__eq__=_mutable_eq, __hash__=None)
        bases = (object,)
    built: type[T] = type(cls.__name__, bases, namespace)
    built.__qualname__ = cls.__qualname__
    return built


def _getter(index: int) -> Any:
    try:
        from collections import _tuplegetter  # type: ignore[attr-defined]

        return _tuplegetter(index, None)
    except ImportError:  # not CPython
        from operator import itemgetter

        return property(itemgetter(index))


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=())
def record(cls: type[T] | None = None, *, frozen: bool = True) -> Any:
    """Make ``cls`` a record (see the module docstring); ``@record`` or
    ``@record(frozen=False)``."""
    if cls is None:
        return lambda inner: _build(inner, frozen)
    return _build(cls, frozen)


def evolve(instance: T, **changes: object) -> T:
    """A copy of a record with some fields changed (``dataclasses.replace``)."""
    fields = type(instance).__match_args__  # type: ignore[attr-defined]
    values = {name: getattr(instance, name) for name in fields}
    values.update(changes)
    return type(instance)(**values)
