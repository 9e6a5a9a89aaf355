"""``abgate report`` on a real experiment (``decided``: predictions, outcomes and shadow rows go
through a gateway into PostgreSQL, the evaluator promotes the better arm): the report (HTML +
PDF) is built from the database by the real CLI in a subprocess."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluator.conftest import Decided

SECTIONS = (
    "Experiment",
    "Current verdict",
    "Arm shares over time",
    "Primary metric and confidence sequence",
    "Decision timeline",
    "Latency",
    "Shadow models",
)


def _report(url: str, experiment: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abgate", "report", "--experiment", experiment, "--out", str(out),
         "--database-url", url, *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def test_report_of_a_decided_experiment(decided: Decided, tmp_path: Path) -> None:
    r = _report(decided.url, "exp", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    html_path, pdf_path = tmp_path / "out" / "exp.html", tmp_path / "out" / "exp.pdf"
    assert r.stdout.split() == [str(html_path), str(pdf_path)]

    page = html_path.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, title
    pngs = _pngs(page)
    assert len(pngs) >= 4 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<td>promote</td>" in page and "promote treatment" in page
    assert "logreg" in page and "demo-gbdt" in page

    pdf = pdf_path.read_bytes()
    assert pdf.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", pdf))
    assert pages >= 4, pages


def test_report_of_an_experiment_without_traffic(decided: Decided, tmp_path: Path) -> None:
    r = _report(decided.url, "idle", tmp_path, "--bucket-seconds", "60")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "idle.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # shares, metric, latency; no shadows
    assert "continue: waiting for 1000 samples per arm" in page
    assert "No decisions yet" not in page and "This experiment has no shadow models" in page
    assert (tmp_path / "idle.pdf").read_bytes().startswith(b"%PDF")


def test_unknown_experiment_is_not_found(decided: Decided, tmp_path: Path) -> None:
    r = _report(decided.url, "nope", tmp_path)
    assert r.returncode == 1
    assert "NOT_FOUND: unknown experiment 'nope'" in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["--experiment", "exp"],  # no --out
        ["--experiment", "exp", "--out", "x", "--bucket-seconds", "soon"],
        ["--experiment", "exp", "--out", "x", "--bucket-seconds", "-5"],
        ["--experiment", "", "--out", "x"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "abgate", "report", *args, "--database-url", "postgresql:///x"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "x").exists()
