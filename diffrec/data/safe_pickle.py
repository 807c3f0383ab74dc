"""Load pickles that hold plain data only, without ever running code from them.

A pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL``/``INST``/``OBJ``/``EXT*``
opcodes import any callable by name and ``REDUCE``/``NEWOBJ``/``BUILD`` call it.
:func:`safe_load` guards twice, both before anything is built:

1. a static scan of the opcodes (:func:`check_opcodes`) accepts only those that build
   ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``int``, ``float``, ``str``,
   ``bytes``, ``bytearray``, ``bool`` and ``None`` (plus framing and memo bookkeeping);
   the first other opcode raises :class:`UnsafePickleError` naming the global it asks
   for (a class, a numpy array's reconstructor, ``os.system`` ...);
2. the pickle is then read by :class:`RestrictedUnpickler`, whose ``find_class`` and
   ``persistent_load`` refuse everything, in case the scan ever missed a way in.

Protocols 0-3 store sets and frozensets (and protocols 0-2 bytes, protocols 0-4
bytearrays) as calls to a builtin, so such pickles are refused too; protocol 4 and 5
have opcodes for them. Dicts, lists, tuples, numbers, strings, booleans and None load
from any protocol.

The scan matters for the ``EXT`` opcodes: the C unpickler serves extension codes
already in ``copyreg``'s cache without calling ``find_class``.

Plain data can still attack memory. The scan refuses a memo index larger than the file (the C
unpickler allocates its memo up to the largest index: six bytes could ask for gigabytes). And a
pickle may store one list once and reference it
from its memo a million times, a few bytes per reference, so that code which copies the
references (``train[u] + val[u]``) builds gigabytes from a kilobyte file. After loading,
:func:`check_size` walks the result without recursion and counts every element each
time it is reached (shared references included), refusing it once the count passes a
budget that a file of that size can honestly hold (:func:`element_budget`), or when it
nests deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from typing import Any, BinaryIO

from diffrec.errors import DataError, UnsafePickleError

#: Opcodes that only build plain data or do bookkeeping (framing, memo, stack marks).
SAFE_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "FLOAT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
        "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
        "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "EMPTY_SET", "ADDITEMS", "FROZENSET",
        "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    }
)  # fmt: skip

_STRING_OPCODES = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPCODES = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_PUSH_OPCODES = frozenset({"PROTO", "FRAME", "STOP", "POP", "POP_MARK", "MEMOIZE"}) | _PUT_OPCODES

#: Deepest nesting of containers accepted (a dataset needs four: dict, dict, list, item).
MAX_DEPTH = 64

_ALLOWED = "only dicts, lists, tuples, sets, numbers, strings, bytes, booleans and None are allowed"

#: Exceptions the unpickler or the opcode scan raise on truncated or corrupt input.
_CORRUPT_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    MemoryError,
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves no globals and no persistent ids.

    ``label`` names the source in error messages (usually the file path).
    """

    def __init__(self, file: BinaryIO, *, label: str = "<pickle>") -> None:
        super().__init__(file)
        self.label = label

    def find_class(self, module: str, name: str) -> Any:
        """Refuse every import: a plain-data pickle never needs one."""
        raise UnsafePickleError(f"{self.label}: refused unsafe pickle: it asks for the global {module}.{name} ({_ALLOWED})")

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids, which would hand object construction to the caller."""
        raise UnsafePickleError(f"{self.label}: refused unsafe pickle: it uses a persistent id ({_ALLOWED})")


def check_opcodes(data: bytes, label: str = "<pickle>") -> int:
    """Scan a pickle's opcodes without running them; return the offset just after ``STOP``.

    Raises :class:`UnsafePickleError` at the first opcode outside :data:`SAFE_OPCODES`,
    naming the global it would load where the pickle says which, and :class:`DataError`
    when the opcode stream itself is malformed or truncated.
    """
    memo: dict[int, Any] = {}
    pushed: list[Any] = [None, None]
    end = 0
    try:
        for opcode, arg, pos in pickletools.genops(data):
            name = opcode.name
            if name not in SAFE_OPCODES:
                raise UnsafePickleError(f"{label}: refused unsafe pickle: {_describe(name, arg, pushed)} ({_ALLOWED})")
            if name in _PUT_OPCODES:
                if not 0 <= arg <= len(data):  # the C unpickler sizes its memo array by the largest index
                    raise DataError(f"{label}: refused pickle: memo index {arg} is beyond what a file of {len(data)} bytes can use")
                memo[arg] = pushed[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1]
            elif name not in _NO_PUSH_OPCODES:
                value = arg if name in _STRING_OPCODES else memo.get(arg) if name in _GET_OPCODES else None
                pushed = [pushed[-1], value]
            end = pos + 1
    except DataError:
        raise
    except _CORRUPT_ERRORS as exc:
        raise DataError(f"{label}: truncated or corrupt pickle ({_first_line(exc)})") from None
    return end


def _describe(name: str, arg: Any, pushed: list[Any]) -> str:
    """What a refused opcode asks for, as precisely as the opcode stream tells."""
    if name in ("GLOBAL", "INST"):
        return f"it asks for the global {str(arg).replace(' ', '.')}"
    if name == "STACK_GLOBAL" and all(isinstance(v, str) for v in pushed):
        return f"it asks for the global {pushed[0]}.{pushed[1]}"
    if name.startswith("EXT"):
        return f"it asks for the global registered as extension code {arg}"
    if name in ("PERSID", "BINPERSID"):
        return "it uses a persistent id"
    return f"it uses the opcode {name}, which loads or calls code"


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "unexpected end of data"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


_WALKED = (str, bytes, bytearray, list, tuple, set, frozenset, dict)


def element_budget(num_bytes: int) -> int:
    """Element uses a pickle of ``num_bytes`` may expand to: each element (or 8 characters
    of a string) costs at least one byte of an honest pickle, so four per byte is generous."""
    return 4 * num_bytes + 4096


def check_size(obj: Any, budget: int, label: str = "<pickle>", max_depth: int = MAX_DEPTH) -> int:
    """Count the elements of ``obj`` as code walking it would meet them; return the count.

    Raises :class:`DataError` when the count passes ``budget`` or containers nest deeper
    than ``max_depth``. The walk is iterative and stops at the budget, so it costs at
    most ``budget`` steps whatever the pickle holds.
    """
    used = 1
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (str, bytes, bytearray)):
            used += len(value) // 8
        elif isinstance(value, (list, tuple, set, frozenset, dict)):
            if depth >= max_depth:
                raise DataError(f"{label}: refused pickle: containers nest deeper than {max_depth} levels")
            size = 2 * len(value) if isinstance(value, dict) else len(value)
            used += size
            if used > budget:
                break
            children = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, _WALKED))
        if used > budget:
            break
    if used > budget:
        raise DataError(
            f"{label}: refused pickle: it expands to more than {budget:,} elements, more than a file of its size "
            "can hold without shared references (a memo-amplification attack, or not a dataset)"
        )
    return used


def safe_load(path_or_file: str | os.PathLike[str] | BinaryIO, *, budget: int | None = None) -> Any:
    """Unpickle plain data from a path or an open binary file, refusing any code.

    The file (or the rest of the stream) must hold exactly one pickle. Raises
    :class:`UnsafePickleError` when the pickle asks for a global, an extension code or
    a persistent id, and :class:`DataError` when the file is missing, empty, truncated,
    corrupt, has bytes after the end of the pickle, or expands past ``budget`` element
    uses (default :func:`element_budget` of the file's size; see :func:`check_size`).
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        label = os.fspath(path_or_file)
        try:
            with open(path_or_file, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise DataError(f"{label}: pickle file not found") from None
        except IsADirectoryError:
            raise DataError(f"{label}: is a folder, not a pickle file") from None
        except OSError as exc:
            raise DataError(f"{label}: cannot read pickle file ({exc.strerror or exc})") from None
    else:
        label = str(getattr(path_or_file, "name", "<pickle stream>"))
        data = path_or_file.read()
    if not data:
        raise DataError(f"{label}: empty pickle file")
    end = check_opcodes(data, label)
    if end != len(data):
        raise DataError(f"{label}: corrupt pickle: {len(data) - end} unexpected bytes after the end of the pickle")
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), label=label).load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise DataError(f"{label}: corrupt pickle: nesting too deep") from None
    except _CORRUPT_ERRORS as exc:
        raise DataError(f"{label}: truncated or corrupt pickle ({_first_line(exc)})") from None
    check_size(obj, element_budget(len(data)) if budget is None else budget, label)
    return obj
