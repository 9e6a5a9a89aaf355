"""`abgate loadtest` against a real gateway that wants a client identity (--client-tokens-file):
without a token the probe is refused UNAUTHENTICATED in one line (exit 1); with
--client-token-file every call and outcome carries the bearer token and counts for that client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import DemoStore

TOKEN = "lt-token-0123456789abcdef"


def loadtest(target: str, store: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "abgate", "loadtest", "--target", target, "--rate", "100",
         "--duration", "1", "--warmup", "0", "--model-store", str(store), "--outcomes",
         "--quiet", "--json", *extra],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


async def identities(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(url)
    try:
        pred = await conn.fetch("SELECT DISTINCT client_identity FROM predictions")
        outc = await conn.fetch("SELECT DISTINCT client_identity FROM outcomes")
    finally:
        await conn.close()
    return {"predictions": {r[0] for r in pred}, "outcomes": {r[0] for r in outc}}


def test_loadtest_sends_the_client_token(
    gateway_process: Any, demo_store: DemoStore, tmp_path: Path
) -> None:
    import asyncio

    tokens = tmp_path / "clients.toml"
    tokens.write_text(f'[clients]\nloadgen = "{TOKEN}"\n')
    gw = gateway_process("--client-tokens-file", str(tokens))
    refused = loadtest(gw.target, demo_store.root)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ok = loadtest(gw.target, demo_store.root, "--client-token-file", str(token_file))
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] == doc["sent"] > 50 and doc["errors"] == {}
    assert doc["outcomes"]["accepted"] == doc["outcomes"]["sent"] > 0
    assert TOKEN not in ok.stdout  # the report never shows the token
    # The same from the environment; both ways at once is refused (which counts is a guess).
    env_ok = loadtest(gw.target, demo_store.root, env={"ABGATE_CLIENT_TOKEN": TOKEN})
    assert env_ok.returncode == 0, env_ok.stderr
    both = loadtest(gw.target, demo_store.root, "--client-token", TOKEN,
                    "--client-token-file", str(token_file))  # fmt: skip
    assert both.returncode == 2 and "not both" in both.stderr
    gw.stop()
    seen = asyncio.run(identities(gateway_process.database_url))
    assert seen == {"predictions": {"loadgen"}, "outcomes": {"loadgen"}}


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABGATE_CLIENT_TOKEN", raising=False)
    monkeypatch.delenv("ABGATE_CLIENT_TOKEN_FILE", raising=False)
