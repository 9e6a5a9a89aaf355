"""Hashing specs: user id → bucket. A released version is never edited; add a new one instead."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mmh3
import numpy as np

NUM_BUCKETS = 10_000
CURRENT_HASH_VERSION = 1


def hash_v1(salt: str, user_id: str) -> int:
    """Spec v1 hash: MurmurHash3 x86_32 of the UTF-8 bytes of f"{salt}:{user_id}", seed 0,
    as an unsigned 32-bit integer."""
    # mmh3 hashes a str as its UTF-8 encoding, which saves an explicit .encode() per call.
    return mmh3.hash(f"{salt}:{user_id}", 0, False)


def bucket_v1(salt: str, user_id: str) -> int:
    """Spec v1 bucket: (hash_v1(salt, user_id) * 10000) >> 32, in 0..9999."""
    return (mmh3.hash(f"{salt}:{user_id}", 0, False) * NUM_BUCKETS) >> 32


def buckets_v1(salt: str, user_ids: Sequence[str]) -> np.ndarray:
    """bucket_v1 for many users at once, as an int64 array (batch prediction)."""
    prefix = salt + ":"
    hashes = np.fromiter(
        (mmh3.hash(prefix + u, 0, False) for u in user_ids), dtype=np.uint64, count=len(user_ids)
    )
    return ((hashes * np.uint64(NUM_BUCKETS)) >> np.uint64(32)).astype(np.int64)


BUCKET_FUNCTIONS: dict[int, Callable[[str, str], int]] = {1: bucket_v1}
