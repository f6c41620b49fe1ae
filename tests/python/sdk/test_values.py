"""runstream.values (the one converter of the client and the worker) against protobuf's json_format, which the client
used before: the same Value for every JSON value, the same Python value back, the same errors' kinds (TypeError where
json_format says ParseError), and messages that say where the bad part is. No server.

Usage: python test_values.py
"""

import json
import math

from google.protobuf import json_format, struct_pb2

from checks import check, exit_with_summary
from runstream import client, values

NESTED = {
    "name": "photo-1.jpg", "size": 1234, "ratio": 0.75, "ok": True, "no": False, "none": None, "tags": ["a", "b"],
    "dims": {"w": 640, "h": 480, "deep": {"list": [1, [2, [3, {}]], []], "empty": {}}}, "unicode": "ünï ✓",
}
SAMPLES = [
    0, 1, -1, 3.5, -0.0, 1e300, 2**53, 2**53 + 1, 2**60, -2**63, 1e20, 1.5e-300, "", "x", True, False, None, [], {},
    [None, True, 1, "s"], (1, 2), {"a": (1, [2, (3,)])}, NESTED, [NESTED, NESTED],
]


def parse_dict(obj):
    return json_format.ParseDict(obj, struct_pb2.Value())


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)


def main():
    for obj in SAMPLES:
        name = repr(obj)[:40]
        mine, theirs = values.to_value(obj), parse_dict(obj)
        check(f"to_value {name}: the same Value as json_format", mine == theirs, (mine, theirs))
        check(f"to_value {name}: the same bytes", mine.SerializeToString(deterministic=True)
              == theirs.SerializeToString(deterministic=True))
        back = values.to_python(theirs)
        check(f"to_python {name}: as whole_numbers(MessageToDict)",
              back == client.whole_numbers(json_format.MessageToDict(theirs)), back)
        same_types = json.dumps(back) == json.dumps(client.whole_numbers(json_format.MessageToDict(theirs)))
        check(f"to_python {name}: ints stay ints, floats floats", same_types, back)
    check("to_struct: as json_format", values.to_struct(NESTED) == json_format.ParseDict(NESTED, struct_pb2.Struct()))
    check("the client's names are the values module's",
          (client.to_value, client.from_value, client.to_struct) == (values.to_value, values.from_value,
                                                                      values.to_struct))
    empty = struct_pb2.Value()
    check("to_python: a Value with no kind is None", values.to_python(empty) is None)

    # Errors: the same kinds as json_format (ParseError becomes TypeError), with where the bad part is.
    for obj, kind, where in [
        (10**400, "OverflowError", "value is an integer of 401 digits"),
        ({"a": [1, {"b": -10**400}]}, "OverflowError", "value['a'][1]['b'] is an integer of 401 digits"),
        ({"a": object()}, "TypeError", "value['a'] is of type object"),
        ([b"x"], "TypeError", "value[0] is of type bytes"),
        ({1: 2}, "TypeError", "value has a key of type int"),
        (10**5000, "OverflowError", "an integer of 5001 digits"),
    ]:
        got = outcome(values.to_value, obj)
        theirs = outcome(parse_dict, obj)
        check(f"to_value error {where}: {kind}", got[0] == kind and where in got[1], (got, theirs))
        check(f"to_value error {where}: json_format fails too", theirs[0] in (kind, "ParseError"), theirs)
    for bad in (math.nan, math.inf, -math.inf):
        value = values.to_value(bad)
        check(f"to_value {bad}: stored as json_format does", value == parse_dict(bad))
        got, theirs = outcome(values.to_python, value), outcome(json_format.MessageToDict, value)
        check(f"to_python {bad}: the ValueError of json_format", got == theirs and got[0] == "ValueError", (got, theirs))

    # The worker's form: a JSON round trip first (tuples, non-string keys as json.dumps has them), `what` named.
    check("json_value: keys as json.dumps makes them",
          values.to_python(values.json_value({1: (2, 3)}, "x")) == {"1": [2, 3]})
    got = outcome(values.json_value, {"n": 10**400}, "the task's output")
    check("json_value: an integer too large for a double names the output and the path",
          got[0] == "OverflowError" and got[1].startswith("the task's output cannot be sent: value['n'] is an integer "
                                                          "of 401 digits"), got)
    got = outcome(values.json_value, {"s": {1, 2}}, "ctx.write's value")
    check("json_value: not JSON names what", got[0] == "TypeError" and got[1].startswith("ctx.write's value is not JSON"),
          got)
    exit_with_summary()


if __name__ == "__main__":
    main()
