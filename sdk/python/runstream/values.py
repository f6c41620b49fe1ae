"""JSON values to and from google.protobuf.Value, for the client and the worker alike.

They give what protobuf's `json_format.ParseDict` / `MessageToDict` give for a Value, built directly: json_format's
generic walk costs several times as much, and the worker converts on every task (docs/performance.md, "What the
Python worker spends per task"). Two differences, both on errors only: a value that is not JSON raises TypeError
(json_format: ParseError) and an integer too large for a double raises OverflowError saying where it is (as
json_format, whose message does not say); both messages give the path of the offending part.
"""

import json
import math

from google.protobuf import struct_pb2

# Integral numbers up to this come back as ints: a double holds every integer up to 2^53 exactly.
_EXACT_INT = 2**53


def whole_numbers(obj):
    """`obj` with every integral float made an int: JSON numbers travel as doubles (google.protobuf.Value), and
    `{"count": 3}` should come back as 3, as grpcurl prints it, not 3.0."""
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() and abs(obj) <= _EXACT_INT else obj
    if isinstance(obj, dict):
        return {k: whole_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [whole_numbers(v) for v in obj]
    return obj


def to_python(value):
    """A google.protobuf.Value as a Python value, integral numbers as ints (as `whole_numbers(MessageToDict(value))`;
    ValueError for NaN and infinities, which JSON has no way to write)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        n = value.number_value
        if math.isinf(n) or math.isnan(n):
            # json_format's error, word for word.
            name = "NaN" if math.isnan(n) else "Infinity"
            raise ValueError(f"Fail to serialize {name} for Value.number_value, which would parse as string_value")
        return int(n) if n.is_integer() and abs(n) <= _EXACT_INT else n
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return {k: to_python(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [to_python(v) for v in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    # null_value, or no kind set.
    return None


# The client's historical name (it used json_format).
from_value = to_python


def field_python(message, field):
    """The Value field `field` of `message` as a Python value; None when it is not set."""
    return to_python(getattr(message, field)) if message.HasField(field) else None


def _set(value, obj):
    # The hot path: no checks beyond what the protobuf setters do; `_explain` says what went wrong afterwards.
    if isinstance(obj, dict):
        struct = value.struct_value
        # Marks the struct set even when `obj` is empty.
        struct.SetInParent()
        fields = struct.fields
        for k, v in obj.items():
            _set(fields[k], v)
    elif isinstance(obj, (list, tuple)):
        values = value.list_value
        values.SetInParent()
        add = values.values.add
        for v in obj:
            _set(add(), v)
    elif obj is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        value.bool_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    elif isinstance(obj, (int, float)):
        value.number_value = obj
    else:
        raise TypeError(f"{type(obj).__name__}")


def _digits(n):
    try:
        return len(str(abs(n)))
    except ValueError:
        # Past Python's int-to-str limit (4,300 digits): an estimate is enough for the message.
        return int(abs(n).bit_length() * math.log10(2)) + 1


def _explain(obj, path="value"):
    """The first part of `obj` that cannot be a Value: (exception class, message), or None."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                return TypeError, f"{path} has a key of type {type(k).__name__} ({k!r}); JSON keys are strings"
            found = _explain(v, f"{path}[{k!r}]")
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _explain(v, f"{path}[{i}]")
            if found:
                return found
    elif obj is None or isinstance(obj, (bool, str, float)):
        return None
    elif isinstance(obj, int):
        try:
            float(obj)
        except OverflowError:
            return OverflowError, (
                f"{path} is an integer of {_digits(obj)} digits, too large for a JSON number (a double, at most "
                "about 1.8e308)"
            )
    else:
        return TypeError, f"{path} is of type {type(obj).__name__}, which is not JSON"
    return None


def set_value(value, obj):
    """Sets the google.protobuf.Value `value` to `obj` (dicts with string keys, lists and tuples, strings, numbers,
    bools, None), as `json_format.ParseDict(obj, value)` would. TypeError for what is not JSON, OverflowError for an
    integer too large for a double; either names where in `obj` it is."""
    try:
        _set(value, obj)
    except (TypeError, ValueError, OverflowError) as e:
        found = _explain(obj)
        if found is None:
            raise
        cls, message = found
        raise cls(message) from e


def to_value(obj):
    """A JSON-like Python value as a google.protobuf.Value (see `set_value`)."""
    value = struct_pb2.Value()
    set_value(value, obj)
    return value


def to_struct(obj):
    """A dict with string keys as a google.protobuf.Struct (see `set_value`)."""
    if not isinstance(obj, dict):
        raise TypeError(f"a Struct is made from a dict, not {type(obj).__name__}")
    value = struct_pb2.Value()
    set_value(value, obj)
    return value.struct_value


def json_value(obj, what):
    """`obj` as a google.protobuf.Value after a JSON round trip (so as `json.dumps` sees it: tuples are lists, keys
    strings, NaN allowed); `what` (e.g. "the task's output") begins the message of the TypeError raised for what
    is not JSON and of the OverflowError raised for an integer too large for a double."""
    try:
        obj = json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON: {e}") from None
    value = struct_pb2.Value()
    try:
        set_value(value, obj)
    except OverflowError as e:
        raise OverflowError(f"{what} cannot be sent: {e}") from None
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON: {e}") from None
    return value
