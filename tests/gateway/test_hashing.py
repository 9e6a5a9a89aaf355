"""Hash spec v1 against frozen vectors (data), plus an independent implementation, determinism,
uniformity and independence between experiments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mmh3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.utils import murmurhash3_32

from gateway.hashing import (
    BUCKET_FUNCTIONS,
    CURRENT_HASH_VERSION,
    NUM_BUCKETS,
    bucket_v1,
    buckets_v1,
    hash_v1,
)
from tests.vectors import generate_hashing

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors" / "hashing_v1.json"
# Vector file section → (function under test, field holding the expected value).
SECTIONS = {"hash_v1": (hash_v1, "hash"), "bucket_v1": (bucket_v1, "bucket")}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every case in the vector file becomes one test id, e.g. ``bucket_v1-17``."""
    if "vector" in metafunc.fixturenames:
        data = json.loads(VECTORS.read_text(encoding="utf-8"))
        params = [(section, case) for section in SECTIONS for case in data[section]]
        ids = [f"{section}-{i}" for section in SECTIONS for i in range(len(data[section]))]
        metafunc.parametrize("vector", params, ids=ids)


def test_vector(vector: tuple[str, dict[str, Any]]) -> None:
    section, case = vector
    function, expected = SECTIONS[section]
    assert function(case["salt"], case["user_id"]) == case[expected]


def test_vector_file_is_what_the_generator_writes_today() -> None:
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert data["hash_version"] == 1
    assert len(data["hash_v1"]) == len(data["bucket_v1"]) >= 200
    assert VECTORS.read_text(encoding="utf-8") == generate_hashing.render()


def test_vectors_cover_the_awkward_inputs() -> None:
    users = {u for _, u in generate_hashing.cases()}
    salts = {s for s, _ in generate_hashing.cases()}
    assert "" in salts and any(":" in s for s in salts)
    assert any(":" in u for u in users)
    assert any(len(u.encode()) == 256 for u in users)
    assert any(any(ord(c) > 0xFFFF for c in u) for u in users)  # emoji: 4-byte UTF-8
    assert any(any(0x4E00 <= ord(c) <= 0x9FFF for c in u) for u in users)  # CJK
    assert any(any(0x80 <= ord(c) <= 0xFF for c in u) for u in users)  # accents
    # MurmurHash3 handles 0, 1, 2 and 3 trailing bytes differently: exercise each.
    assert {len(f"{s}:{u}".encode()) % 4 for s, u in generate_hashing.cases()} == {0, 1, 2, 3}


def test_versions() -> None:
    assert BUCKET_FUNCTIONS[1] is bucket_v1
    assert CURRENT_HASH_VERSION in BUCKET_FUNCTIONS
    assert NUM_BUCKETS == 10_000


def test_mmh3_hashes_a_str_as_its_utf8_bytes() -> None:
    # buckets_v1's ASCII fast path relies on this.
    for key in ["a:b", "demo-v1:user-123456", "é:日本", "s:🙂", ":"]:
        assert mmh3.hash(key, 0, False) == mmh3.hash(key.encode("utf-8"), 0, False)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20), st.text(max_size=80))
def test_matches_an_independent_implementation(salt: str, user: str) -> None:
    h = murmurhash3_32(f"{salt}:{user}".encode(), seed=0, positive=True)
    assert hash_v1(salt, user) == h
    assert bucket_v1(salt, user) == (h * NUM_BUCKETS) >> 32


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=10),
    st.lists(st.one_of(st.text(max_size=30), st.from_regex(r"[a-z0-9-]{0,30}", fullmatch=True))),
)
def test_batch_equals_single(salt: str, users: list[str]) -> None:
    got = buckets_v1(salt, users)
    assert got.dtype == np.int64 and got.shape == (len(users),)
    assert got.tolist() == [bucket_v1(salt, u) for u in users]


def test_batch_equals_single_on_long_lists() -> None:
    users = [f"u{i}" for i in range(3000)]
    assert buckets_v1("exp", users).tolist() == [bucket_v1("exp", u) for u in users]
    users.append("日本")  # one non-ASCII id sends the whole batch down the bytes path
    assert buckets_v1("exp", users).tolist() == [bucket_v1("exp", u) for u in users]


def test_lone_surrogates_raise_instead_of_crashing() -> None:
    # mmh3 5.3.1 segfaults on a str with a surrogate; run in a child so a regression fails this
    # test instead of killing the test run.
    code = (
        "from gateway.hashing import bucket_v1, buckets_v1, hash_v1\n"
        "calls = [lambda: hash_v1('s', 'a\\ud800'), lambda: bucket_v1('\\udcff', 'u'),\n"
        "         lambda: buckets_v1('s', ['ok', '\\ud83d\\ude42']),\n"
        "         lambda: buckets_v1('\\ud800', ['ok'])]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except UnicodeEncodeError:\n"
        "        continue\n"
        "    raise SystemExit('no UnicodeEncodeError')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_bounds_and_determinism() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    first = [bucket_v1("s", u) for u in users]
    assert min(first) >= 0 and max(first) <= NUM_BUCKETS - 1
    assert first == [bucket_v1("s", u) for u in users]
    assert buckets_v1("s", users).tolist() == first
    assert hash_v1("s", "u") == hash_v1("s", "u") < 2**32


def test_extreme_hashes_map_to_the_first_and_last_bucket() -> None:
    # The formula, with the largest and smallest possible h, stays inside 0..9999.
    assert (0 * NUM_BUCKETS) >> 32 == 0
    assert ((2**32 - 1) * NUM_BUCKETS) >> 32 == NUM_BUCKETS - 1


def test_uniform_over_buckets_and_coarse_groups() -> None:
    buckets = buckets_v1("uniformity", [f"user-{i}" for i in range(100_000)])
    fine = np.bincount(buckets, minlength=NUM_BUCKETS)
    assert len(fine) == NUM_BUCKETS
    assert stats.chisquare(fine).pvalue > 0.001
    coarse = np.bincount(buckets // 1000, minlength=10)
    assert stats.chisquare(coarse).pvalue > 0.001


def test_two_salts_are_independent() -> None:
    users = [f"user-{i}" for i in range(100_000)]
    a = buckets_v1("experiment-a", users) < NUM_BUCKETS // 2
    b = buckets_v1("experiment-b", users) < NUM_BUCKETS // 2
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    assert table.sum() == len(users)
    assert stats.chi2_contingency(table).pvalue > 0.001
    assert np.all(np.abs(table / len(users) - 0.25) < 0.01)
