"""Build the Lambda deployment package that template.yaml describes, prune it, and measure it.

    python scripts/package.py --out build/lambda [--check]

SAM calls this through the Makefile (``BuildMethod: makefile`` -> ``make build-LookupFunction``
with ``ARTIFACTS_DIR``). It installs manylinux x86_64 wheels for the runtime's Python, copies
``service/`` and ``loaders/``, drops the parts of pyarrow we never load (Flight, ORC, headers,
tests, duplicate sonames), and reports the unzipped size against Lambda's 250 MB limit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 250
PRUNE_GLOBS = (
    "pyarrow/include",
    "pyarrow/src",
    "pyarrow/tests",
    "pyarrow/*.pyx",
    "pyarrow/*.pxd",
    "pyarrow/*.pxi",
    "pyarrow/includes",
    "pyarrow/interchange",
    "pyarrow/*flight*",
    "pyarrow/_orc*",
    "pyarrow/orc.py",
    "pyarrow/*gandiva*",
    "pyarrow/_cuda*",
    # The wheel ships each library three times (.so, .so.N, .so.N.M.P); only .so.N is loaded.
    "pyarrow/libarrow_python*.so",
    "pyarrow/libarrow_python*.so.*.*.*",
    "numpy/*/tests",
    "numpy/tests",
    "numpy/f2py",
    "numpy/distutils",
    "numpy/_pyinstaller",
    "*/__pycache__/*.opt-*.pyc",
)
# botocore ships models for every AWS service (~28 MB); the functions call these only.
BOTOCORE_SERVICES = {"s3", "athena", "sts"}


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def build(out: Path, python_version: str) -> dict[str, float]:
    """Install, copy and prune into ``out``; return sizes in MB."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--target", str(out),
            # python3.13 runs on Amazon Linux 2023 (glibc 2.34): manylinux_2_28 wheels load there.
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--implementation", "cp",
            "--python-version", python_version, "--only-binary=:all:", "--upgrade",
            "-r", str(ROOT / "requirements-lambda.txt"),
        ],
        check=True,
    )  # fmt: skip
    for package in ("service", "loaders"):
        shutil.copytree(
            ROOT / package,
            out / package,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    before = _size_mb(out)
    models = out / "botocore" / "data"
    for service in models.iterdir() if models.is_dir() else ():
        if service.is_dir() and service.name not in BOTOCORE_SERVICES:
            shutil.rmtree(service)
    for pattern in PRUNE_GLOBS:
        for path in out.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return {"unpruned_mb": round(before, 1), "unzipped_mb": round(_size_mb(out), 1)}


def check_imports(out: Path) -> None:
    """Import the handlers and parse a Parquet file from the pruned package only."""
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1]];"
        "import io, pyarrow as pa, pyarrow.parquet as pq, service.handler, loaders.build;"
        "import boto3; boto3.client('s3', region_name='us-east-1');"
        "boto3.client('athena', region_name='us-east-1');"
        "assert boto3.__file__.startswith(sys.argv[1]), boto3.__file__;"
        "buf = io.BytesIO(); pq.write_table(pa.table({'k': ['a']}), buf, compression='zstd');"
        "assert pq.read_table(pa.BufferReader(buf.getvalue())).num_rows == 1;"
        "assert pa.__file__.startswith(sys.argv[1]), pa.__file__"
    )
    subprocess.run([sys.executable, "-I", "-c", probe, str(out.resolve())], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--python-version", default="3.13")
    parser.add_argument("--check", action="store_true", help="import-test the pruned package")
    args = parser.parse_args()
    sizes = build(args.out, args.python_version)
    if args.check:
        check_imports(args.out)
    report = {**sizes, "limit_mb": LIMIT_MB, "fits": sizes["unzipped_mb"] < LIMIT_MB}
    print(json.dumps(report))
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
