"""Generates the Python gRPC stubs of runstream from proto/ with grpc_tools' protoc.

Usable as a module (`generate(out_dir)`) or as a script: `python tests/python/gen_stubs.py [OUT_DIR]`
(default: target/python-stubs). The well-known types (google/protobuf/*.proto) come from the protos bundled
with grpc_tools. The generated `*_pb2_grpc.py` files import by package path (`runstream.v1....`), so the
output root must be on sys.path.
"""

import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"


def generate(out_dir):
    import grpc_tools
    from grpc_tools import protoc

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
    # Make the generated directories importable as (regular) packages.
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        if d != out:
            (d / "__init__.py").touch()
    return out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "target" / "python-stubs")
    out = generate(out_dir)
    print(f"stubs generated in {out}")


if __name__ == "__main__":
    main()
