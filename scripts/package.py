"""Build one Lambda function's deployment package: install, copy, prune, compile, measure.

    python scripts/package.py --function lookup|builder --out DIR [--check] [--zip]

SAM calls this through the Makefile (``BuildMethod: makefile`` -> ``make build-LookupFunction``
or ``make build-BuilderFunction``, with ``ARTIFACTS_DIR``). The two functions get separate
packages, each with only what its process loads:

- lookup: pyarrow, numpy, cachetools, Powertools and botocore (not boto3: the S3 client is
  botocore's) from ``requirements-lookup.txt``; ``service/`` and the snapshot-reading half of
  ``loaders/``; botocore models for s3 and sts only. No SQL parser, no Athena or Glue model.
- builder: ``requirements-builder.txt`` (boto3 and sqlparse too) and ``loaders/``; models for
  s3, sts, athena and glue.

Both drop the parts of pyarrow and numpy we never load (Flight, ORC, headers, tests, duplicate
sonames) and ship every module compiled: ``.pyc`` files in ``__pycache__`` beside the ``.py``,
checked by hash, never by timestamp (``unchecked-hash``). Lambda's ``/var/task`` is read-only,
and a zip keeps modification times only to two seconds, so a timestamp-checked ``.pyc`` may
look stale there and be compiled again, in memory, on every cold start. The ``.py`` files stay:
tracebacks in the logs then show the lines, for about a fifth of the package.

``--check`` imports each package in an isolated interpreter (nothing but the package and the
standard library on ``sys.path``) and, for the lookup, asserts that no builder module, boto3,
SQL parser or ``pyarrow.compute`` is loaded by the import or by building its S3 client.
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 250  # Lambda's limit on a function's unzipped code
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
    # Remote filesystems: pyarrow.fs imports each in a try (we read S3 through botocore), and
    # only these modules need libarrow_s3 (17 MB).
    "pyarrow/_s3fs*",
    "pyarrow/libarrow_s3*",
    "pyarrow/_gcsfs*",
    "pyarrow/_azurefs*",
    "pyarrow/_hdfs*",
    "pyarrow/_pyarrow_cpp_tests*",
    # The wheel ships each library three times (.so, .so.N, .so.N.M.P); only .so.N is loaded.
    "pyarrow/libarrow_python*.so",
    "pyarrow/libarrow_python*.so.*.*.*",
    "numpy/*/tests",
    "numpy/tests",
    "numpy/f2py",
    "numpy/distutils",
    "numpy/_pyinstaller",
    "bin",  # console scripts pip writes (jp.py, f2py, ...): nothing in Lambda runs them
)
# Modules of ours that the lookup function never loads: the builder's half of loaders/ and the
# development server. Its package leaves them out; tests/unit/test_lookup_imports.py checks the
# lookup process loads none of them, nor these libraries.
BUILDER_MODULES = (
    "loaders/build.py",
    "loaders/cli.py",
    "loaders/engines.py",
    "loaders/fingerprint.py",
    "loaders/ops_*.py",
    "loaders/publish.py",
    "loaders/readback.py",
    "loaders/records.py",
    "loaders/settings.py",
    "loaders/stream.py",
    "loaders/validate.py",
)
LOOKUP_LEAVES_OUT = (*BUILDER_MODULES, "service/local_server.py")
NOT_IN_LOOKUP = (
    "boto3",
    "s3transfer",
    "sqlparse",
    "duckdb",
    "pandas",
    "pyarrow.compute",
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.utilities.data_classes",
)


@dataclass(frozen=True, slots=True)
class Function:
    """What goes into one function's package."""

    requirements: str
    code: tuple[str, ...]  # our packages, copied whole but for ``leave_out``
    leave_out: tuple[str, ...]  # globs under ROOT
    botocore_services: frozenset[str]  # botocore ships ~28 MB of models for every AWS service
    probe: str  # what --check runs with only the package on sys.path
    never_loads: tuple[str, ...] = ()  # modules the probe must not have loaded


def lookup_never_loads() -> tuple[str, ...]:
    """Modules the lookup process must never load; a name ending in "_" is a prefix."""
    ours = (
        pattern.removesuffix(".py").replace("/", ".").rstrip("*") for pattern in BUILDER_MODULES
    )
    return (*ours, *NOT_IN_LOOKUP)


