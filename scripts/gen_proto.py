#!/usr/bin/env python3
"""Generate the gRPC/protobuf Python code of kiln.rpc from rpc/*.proto.

    python scripts/gen_proto.py          # rewrite rpc/*_pb2.py, *_pb2_grpc.py, *_pb2.pyi
    python scripts/gen_proto.py --check  # exit 1 if the committed files differ from a fresh generation

The protos import each other as ``kiln/rpc/<name>.proto`` so that the generated code imports
``from kiln.rpc import common_pb2``; the sources are staged under that path in a temporary directory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

RPC = Path(__file__).resolve().parent.parent / "rpc"
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Generate the code for every rpc/*.proto into out_dir; return the files written."""
    from grpc_tools import protoc  # grpcio-tools: a test/dev dependency only

    protos = sorted(RPC.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "kiln" / "rpc"
        stage.mkdir(parents=True)
        for p in protos:
            shutil.copy(p, stage / p.name)
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "protoc",
            f"-I{tmp}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[f"kiln/rpc/{p.name}" for p in protos],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted(stage.iterdir()):
            if f.name.endswith(SUFFIXES):
                shutil.copy(f, out_dir / f.name)
                written.append(out_dir / f.name)
    return written


def check() -> list[str]:
    """Names of generated files that are missing, stale or extra in rpc/."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    committed = {p.name: p.read_bytes() for p in RPC.iterdir() if p.name.endswith(SUFFIXES)}
    return sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = ap.parse_args(argv)
    if args.check:
        stale = check()
        if stale:
            print("generated RPC code is out of date: " + ", ".join(stale), file=sys.stderr)
            print("run: python scripts/gen_proto.py", file=sys.stderr)
            return 1
        print("generated RPC code is up to date")
        return 0
    for p in generate(RPC):
        print(f"wrote {p.relative_to(RPC.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
