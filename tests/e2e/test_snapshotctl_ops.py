"""``snapshotctl`` operator commands end to end, through ``main`` with real arguments, against a
``file://`` root and an ``s3://`` root on a moto server (reached through AWS_ENDPOINT_URL_S3).

Each command prints a table, or JSON with ``--json``; a refusal is one line on stderr and exit
status 1, never a Python trace; the progress bar appears only on a terminal.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
from botocore.awsrequest import AWSResponse

import loaders.cli
from loaders.build import Outcome
from loaders.cli import EXIT_FAILURE, EXIT_STATUS, BarProgress, main
from loaders.manifest import DATA_NAME, POINTER_KEY, snapshot_key, try_read_pointer
from loaders.ops_pointer import rollback
from loaders.records import read_latest
from loaders.store import FileStore, S3Store
from tests.conftest import BUCKET, PREFIX, T0, customers, publish
from tests.integration.rawstore import flip_bytes, raw_read, raw_write

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from loaders.store import ObjectStore

IDS = [f"C{i:09d}" for i in range(1, 21)]
OPERATOR = "alice"


@pytest.fixture(autouse=True)
def operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """getpass reads LOGNAME first: the pin's ``by``."""
    monkeypatch.setenv("LOGNAME", OPERATOR)


# What differs by store is covered on both; the rest runs on file:// only.
FILE_ONLY = pytest.mark.parametrize("root", ["file"], indirect=True)


