"""Generated protobuf and gRPC stubs of package runstream.v1 (see sdk/python/gen_stubs.py)."""
