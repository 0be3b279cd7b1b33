"""The lookup process loads what a request needs and nothing of the builder (issue 10).

Each check runs in a fresh interpreter, so that no other test's imports count: importing the
handler and building its S3 client load no builder module, no boto3, no SQL parser, no
``pyarrow.compute`` and none of Powertools' resolvers or event classes; and a request answered
from a real snapshot loads no builder module either. ``scripts/package.py`` leaves the same
modules out of the lookup package and checks the package the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scripts.package import BUILDER_MODULES, NOT_IN_LOOKUP, is_one_of, lookup_never_loads

from loaders.store import FileStore
from tests.conftest import EVENTS, customers, publish

ROOT = Path(__file__).resolve().parents[2]
# What a process that has answered from a snapshot may have loaded besides: pyarrow.compute
# (the index is built with it), and pandas, which the dev venv's pyarrow imports on first use.
AFTER_A_LOAD = tuple(n for n in lookup_never_loads() if n not in {"pyarrow.compute", "pandas"})


def modules_after(code: str, **env: str) -> list[str]:
    """The names in ``sys.modules`` once ``code`` has run in a fresh interpreter."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_LAMBDA_")}
    environ.update(AWS_DEFAULT_REGION="us-east-1", **env)
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_the_names_cover_every_builder_module() -> None:
    names = lookup_never_loads()

    assert is_one_of("loaders.ops_gc", names)
    assert is_one_of("loaders.build", names)
    assert is_one_of("boto3.session", names)
    assert not is_one_of("loaders.store", names)
    assert not is_one_of("loaders.snapshot", names)
    assert len(names) == len(BUILDER_MODULES) + len(NOT_IN_LOOKUP)


def test_importing_the_handler_and_its_s3_client_loads_nothing_it_does_not_need() -> None:
    loaded = modules_after(
        "import service.handler\n"
        "from loaders.store import make_s3_client\n"
        "from service.settings import DEFAULT_STORAGE\n"
        "make_s3_client(DEFAULT_STORAGE)"
    )

    assert "botocore.session" in loaded
    assert [m for m in loaded if is_one_of(m, lookup_never_loads())] == []


def test_answering_from_a_snapshot_loads_no_builder_module(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    publish(FileStore(root), customers(["C000000001", "C000000002"]))
    event = json.loads((EVENTS / "http_v2_get_customer.json").read_text())

    loaded = modules_after(
        "import service.handler as h\n"
        f"answer = h.default_function()({event!r}, None)\n"
        "assert answer['statusCode'] == 200, answer",
        SNAPSHOT_URI=root.as_uri(),
    )

    assert "loaders.index" in loaded
    assert [m for m in loaded if is_one_of(m, AFTER_A_LOAD)] == []