def is_one_of(module: str, names: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``names``, inside one, or matches a prefix ending in "_"."""
    return any(
        module == name
        or module.startswith(f"{name}.")
        or (name.endswith("_") and module.startswith(name))
        for name in names
    )


_LOOKUP_PROBE = """
import os
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
import pyarrow.parquet
import service.handler
from loaders.store import make_s3_client
from service.settings import DEFAULT_STORAGE
make_s3_client(DEFAULT_STORAGE)
"""
_BUILDER_PROBE = """
import os
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
import boto3, loaders.build
from loaders.store import StorageBudget, make_s3_client
make_s3_client(StorageBudget(1, 2, 2)); boto3.client("athena"); boto3.client("glue")
assert boto3.__file__.startswith(sys.argv[1]), boto3.__file__
"""
# The probe's last step, with the names as JSON in argv[2] (is_one_of's test, inlined).
_NEVER_LOADED = """
names = json.loads(sys.argv[2])
loaded = [m for m in sys.modules if any(m == n or m.startswith(n + ".")
          or (n.endswith("_") and m.startswith(n)) for n in names)]
assert not loaded, f"loaded {sorted(loaded)}"
"""
# Then, in both: Parquet written and read back by the package's own pyarrow.
_ROUND_TRIP = """
import io, pyarrow as pa, pyarrow.parquet as pq
buf = io.BytesIO(); pq.write_table(pa.table({"k": ["a"]}), buf, compression="zstd")
assert pq.read_table(pa.BufferReader(buf.getvalue())).num_rows == 1
assert pa.__file__.startswith(sys.argv[1]), pa.__file__
"""
FUNCTIONS = {
    "lookup": Function(
        "requirements-lookup.txt",
        ("service", "loaders"),
        LOOKUP_LEAVES_OUT,
        frozenset({"s3", "sts"}),
        _LOOKUP_PROBE,
        lookup_never_loads(),
    ),
    "builder": Function(
        "requirements-builder.txt",
        ("loaders",),
        (),
        frozenset({"s3", "sts", "athena", "glue"}),
        _BUILDER_PROBE,
    ),
}


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def install(function: Function, out: Path, python_version: str) -> None:
    """pip-install the function's requirements as manylinux x86_64 wheels into ``out``."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--target", str(out),
            # python3.13 runs on Amazon Linux 2023 (glibc 2.34): manylinux_2_28 wheels load there.
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--implementation", "cp",
            "--python-version", python_version, "--only-binary=:all:", "--upgrade",
            "--no-compile",  # compiled below, once, with hash-checked .pyc files
            "-r", str(ROOT / function.requirements),
        ],
        check=True,
    )  # fmt: skip


def copy_code(function: Function, out: Path) -> None:
    """Copy our packages into ``out``, leaving out the modules the function never loads."""
    left_out = {path for pattern in function.leave_out for path in ROOT.glob(pattern)}
    for package in function.code:
        shutil.copytree(
            ROOT / package,
            out / package,
            dirs_exist_ok=True,
            ignore=lambda folder, names: {
                name
                for name in names
                if name == "__pycache__" or name.endswith(".pyc") or Path(folder, name) in left_out
            },
        )


def prune(function: Function, out: Path) -> None:
    """Drop what the function never loads: other services' models, pyarrow and numpy extras."""
    models = out / "botocore" / "data"
    for service in models.iterdir() if models.is_dir() else ():
        if service.is_dir() and service.name not in function.botocore_services:
            shutil.rmtree(service)
    for pattern in PRUNE_GLOBS:
        for path in out.glob(pattern):
            _remove(path)
    for cache in out.rglob("__pycache__"):  # whatever pip or an earlier build left
        shutil.rmtree(cache)


def compile_all(out: Path) -> None:
    """Compile every module for this interpreter, hash-checked (see the module docstring)."""
    ok = compileall.compile_dir(
        out,
        quiet=1,
        workers=0,
        invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        raise RuntimeError(f"some modules under {out} do not compile")


def zipped_mb(out: Path) -> float:
    """The size of ``out`` as a deployment zip (deflate, as ``sam package`` makes it)."""
    archive = out.with_name(out.name + ".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(out.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(out))
    size = archive.stat().st_size / 1e6
    archive.unlink()
    return size


def build(name: str, out: Path, python_version: str) -> dict[str, float]:
    """Install, copy, prune and compile one function's package into ``out``; sizes in MB."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != python_version:
        # .pyc files are per Python version: others would be ignored, and compiled again
        # (in memory, /var/task is read-only) on every cold start.
        raise SystemExit(f"run with Python {python_version}, not {sys.version.split()[0]}")
    function = FUNCTIONS[name]
    out.mkdir(parents=True, exist_ok=True)
    install(function, out, python_version)
    copy_code(function, out)
    unpruned = _size_mb(out)
    prune(function, out)
    compile_all(out)
    return {"unpruned_mb": round(unpruned, 1), "unzipped_mb": round(_size_mb(out), 1)}


def check(name: str, out: Path) -> None:
    """Run the function's probe in an interpreter that sees only the package and the stdlib,
    then check that every module has its compiled file."""
    function = FUNCTIONS[name]
    probe = "import json, sys; sys.path[:0] = [sys.argv[1]]\n"
    probe += function.probe + _NEVER_LOADED + _ROUND_TRIP
    never = json.dumps(function.never_loads)
    # -I: no user site or environment; -S: no site-packages (the dev venv's pandas, boto3, ...).
    subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(out.resolve()), never], check=True)
    stale = [
        str(py.relative_to(out))
        for py in out.rglob("*.py")
        if not (
            py.parent / "__pycache__" / f"{py.stem}.{sys.implementation.cache_tag}.pyc"
        ).exists()
    ]
    if stale:
        raise RuntimeError(f"{len(stale)} modules have no .pyc, e.g. {stale[:5]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--function", choices=sorted(FUNCTIONS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--python-version", default="3.13")
    parser.add_argument("--check", action="store_true", help="import-test the package")
    parser.add_argument("--zip", action="store_true", help="also report the zipped size")
    args = parser.parse_args()
    sizes = build(args.function, args.out, args.python_version)
    if args.check:
        check(args.function, args.out)
    if args.zip:
        sizes["zipped_mb"] = round(zipped_mb(args.out), 1)
    fits = sizes["unzipped_mb"] < LIMIT_MB
    report = {"function": args.function, **sizes, "limit_mb": LIMIT_MB, "fits": fits}
    print(json.dumps(report))
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