@pytest.fixture(params=["file", "moto_server"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "snapshots")
    return S3Store(request.getfixturevalue("server_s3"), BUCKET, PREFIX)


@pytest.fixture
def file_root(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "snapshots")


def uri(store: ObjectStore) -> str:
    return store.uri


def three(store: ObjectStore) -> list[str]:
    """v0, v1, v2 an hour apart; CURRENT = v2 (20 rows, segment "ent"), previous = [v1, v0]."""
    return [
        publish(store, customers(IDS[:18]), T0),
        publish(store, customers(IDS[:19]), T0 + timedelta(hours=1)),
        publish(store, customers(IDS, segment="ent"), T0 + timedelta(hours=2)),
    ]


@pytest.fixture
def versions(root: ObjectStore) -> list[str]:
    return three(root)


@pytest.fixture
def file_versions(file_root: FileStore) -> list[str]:
    return three(file_root)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must be refused; its one stderr line."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (EXIT_FAILURE, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"snapshotctl {argv[0]}: ")
    return err.rstrip("\n")


# --- each command, table and JSON, on both stores ---------------------------------------------


def test_status_prints_the_current_version_pin_and_kept_versions(
    root: ObjectStore, versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "status", "--root", uri(root))

    lines = out.splitlines()
    assert code == 0
    assert lines[1].startswith(f"current     {versions[2]} (age ")
    assert lines[2] == "pin         not pinned"
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["VERSION", "STATE", "ROWS", "MB", "CREATED_AT", "MARKS"]
    assert [row.split()[0] for row in table[1:]] == versions[::-1]
    assert table[1].endswith("current") and table[2].endswith("previous")


@FILE_ONLY
def test_status_json_shape(
    root: ObjectStore, versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "status", "--root", uri(root))

    assert (doc["current"], doc["pinned"], doc["previous"]) == (
        versions[2],
        False,
        versions[1::-1],
    )
    assert [v["version"] for v in doc["versions"]] == versions[::-1]
    assert set(doc["versions"][0]) == {
        "version", "state", "rows", "bytes", "created_at", "current", "previous", "pinned",
    }  # fmt: skip


@FILE_ONLY
def test_diff_prints_counts_and_example_keys_to_the_terminal_only(
    root: ObjectStore,
    versions: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        code, out, _ = run(capsys, "diff", versions[0], versions[2], "--root", uri(root))

    assert code == 0
    assert "added        2  C000000019, C000000020" in out
    assert "changed     18  C000000001" in out
    assert "C0000" not in caplog.text


def test_diff_json_shape(
    root: ObjectStore, versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "diff", versions[0], versions[2], "--root", uri(root))

    assert {k: doc[k] for k in ("added", "removed", "changed", "old_rows", "new_rows")} == {
        "added": 2,
        "removed": 0,
        "changed": 18,
        "old_rows": 18,
        "new_rows": 20,
    }
    assert (doc["columns"], doc["examples"]["added"]) == ([], ["C000000019", "C000000020"])
    assert doc["changed_by_column"]["segment"] == 18


def test_verify_exits_0_for_a_good_version_and_1_with_the_reason_for_a_bad_one(
    root: ObjectStore, versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    key = snapshot_key(versions[1], DATA_NAME)
    raw_write(root, key, flip_bytes(raw_read(root, key)))

    code, out, _ = run(capsys, "verify", versions[2], "--root", uri(root))
    line = refused(capsys, "verify", versions[1], "--root", uri(root))

    assert code == 0 and out.startswith(f"ok  {versions[2]}: 20 rows")
    assert line.startswith(f"snapshotctl verify: {versions[1]} failed: ")
    assert "sha256 mismatch" in line


def test_verify_json_of_a_bad_version_exits_1(
    file_root: FileStore, file_versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    key = snapshot_key(file_versions[1], DATA_NAME)
    raw_write(file_root, key, flip_bytes(raw_read(file_root, key)))

    code, out, _ = run(capsys, "verify", file_versions[1], "--root", file_root.uri, "--json")

    assert code == EXIT_FAILURE
    assert json.loads(out)["ok"] is False


def test_rollback_pins_the_previous_version_and_unpin_releases_it(
    root: ObjectStore, versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rolled = run_json(capsys, "rollback", "--root", uri(root), "--quiet")
    shown = run_json(capsys, "status", "--root", uri(root))
    released = run_json(capsys, "unpin", "--root", uri(root))

    assert (rolled["before"], rolled["after"], rolled["pin"]["by"]) == (
        versions[2],
        versions[1],
        OPERATOR,
    )
    assert rolled["pin"]["reason"] == f"rollback from {versions[2]}"
    assert rolled["verification"]["ok"] is True
    assert (shown["current"], shown["pin"]["by"]) == (versions[1], OPERATOR)
    assert (released["after"], released["pinned"]) == (versions[1], False)
    assert try_read_pointer(root).pin is None


def test_rollback_prints_what_moved(
    file_root: FileStore, file_versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "rollback", "--root", file_root.uri, "--reason", "bad segments")

    assert code == 0
    assert out.splitlines()[0] == f"rollback: CURRENT {file_versions[2]} -> {file_versions[1]}"
    assert f"pinned by {OPERATOR} at " in out and out.count(": bad segments") == 1


def test_pin_then_announce_is_refused_until_forced(
    root: ObjectStore, versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    pinned = run_json(capsys, "pin", versions[0], "--reason", "QA", "--root", uri(root))
    line = refused(capsys, "announce", versions[2], "--root", uri(root))
    forced = run_json(capsys, "announce", versions[2], "--force", "--root", uri(root))

    assert (pinned["after"], pinned["pin"]["reason"]) == (versions[0], "QA")
    assert line.startswith(f"snapshotctl announce: CURRENT is pinned to {versions[0]} by alice")
    assert line.endswith("`unpin` first, or pass --force to announce and drop the pin")
    assert (forced["after"], forced["pinned"]) == (versions[2], False)


def test_gc_dry_run_lists_then_gc_deletes(
    root: ObjectStore, versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Published last but stamped first: never announced, so nothing but its age is left.
    extra = publish(root, customers(IDS[:17]), T0 - timedelta(days=3))
    planned = run_json(capsys, "gc", "--keep", "1", "--dry-run", "--root", uri(root))
    done = run_json(capsys, "gc", "--keep", "1", "--root", uri(root))

    kept = {k["version"]: k["reasons"] for k in done["kept"]}
    assert planned["dry_run"] is True and planned["deleted"] == done["deleted"]
    # data, blocks, block index, manifest; no changes.json: superseded
    assert done["deleted"] == [{"version": extra, "objects": 4}]
    assert kept == {versions[2]: ["current", "newest 1"], versions[1]: ["previous"],
                    versions[0]: ["previous"]}  # fmt: skip


def test_gc_table(
    file_root: FileStore, file_versions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "gc", "--keep", "1", "--dry-run", "--root", file_root.uri)

    assert code == 0
    assert out.splitlines()[0].split() == ["VERSION", "ACTION", "WHY"]
    assert out.splitlines()[-1] == "would delete 0 version(s), kept 3"


# --- one-line refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["verify", "latest"], "snapshotctl verify: bad version 'latest': expected "),
        (["rollback", "2026-11-23"], "snapshotctl rollback: bad version '2026-11-23': expected "),
        (
            ["pin", "20200101T000000Z-00000000", "--reason", "x"],
            "snapshotctl pin: version 20200101T000000Z-00000000 is not kept under ",
        ),
        (
            ["diff", "20200101T000000Z-00000000", "20200101T000000Z-00000001"],
            "snapshotctl diff: version 20200101T000000Z-00000000 is not kept under ",
        ),
    ],
    ids=["bad-version", "bad-version-rollback", "not-kept-pin", "not-kept-diff"],
)
def test_a_bad_or_unkept_version_is_one_line_and_exit_1(
    file_root: FileStore,
    file_versions: list[str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    line = refused(capsys, *argv, "--root", file_root.uri)

    assert line.startswith(expected)


def test_a_lost_compare_and_swap_is_one_line_and_exit_1(
    root: ObjectStore,
    versions: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened = loaders.cli.make_store

    def racing(uri_text: str, budget: Any) -> Any:
        # Another operator rolls back to v0 while this command verifies v1.
        return OnRead(
            opened(uri_text, budget), lambda: rollback(root, versions[0], by="bob", at=T0)
        )

    monkeypatch.setattr(loaders.cli, "make_store", racing)

    line = refused(capsys, "rollback", "--root", uri(root))

    assert line == "snapshotctl rollback: CURRENT moved since it was read; run again"
    assert try_read_pointer(root).pin.by == "bob"


def test_two_rollbacks_racing_one_wins_the_other_exits_1(
    file_root: FileStore,
    file_versions: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened = loaders.cli.make_store
    opens: list[str] = []
    second: list[tuple[int, str, str]] = []

    def racing(uri_text: str, budget: Any) -> Any:
        opens.append(uri_text)
        if len(opens) > 1:  # the second command's own store
            return opened(uri_text, budget)
        # The second `snapshotctl rollback` runs to its end inside the first's verification.
        return OnRead(
            opened(uri_text, budget),
            lambda: second.append(run(capsys, "rollback", "--root", uri_text, "--quiet")),
        )

    monkeypatch.setattr(loaders.cli, "make_store", racing)

    first = run(capsys, "rollback", "--root", file_root.uri, "--quiet")

    assert second[0][0] == 0
    assert first[0] == EXIT_FAILURE
    assert first[2] == "snapshotctl rollback: CURRENT moved since it was read; run again\n"
    assert try_read_pointer(file_root).version == file_versions[1]


class OnRead:
    """A store that runs ``meanwhile`` once, on its first data download."""

    def __init__(self, inner: Any, meanwhile: Callable[[], Any]) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.meanwhile: Callable[[], Any] | None = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, key: str) -> bytes:
        if key.endswith(DATA_NAME) and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return self.inner.read(key)


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def access_denied(request: Any, **_: Any) -> AWSResponse:
    body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    return AWSResponse(request.url, 403, {"Content-Type": "application/xml"}, _Body(body))


@pytest.mark.parametrize(
    ("argv", "operation", "what"),
    [
        (["status"], "GetObject", "CURRENT"),
        (["gc", "--keep", "1"], "DeleteObject", "manifest.json"),
        (["unpin"], "PutObject", "CURRENT"),
    ],
    ids=["read", "delete", "write"],
)
def test_s3_access_denied_is_permission_denied_in_one_line(
    server_s3: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    operation: str,
    what: str,
) -> None:
    store = S3Store(server_s3, BUCKET, PREFIX)
    publish(store, customers(IDS), T0 - timedelta(days=3))
    old = publish(store, customers(IDS), T0 - timedelta(days=2))
    publish(store, customers(IDS), T0)
    raw_write(store, POINTER_KEY, b'{"version": "%s", "pin": {"by": "a", "at": '
              b'"2026-11-23T00:00:00Z", "reason": "r"}}' % old.encode())  # fmt: skip
    opened = loaders.cli.make_store

    def denied(uri_text: str, budget: Any) -> Any:
        opened_store = opened(uri_text, budget)
        opened_store.client.meta.events.register(f"before-send.s3.{operation}", access_denied)
        return opened_store

    monkeypatch.setattr(loaders.cli, "make_store", denied)

    line = refused(capsys, *argv, "--root", f"s3://{BUCKET}/{PREFIX}")

    assert line.startswith(f"snapshotctl {argv[0]}: permission denied: {operation} on s3://")
    assert line.endswith(what)


# --- builds while pinned, and their records ---------------------------------------------------


def build_argv(tmp_path: Path, store: FileStore, table: Any) -> list[str]:
    source = tmp_path / "source.parquet"
    pq.write_table(table, source)
    sql = tmp_path / "query.sql"
    sql.write_text("SELECT * FROM customers")
    return ["build", "--engine", "duckdb", "--sql", str(sql), "--to", store.uri,
            "--table", f"customers={source}"]  # fmt: skip


def test_build_while_pinned_exits_4_and_says_so(
    tmp_path: Path,
    file_root: FileStore,
    file_versions: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_json(capsys, "rollback", "--root", file_root.uri)

    code, out, err = run(capsys, *build_argv(tmp_path, file_root, customers(IDS[:19])))

    assert code == EXIT_STATUS[Outcome.PINNED] == 4
    assert json.loads(out)["outcome"] == "pinned"
    assert f"CURRENT is pinned to {file_versions[1]}, so it was not announced" in err
    assert read_latest(file_root).outcome == "pinned"


def test_rejected_cli_build_leaves_a_rejected_record(
    tmp_path: Path, file_root: FileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    table = customers(IDS)
    duplicated = table.take([0, *range(len(IDS))])

    code, _, _ = run(capsys, *build_argv(tmp_path, file_root, duplicated))

    record = read_latest(file_root)
    assert code == EXIT_FAILURE
    assert (record.outcome, record.version) == ("rejected", None)
    assert "1 duplicate keys" in record.error and "C0000" not in record.error


# --- the progress bar -------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "quiet", "drawn"),
    [(Terminal(), False, True), (Terminal(), True, False), (io.StringIO(), False, False)],
    ids=["terminal", "quiet", "not-a-terminal"],
)
def test_progress_bar_only_on_a_terminal_and_not_when_quiet(
    stream: io.StringIO, quiet: bool, drawn: bool
) -> None:
    with BarProgress(quiet=quiet, stream=stream) as bar:
        bar.begin(4, "verify 20261123T120000Z-0a1b2c3d")
        for step in ("manifest", "download", "sha256 + decode", "key index", "blocks"):
            bar.advance(step)

    assert ("verify 20261123T120000Z-0a1b2c3d" in stream.getvalue()) is drawn


def test_verify_draws_its_bar_on_stderr_when_it_is_a_terminal(
    file_root: FileStore,
    file_versions: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)

    code = main(["verify", file_versions[0], "--root", file_root.uri])

    assert code == 0
    assert f"verify {file_versions[0]}:" in terminal.getvalue()


def test_help_lists_every_operator_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])

    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines if line[:4] == "    " and line[4] != " "]
    for command in ("status", "diff", "verify", "rollback", "pin", "unpin", "announce", "gc"):
        assert command in listed


# --- the benchmark's rollback measurement cannot rot ----------------------------------------


def test_bench_rollback_measurement_runs_end_to_end(tmp_path: Path) -> None:
    from scripts import bench

    root = tmp_path / "snapshots"
    versions = bench.publish_versions(root, 1_000, 2)
    bench._reset_pointer(root, versions)
    key = pq.read_table(root / snapshot_key(versions[0], DATA_NAME), columns=["customer_id"])

    figures = bench.measure_rollback(
        {"uri": root.as_uri(), "versions": versions, "key": key["customer_id"][0].as_py()}
    )

    assert set(figures) == {
        "rollback_command_s", "verify_s", "reader_reload_s", "total_s",
        "lookups_on_current_after_command",
    }  # fmt: skip
    assert try_read_pointer(FileStore(root)).version == versions[0]
