"""Writes tests/vectors/hashing_v1.json: hash spec v1 vectors, each value computed with mmh3 and
cross-checked against scikit-learn's independent murmurhash3_32.

Run: python -m tests.vectors.generate_hashing
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mmh3
from sklearn.utils import murmurhash3_32

OUT = Path(__file__).with_name("hashing_v1.json")
SPEC = (
    "v1: h = MurmurHash3_x86_32(utf8(f'{salt}:{user_id}'), seed=0) unsigned; "
    "bucket = (h * 10000) >> 32"
)


def cases() -> list[tuple[str, str]]:
    salts = ["", "demo", "demo-v1", "exp:with:colons", "sälz", "实验"]
    users = [
        "",
        "0",
        "1",
        "alice",
        "Bob",
        "user-42",
        "user:42",
        " leading space",
        "tab\tin",
        "ünïcödé",
        "日本語のユーザー",
        "🙂🚀",
        "a" * 256,
        "é" * 128,
        "x" * 255,
        "null\x00byte",
    ] + [f"user-{i}" for i in range(0, 2000, 17)]
    return [(s, u) for s in salts for u in users][:400]


def build() -> dict[str, Any]:
    hashes, buckets = [], []
    for salt, user in cases():
        key = f"{salt}:{user}".encode()
        h = mmh3.hash(key, 0, signed=False)
        independent = murmurhash3_32(key, seed=0, positive=True)
        if h != independent:
            raise SystemExit(f"mmh3 and scikit-learn disagree on {key!r}: {h} != {independent}")
        hashes.append({"salt": salt, "user_id": user, "hash": h})
        buckets.append({"salt": salt, "user_id": user, "bucket": (h * 10000) >> 32})
    return {"spec": SPEC, "hash_version": 1, "hash_v1": hashes, "bucket_v1": buckets}


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT} ({len(cases())} cases)", file=sys.stderr)
