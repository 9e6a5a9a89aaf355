"""Tokens from a file, so that none shows in ``ps``: the evaluator's ``--token-file``, the
gateway's ``--evaluator-token-file`` (its workers included) and ``abgate experiments
--token-file``, each also from the environment (``ABGATE_*_FILE``); a file and a token at
once, an empty or a missing file are usage errors (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import evaluator.server
from abgate.cli import main
from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore, GatewayProcess
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # as `openssl rand -hex 16 > token` leaves it
    return path


def test_experiments_reads_the_token_file(
    evaluator: InProcessEvaluator,
    token_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ABGATE_TOKEN", raising=False)
    monkeypatch.delenv("ABGATE_TOKEN_FILE", raising=False)
    base = ["experiments", "list", "--evaluator", evaluator.target, "--json"]
    assert main([*base, "--token-file", str(token_file)]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    monkeypatch.setenv("ABGATE_TOKEN_FILE", str(token_file))
    assert main(base) == 0
    capsys.readouterr()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    assert main([*base, "--token-file", str(wrong)]) == 1
    assert capsys.readouterr().err == (
        "abgate: error: UNAUTHENTICATED: missing or invalid bearer token\n"
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--token", "t", "--token-file", "{f}"], {},
         "give --token or --token-file (or ABGATE_TOKEN or ABGATE_TOKEN_FILE), not both"),
        (["--token-file", "{f}"], {"ABGATE_TOKEN": "t"}, "not both"),
        (["--token-file", "{d}/empty"], {}, "--token-file {d}/empty: is empty"),
        (["--token-file", "{d}/nope"], {}, "--token-file {d}/nope: no such file"),
        (["--token-file", "{d}/two-lines"], {}, "the token must be one line of printable ASCII"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["evaluator", "experiments list", "serve"])
def test_bad_token_files_are_usage_errors(
    command: str,
    args: list[str],
    env: dict[str, str],
    message: str,
    token_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "two-lines").write_text("abc\ndef\n")
    for name in ("ABGATE_TOKEN", "ABGATE_TOKEN_FILE", "ABGATE_EVALUATOR_TOKEN",
                 "ABGATE_EVALUATOR_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    if command == "serve":  # the same flags, named for the gateway's side
        args = [a.replace("--token", "--evaluator-token") for a in args]
        env = {k.replace("ABGATE_", "ABGATE_EVALUATOR_"): v for k, v in env.items()}
        message = message.replace("--token", "--evaluator-token").replace(
            "ABGATE_TOKEN", "ABGATE_EVALUATOR_TOKEN"
        )
        args = ["--evaluator", "127.0.0.1:1", "--no-log-predictions", *args]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [*command.split(), *(a.format(f=token_file, d=tmp_path) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("abgate: error: "), err
    assert message.format(d=tmp_path) in err, err


def test_the_evaluator_and_gateway_workers_take_the_token_from_a_file(
    demo_store: DemoStore,
    fresh_db: str,
    token_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The evaluator: the token it is started with is the file's.
    started: list[Any] = []
    monkeypatch.setattr(evaluator.server, "run", lambda settings: started.append(settings) or 0)
    for name in ("ABGATE_TOKEN", "ABGATE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    argv = ["evaluator", "--token-file", str(token_file), "--database-url", fresh_db,
            "--listen", "127.0.0.1:0", "--model-store", str(demo_store.root)]  # fmt: skip
    assert main(argv) == 0
    assert started[0].token == TOKEN

    # A gateway of two workers, the file named in the environment: each worker subscribes.
    from tests.evaluator.conftest import evaluator_settings

    ev = InProcessEvaluator(evaluator_settings(fresh_db, demo_store.root))
    try:
        shas = [demo_store.metas[m].sha256 for m in ("demo-logreg", "demo-gbdt")]
        created = ev.admin.call(
            "CreateExperiment", cpb.CreateExperimentRequest(definition=ab_definition("e", *shas))
        )
        gw = GatewayProcess(
            ["--model-store", str(demo_store.root), "--state-dir", str(tmp_path / "state"),
             "--evaluator", ev.target, "--no-log-predictions", "--workers", "2"],
            env={"ABGATE_EVALUATOR_TOKEN_FILE": str(token_file), "ABGATE_EVALUATOR_TOKEN": ""},
        )  # fmt: skip
        gw.start()
        try:
            publisher = ev.server.publisher
            assert ev.call(publisher.wait_acked(created.snapshot_version, count=2, timeout=30))
        finally:
            gw.stop()
    finally:
        ev.close()


def test_help_says_to_prefer_the_environment_or_a_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in (["evaluator"], ["experiments", "list"], ["serve"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "shows in ps" in text and "-token-file" in text, command
