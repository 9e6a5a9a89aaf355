"""Writes tests/vectors/hashing_v1.json: hash spec v1 test vectors. Each hash is computed with
mmh3 and with scikit-learn's independent murmurhash3_32; the script refuses to write if they
disagree. It deliberately does not import gateway.hashing, the code under test.

Run: python -m tests.vectors.generate_hashing [--check]   (--check: exit 1 if the file differs)
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
    "v1: h = MurmurHash3_x86_32(utf8(f'{salt}:{user_id}'), seed=0) as unsigned 32-bit; "
    "bucket = (h * 10000) >> 32, in 0..9999"
)

SALTS = ["", "demo", "demo-v1", "exp:with:colons", "sälz", "实验", "🧪"]
# Ids that stress encoding and MurmurHash's 4-byte blocks and 1-3 byte tails.
SPECIAL_USERS = [
    "",
    "0",
    "1",
    "ab",
    "abc",
    "abcd",
    "alice",
    "Bob",
    "user-42",
    "user:42",
    ":",
    "a:b:c",
    " leading space",
    "tab\tin",
    "null\x00byte",
    "ünïcödé",  # 2-byte UTF-8
    "日本語のユーザー",  # 3-byte UTF-8
    "사용자",
    "🙂🚀",  # 4-byte UTF-8
    "👩\u200d👩\u200d👧",  # ZWJ sequence
    "a" * 256,  # the long ids are all 256 UTF-8 bytes, or one short of it
    "é" * 128,
    "🙂" * 64,
    "x" * 255,
]
NUMERIC_USERS = 44  # "user-<n>" ids, spread over the salts


def cases() -> list[tuple[str, str]]:
    special = [(salt, user) for salt in SALTS for user in SPECIAL_USERS]
    numeric = [(SALTS[i % len(SALTS)], f"user-{i * 22_307}") for i in range(NUMERIC_USERS)]
    return special + numeric


def build() -> dict[str, Any]:
    hashes: list[dict[str, Any]] = []
    buckets: list[dict[str, Any]] = []
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
    """The file's exact text: one case per line, so a diff shows which vector changed."""
    data = build()
    lines = ["{"]
    lines.append(f' "spec": {json.dumps(data["spec"])},')
    lines.append(f' "hash_version": {data["hash_version"]},')
    sections = ["hash_v1", "bucket_v1"]
    for n, section in enumerate(sections):
        rows = [json.dumps(case, ensure_ascii=False) for case in data[section]]
        lines.append(f' "{section}": [')
        lines.append(",\n".join(f"  {row}" for row in rows))
        lines.append(" ]," if n < len(sections) - 1 else " ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python -m tests.vectors.generate_hashing")
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(cases())} cases)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
