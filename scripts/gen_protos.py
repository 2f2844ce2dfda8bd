"""Generate Python code for protos/torl/v1/*.proto into services/v1 (importable as torl.v1).

Generated code is never committed; the install step runs this. It is idempotent and fast.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "services" / "v1"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "torl" / "v1").glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--pyi_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        gen = Path(tmp) / "torl" / "v1"
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(gen, OUT)
    (OUT / "__init__.py").write_text('"""Generated from protos/torl/v1 by scripts/gen_protos.py; do not edit."""\n')
    print(f"[protos] generated {len(protos)} files into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
