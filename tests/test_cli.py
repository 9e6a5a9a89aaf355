"""The ``abgate`` command as a new user meets it: every ``--help`` renders, and every wrong
input ends in one line on stderr with the documented exit code (2: bad flags or local input;
1: a failure, with the gRPC status name), never a traceback, errno text or a C-core log line."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from abgate.cli import build_parser, main
from tests.conftest import DemoStore, free_port


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple]:
    """Every command path under ``parser`` (``()``, ``("serve",)``, ``("db", "migrate")``…),
    found by walking argparse's own tree: a new subcommand is covered without editing this."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = sorted(set(_commands(build_parser())))


def test_the_walk_finds_the_commands_of_the_readme() -> None:
    top = {path[0] for path in COMMANDS if path}
    assert top >= {"serve", "evaluator", "experiments", "predict", "outcome", "loadtest",
                   "models", "report", "db", "demo"}  # fmt: skip
    assert ("experiments", "promote") in COMMANDS and ("db", "partitions") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "abgate")
def test_every_help_renders(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    assert out.startswith(" ".join(("usage: abgate", *path))), out[:200]
    assert err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "abgate: error: the following arguments are required: COMMAND (see 'abgate --help')"),
        (["nope"], "abgate: error: argument COMMAND: invalid choice: 'nope'"),
        (["serve", "--workers", "x"], "abgate: error: argument --workers: invalid int value"),
        (["experiments", "show"], "the following arguments are required: name"),
        (["db"], "the following arguments are required: ACTION (see 'abgate db --help')"),
        (["models", "list", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argparse_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("abgate: error: "), err
    assert message in err and out == ""


# -- wrong input, table-driven: (argv, exit code, text the one stderr line must contain) ----------
# In the argv, {d} is a directory of prepared files (see `files`) and {port} a port where nothing
# listens.
USAGE = [
    # peer addresses: gRPC would dial :443, or another port than meant
    ("predict --target localhost --experiment e --user u --features 1",
     "--target 'localhost' needs a port (HOST:PORT)"),
    ("predict --target localhost:http --experiment e --user u --features 1",
     "--target 'localhost:http': port 'http' is not a number"),
    ("predict --target h:70000 --experiment e --user u --features 1",
     "port 70000 is out of range"),
    ("predict --target ::1:50051 --experiment e --user u --features 1", "in brackets"),
    ("predict --target http://h:1 --experiment e --user u --features 1", "unknown scheme"),
    ("outcome --target localhost --request-id r --value 1", "--target 'localhost' needs a port"),
    ("loadtest --target localhost --rate 10 --features 3", "--target 'localhost' needs a port"),
    ("experiments list --token t --evaluator localhost",
     "--evaluator 'localhost' needs a port"),
    ("serve --evaluator localhost --evaluator-token t --state-dir {d}/s",
     "--evaluator 'localhost' needs a port"),
    # listen addresses
    ("serve --listen 127.0.0.1:99999 --state-dir {d}/s", "port 99999 is out of range (0-65535)"),
    ("serve --listen nope --state-dir {d}/s", "--listen 'nope' needs a port"),
    ("serve --metrics-listen x:y --state-dir {d}/s", "--metrics-listen 'x:y': port 'y'"),
    ("serve --listen 192.0.2.1:50051 --state-dir {d}/s", "is not an address of this machine"),
    ("evaluator --token t --listen localhost", "--listen 'localhost' needs a port"),
    ("evaluator --token t --metrics-listen 1.2.3.4", "--metrics-listen '1.2.3.4' needs a port"),
    # experiments create --file
    ("experiments create --token t --file {d}/missing.json",
     "--file {d}/missing.json: no such file"),
    ("experiments create --token t --file {d}", "--file {d}: is a directory, not a file"),
    ("experiments create --token t --file {d}/bad.json", "--file {d}/bad.json: not valid JSON"),
    ("experiments create --token t --file {d}/bad.toml", "--file {d}/bad.toml: not valid TOML"),
    ("experiments create --token t --file {d}/list.json", "expected an object"),
    ("experiments create --token t --file {d}/unknown.json",
     '--file {d}/unknown.json: Message type "abgate.v1.ExperimentDefinition" has no field named '
     '"nosuchfield" at "ExperimentDefinition". Available Fields'),
    ("experiments create --token t --name x --arm a=m@x", "--arm 'a=m@x': weight 'x' is not"),
    ("experiments create --token t --name x --arm a=m --shadow s=m@y",
     "--shadow 's=m@y': sample rate 'y' is not a number"),
    ("experiments list --token t --ca {d}/missing.pem", "--ca {d}/missing.pem: no such file"),
    ("experiments list --token t --ca {d}/junk.pem", "--ca {d}/junk.pem: not a PEM"),
    # serve --config: the README promises 2 for bad local input
    ("serve --config {d}/missing.toml --state-dir {d}/s", "--config {d}/missing.toml: no such"),
    ("serve --config {d}/bad.toml --state-dir {d}/s",
     "--config {d}/bad.toml: not valid TOML: Invalid value (at line 1, column 11)"),
    ("serve --config {d}/bad.json --state-dir {d}/s", "--config {d}/bad.json: not valid JSON"),
    ("serve --config {d}/weights.json --state-dir {d}/s",
     "--config {d}/weights.json: experiments[0].arms weights sum to 60%, not 100%"),
    ("serve --config {d}/ids.toml --model-store {d}/empty --state-dir {d}/s",
     "--config {d}/ids.toml: experiments[0].arms[0].model: no model 'demo-logreg' in the store"),
    # serve --client-tokens-file: refused before anything starts, naming the file and the field
    ("serve --client-tokens-file {d}/missing.toml --state-dir {d}/s",
     "--client-tokens-file {d}/missing.toml: no such"),
    ("serve --client-tokens-file {d}/bad.json --state-dir {d}/s",
     "--client-tokens-file {d}/bad.json: not valid JSON"),
    ("serve --client-tokens-file {d}/ids.toml --state-dir {d}/s",
     "--client-tokens-file {d}/ids.toml: needs a [clients] table of identity = token"),
    ("serve --client-tokens-file {d}/short-token.toml --state-dir {d}/s",
     "--client-tokens-file {d}/short-token.toml: clients.a: the token is shorter than 16"),
    ("serve --client-tokens-file {d}/same-token.toml --state-dir {d}/s",
     "--client-tokens-file {d}/same-token.toml: clients.b: same token as clients.a"),
    # other paths of serve
    ("serve --state-dir {d}/afile/x", "--state-dir {d}/afile/x: a parent of it is a file"),
    ("serve --state-dir {d}/afile", "--state-dir {d}/afile: is a file, not a directory"),
    ("serve --state-dir {d}/s --pg-data {d}/afile/pg", "--pg-data {d}/afile/pg: a parent"),
    ("serve --state-dir {d}/s --spool-dir {d}/afile/sp", "--spool-dir {d}/afile/sp: a parent"),
    ("serve --state-dir {d}/s --database-url mysql://x", "must be a postgresql:// URL"),
    ("serve --state-dir {d}/s --evaluator h:1 --evaluator-token t --evaluator-ca {d}/no.pem",
     "--evaluator-ca {d}/no.pem: no such file"),
    ("serve --state-dir {d}/s --evaluator h:1 --evaluator-token t --evaluator-ca {d}/junk.pem",
     "--evaluator-ca {d}/junk.pem: not a PEM certificate"),
    ("serve --state-dir {d}/s --evaluator h:1 --evaluator-token t --evaluator-cert "
     "{d}/junk.pem --evaluator-key {d}/junk.pem --evaluator-ca {d}/junk.pem", "not a PEM"),
    # evaluator
    ("evaluator --token t --tls-cert {d}/no.pem --tls-key {d}/no.key",
     "--tls-cert {d}/no.pem: no such file"),
    ("evaluator --token t --tls-cert {d}/junk.pem --tls-key {d}/junk.pem",
     "--tls-cert {d}/junk.pem / --tls-key {d}/junk.pem: not a PEM certificate and its"),
    ("evaluator --token t --tls-client-ca {d}/junk.pem", "--tls-client-ca {d}/junk.pem: not a"),
    ("evaluator --token t --pg-data {d}/afile/pg", "--pg-data {d}/afile/pg: a parent"),
    ("evaluator --token t --database-url nope", "must be a postgresql:// URL"),
    ("evaluator --token t --drift-reference-rows 0", "--drift-reference-rows must be at least 1"),
    ("evaluator --token t --tick-rows 0", "--tick-rows must be at least 1"),
    ("evaluator --token t --decay-reference-rows -5", "--decay-reference-rows must be at least 1"),
    ("evaluator --token t --model-store {d}/nope", "--model-store {d}/nope: no such directory"),
    ("evaluator --token t --model-store {d}/afile", "--model-store {d}/afile: is a file, not a"),
    # models
    ("models convert --store {d}/m --input {d}/no.joblib --id x --holdout {d}/h.npz",
     "--input {d}/no.joblib: no such file"),
    ("models convert --store {d}/m --input {d}/junk --id x --holdout {d}/no.npz",
     "--holdout {d}/no.npz: no such file"),
    ("models convert --store {d}/m --input {d}/junk --id x --holdout {d}/junk",
     "--holdout {d}/junk: not an .npz file"),
    ("models convert --store {d}/m --input {d}/junk --id x --holdout {d}/one.npy",
     "--holdout {d}/one.npy: one array, not an .npz file"),
    ("models convert --store {d}/m --input {d}/junk --id x --holdout {d}/nox.npz",
     "--holdout {d}/nox.npz: has no array named X"),
    ("models convert --store {d}/m --input {d}/junk --id x --holdout {d}/h.npz",
     "--input {d}/junk: not a model saved with joblib"),
    ("models convert --store {d}/m --input {d}/dict.joblib --id x --holdout {d}/h.npz",
     "--input {d}/dict.joblib: holds a dict, not a scikit-learn model"),
    ("models convert --store {d}/m --input {d}/class.joblib --id x --holdout {d}/h.npz",
     "--input {d}/class.joblib: holds a type, not a scikit-learn model"),
    ("models convert --store {d}/afile/m --input {d}/junk --id x --holdout {d}/h.npz",
     "--store {d}/afile/m: a parent of it is a file"),
    ("models register --store {d}/m --onnx {d}/no.onnx --id x", "--onnx {d}/no.onnx: no such"),
    ("models register --store {d}/m --onnx {d} --id x", "--onnx {d}: is a directory"),
    ("models register --store {d}/m --onnx {d}/junk --id x",
     "--onnx {d}/junk: not a usable classifier model"),
    ("models demo --store {d}/afile/m", "--store {d}/afile/m: a parent of it is a file"),
    ("models demo --store {d}/m --config-out {d}/afile/e.toml",
     "--config-out {d}/afile/e.toml: directory {d}/afile: is a file"),
    # db, report, demo, loadtest
    ("db status --pg-data {d}/afile/pg", "--pg-data {d}/afile/pg: a parent of it is a file"),
    ("db migrate --database-url localhost", "must be a postgresql:// URL"),
    ("db partitions --ensure-days -1 --database-url postgresql://u@h/x", "--ensure-days"),
    ("report --experiment e --out {d}/afile/r", "--out {d}/afile/r: a parent of it is a file"),
    ("report --experiment e --out {d}/r --database-url x", "must be a postgresql:// URL"),
    ("demo --workdir {d}/afile/w", "--workdir {d}/afile/w: a parent of it is a file"),
    ("loadtest --rate 10 --features 3 --plot {d}", "--plot {d}: is a directory"),
    ("loadtest --rate 10 --features 3 --histogram-out {d}/nodir/h",
     "--histogram-out {d}/nodir/h: directory {d}/nodir does not exist"),
    ("--log-level LOUD models list", "--log-level 'LOUD'"),
]  # fmt: skip

# Nothing listens at {port}: one line with UNAVAILABLE, exit 1.
UNREACHABLE = [
    ("predict --target 127.0.0.1:{port} --experiment e --user u --features 1 --timeout 2",
     "UNAVAILABLE: failed to connect"),
    ("outcome --target dns:///127.0.0.1:{port} --request-id r --value 1 --timeout 2",
     "UNAVAILABLE: failed to connect"),
    ("experiments list --token t --evaluator 127.0.0.1:{port} --timeout 2", "UNAVAILABLE"),
    ("db status --database-url postgresql://u@127.0.0.1:{port}/x",
     "UNAVAILABLE: cannot reach PostgreSQL: Connect call failed"),
    ("report --experiment e --out {d}/r --database-url postgresql://u@127.0.0.1:{port}/x",
     "UNAVAILABLE: cannot reach PostgreSQL"),
    ("evaluator --token t --listen 127.0.0.1:0 --model-store {d} "
     "--database-url postgresql://u@127.0.0.1:{port}/x",
     "UNAVAILABLE: cannot reach PostgreSQL: Connect call failed"),
]  # fmt: skip


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Prepared wrong inputs; the test runs from an empty directory with no ABGATE_* set, so
    defaults (var/state…) land there and the caller's environment does not leak in."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "bad.json").write_text('{"version": 1,')
    (d / "bad.toml").write_text("version = \n")
    (d / "list.json").write_text("[1]")
    (d / "unknown.json").write_text('{"nosuchfield": 1}')
    arms = [{"name": "a", "model": "m", "weight": 30}, {"name": "b", "model": "m", "weight": 30}]
    (d / "weights.json").write_text(
        json.dumps({"version": 1, "experiments": [{"name": "e", "arms": arms}]})
    )
    (d / "ids.toml").write_text(
        'version = 1\n[[experiments]]\nname = "e"\n'
        '[[experiments.arms]]\nname = "a"\nmodel = "demo-logreg"\nweight = 100\n'
    )
    (d / "short-token.toml").write_text('[clients]\na = "too-short"\n')
    (d / "same-token.toml").write_text(
        '[clients]\na = "0123456789abcdef"\nb = "0123456789abcdef"\n'
    )
    (d / "empty").mkdir()
    (d / "junk.pem").write_text("not a certificate\n")
    (d / "junk").write_bytes(b"garbage, not a model\n")
    (d / "afile").write_text("a file where a directory is expected\n")
    np.save(d / "one.npy", np.zeros(3))
    np.savez(d / "nox.npz", Y=np.zeros(3))
    np.savez(d / "h.npz", X=np.zeros((4, 3), dtype="f4"))
    import joblib  # pickles that unpickle fine and are no model
    from sklearn.linear_model import LogisticRegression

    joblib.dump({"coef": [1.0]}, d / "dict.joblib")
    joblib.dump(LogisticRegression, d / "class.joblib")  # the class, not a fitted instance
    for name in list(__import__("os").environ):
        if name.startswith("ABGATE_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return d


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """A usage error must stop the command before it starts anything: should a check let one
    through, fail at once instead of serving forever inside the test."""
    import abgate.db.embedded
    import abgate.demo
    import evaluator.server
    import gateway.server
    import loadtest.runner

    def started(*_args: object, **_kw: object) -> None:
        raise AssertionError("the command got past its checks and started")

    for module, name in (
        (gateway.server, "serve"),
        (evaluator.server, "run"),
        (abgate.demo, "run_demo"),
        (loadtest.runner, "run_load"),
        (abgate.db.embedded.EmbeddedPostgres, "start"),
    ):
        monkeypatch.setattr(module, name, started)


def _run(argv: str, d: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = argv.format(d=d, port=free_port()).split()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capfd.readouterr()  # file descriptors: C-core writes to fd 2 directly
    return code, out, err


def _one_clean_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("abgate: error: "), err
    assert "Traceback" not in err and "[Errno" not in err, err
    return lines[0]


@pytest.mark.parametrize(("argv", "expected"), USAGE, ids=[a for a, _ in USAGE])
def test_wrong_local_input_is_one_line_and_exit_2(
    argv: str, expected: str, files: Path, tripwire: None, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _run(argv, files, capfd)
    line = _one_clean_line(err)
    assert code == 2, err
    assert expected.format(d=files) in line


@pytest.mark.parametrize(("argv", "expected"), UNREACHABLE, ids=[a for a, _ in UNREACHABLE])
def test_nothing_listening_is_one_line_unavailable_and_exit_1(
    argv: str, expected: str, files: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _run(argv, files, capfd)
    line = _one_clean_line(err)
    assert code == 1, err
    assert line.startswith(f"abgate: error: {expected}"), line


# -- TLS files that are valid pass the checks --------------------------------------------------
@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pem")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}"],
                       cwd=d, check=True, capture_output=True)  # fmt: skip
    return d


def test_valid_pem_passes_and_a_key_of_another_certificate_does_not(pem: Path) -> None:
    from abgate.cli_common import UsageError, pem_files

    pem_files((pem / "a.pem", "--tls-cert"), (pem / "a.key", "--tls-key"), (pem / "b.pem", "--ca"))
    with pytest.raises(UsageError, match="not a PEM certificate and its"):
        pem_files((pem / "a.pem", "--tls-cert"), (pem / "b.key", "--tls-key"), (None, "--ca"))


# -- a taken port, in a real process: one line, not C-core's "Failed to add port" -------------
def abgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abgate", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """Held by another server. SO_REUSEPORT on it, as a group of gateway workers has: a new
    gateway (even one with --workers) must still be refused, not join the group."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("serve", "--listen"),
        ("serve --workers 2", "--listen"),
        ("serve", "--metrics-listen"),
        ("serve --workers 2", "--metrics-listen"),
        ("evaluator --token t", "--listen"),
        ("evaluator --token t", "--metrics-listen"),
    ],
)
def test_a_taken_port_is_one_line_unavailable_and_exit_1(
    command: str, flag: str, taken_port: int, demo_store: DemoStore, tmp_path: Path
) -> None:
    """Exit 1, not 2: the flag is right, the machine's state is not (and may change)."""
    args = command.split()
    if args[0] == "serve":
        args += ["--config", str(demo_store.config), "--model-store", str(demo_store.root),
                 "--state-dir", str(tmp_path / "s"), "--no-log-predictions"]  # fmt: skip
    else:
        args += ["--pg-data", str(tmp_path / "pg"), "--model-store", str(demo_store.root)]
    if flag == "--metrics-listen":
        args += ["--listen", "127.0.0.1:0"]
    r = abgate(*args, flag, f"127.0.0.1:{taken_port}")
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [
        f"abgate: error: UNAVAILABLE: {flag} 127.0.0.1:{taken_port}: cannot listen: address "
        "already in use (another process listens on this port)"
    ]
    pg = tmp_path / "pg"
    assert not pg.exists() or not any(pg.iterdir()), "refused before starting PostgreSQL"


def test_junk_tls_files_give_one_line_not_c_core_logs(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    r = abgate("experiments", "show", "e", "--token", "t", "--ca", str(junk),
               "--evaluator", f"127.0.0.1:{free_port()}", "--timeout", "2")  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"abgate: error: --ca {junk}: not a PEM certificate (bundle)"]


def test_a_saved_snapshot_lets_serve_start_without_its_config_file(tmp_path: Path) -> None:
    """README "Experiments config file": with a snapshot under --state-dir a missing or bad
    file is the server's to handle (it serves the snapshot), not a usage error."""
    from abgate.cli_common import UsageError
    from abgate.settings import GatewaySettings
    from gateway.cli import _check_config_file
    from gateway.control import SNAPSHOT_FILE

    state = tmp_path / "state"
    state.mkdir()
    settings = GatewaySettings(config=tmp_path / "missing.toml", state_dir=state)
    with pytest.raises(UsageError, match=r"missing\.toml: no such file"):
        _check_config_file(settings)
    (state / SNAPSHOT_FILE).write_text("{}")
    _check_config_file(settings)  # the server decides; test_control covers what it serves
