"""Generates the gRPC stubs of package `runstream.v1` into runstream/v1/ of this package, from the repository's
proto/ with grpc_tools' protoc (grpcio-tools 1.85.1, as scripts/test-deps.sh installs).

    python sdk/python/gen_stubs.py          # regenerate runstream/v1/*_pb2*.py
    python sdk/python/gen_stubs.py --check  # exit 1 if the committed stubs differ from what proto/ gives

The generation: every .proto under proto/, the well-known types from the protos
bundled with grpc_tools; the `*_pb2_grpc.py` files import by package path (`runstream.v1....`), which is this
package's own.
"""

import filecmp
import pathlib
import shutil
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parents[1] / "proto"
TARGET = HERE / "runstream" / "v1"
# Kept by hand in runstream/v1/ (not generated); everything else there is.
HANDWRITTEN = {"__init__.py"}


def generate(out_dir):
    """Runs protoc over proto/ into `out_dir`; returns the directory of package runstream.v1 in it."""
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
    return out / "runstream" / "v1"


def generated_files(directory):
    return sorted(p.name for p in pathlib.Path(directory).glob("*.py") if p.name not in HANDWRITTEN)


def write():
    with tempfile.TemporaryDirectory(prefix="runstream-stubs-") as tmp:
        fresh = generate(tmp)
        for name in generated_files(TARGET):
            (TARGET / name).unlink()
        for name in generated_files(fresh):
            shutil.copyfile(fresh / name, TARGET / name)
    print(f"stubs generated in {TARGET}")


def check():
    """Returns the names of the stubs that differ from (or are missing from, or not made by) proto/."""
    with tempfile.TemporaryDirectory(prefix="runstream-stubs-") as tmp:
        fresh = generate(tmp)
        want, have = generated_files(fresh), generated_files(TARGET)
        stale = sorted(set(want) ^ set(have))
        stale += [n for n in want if n in have and not filecmp.cmp(fresh / n, TARGET / n, shallow=False)]
    return sorted(stale)


def main():
    if sys.argv[1:] == ["--check"]:
        stale = check()
        if stale:
            print(
                f"the stubs in {TARGET} are stale against {PROTO_ROOT}: {', '.join(stale)}; "
                "regenerate them with `python sdk/python/gen_stubs.py` and commit the result",
                file=sys.stderr,
            )
            sys.exit(1)
        print(f"the stubs in {TARGET} match {PROTO_ROOT}")
    elif not sys.argv[1:]:
        write()
    else:
        sys.exit("usage: gen_stubs.py [--check]")


if __name__ == "__main__":
    main()
