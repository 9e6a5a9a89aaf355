"""Hashing specs: (experiment salt, user id) → hash → bucket. A released spec version is never
edited; a new spec gets new functions and a new entry in BUCKET_FUNCTIONS."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mmh3
import numpy as np

NUM_BUCKETS = 10_000
CURRENT_HASH_VERSION = 1

# Keys are hashed as bytes, never as str: mmh3 5.3.1 hashes a str as its UTF-8 but crashes the
# whole process (SIGSEGV) on a str holding a surrogate code point. str.encode() raises
# UnicodeEncodeError there instead, for ~15 ns a call (see tests/gateway/test_hashing.py).
_mmh3_32 = mmh3.hash


def hash_v1(salt: str, user_id: str) -> int:
    """Spec v1 hash: MurmurHash3 x86_32 of the UTF-8 bytes of f"{salt}:{user_id}", seed 0,
    read as an unsigned 32-bit integer (0..2**32-1).

    Raises UnicodeEncodeError if either string is not valid Unicode (a lone surrogate).
    """
    return _mmh3_32(f"{salt}:{user_id}".encode(), 0, False)


def bucket_v1(salt: str, user_id: str) -> int:
    """Spec v1 bucket: (hash_v1(salt, user_id) * 10000) >> 32, in 0..9999.

    Raises UnicodeEncodeError if either string is not valid Unicode (a lone surrogate).
    """
    # hash_v1 inlined and the literal 10000 (not NUM_BUCKETS): one call and no global lookup on
    # the per-request path, and v1 stays 10,000 buckets whatever a later spec does.
    return (_mmh3_32(f"{salt}:{user_id}".encode(), 0, False) * 10000) >> 32


def buckets_v1(salt: str, user_ids: Sequence[str]) -> np.ndarray:
    """bucket_v1(salt, u) for every u in user_ids, as an int64 array of the same length.

    Raises UnicodeEncodeError if a string is not valid Unicode (a lone surrogate).
    """
    prefix = salt + ":"
    # An ASCII str cannot hold a surrogate, so an all-ASCII batch (the common case) can take
    # mmh3's str path and skip one bytes object per id; str.isascii() is O(1) in CPython.
    if prefix.isascii() and "".join(user_ids).isascii():
        hashes = np.array([_mmh3_32(prefix + u, 0, False) for u in user_ids], dtype=np.int64)
    else:
        head = prefix.encode()
        hashes = np.array([_mmh3_32(head + u.encode(), 0, False) for u in user_ids], dtype=np.int64)
    # h < 2**32, so h * 10000 < 2**46 fits int64; in place to avoid two temporaries.
    hashes *= 10000
    hashes >>= 32
    return hashes


BUCKET_FUNCTIONS: dict[int, Callable[[str, str], int]] = {1: bucket_v1}


# Feature capture (ExperimentConfig.feature_sample_rate): a served prediction's features are
# logged when MurmurHash3 x86_32 (seed 0, unsigned) of b"features:" + its request id's UTF-8
# falls below rate * 2**32. A function of the request id alone: a retry, a replay or another
# gateway samples the same request the same way, and independently of the user's arm.
FEATURE_PREFIX = b"features:"
_FULL = 1 << 32


def feature_threshold(rate: float) -> int:
    """The hash bound of ``rate`` (0..1): 0 samples nothing (capture off), 2**32 everything."""
    return min(max(round(rate * _FULL), 0), _FULL)


def feature_sampled(request_id: str, threshold: int) -> bool:
    """Whether the features of the prediction ``request_id`` are captured at ``threshold``."""
    return _mmh3_32(FEATURE_PREFIX + request_id.encode(), 0, False) < threshold


def features_sampled(request_ids: Sequence[str], threshold: int) -> list[int]:
    """The positions in ``request_ids`` whose features are captured at ``threshold``."""
    if threshold >= _FULL:
        return list(range(len(request_ids)))
    head = FEATURE_PREFIX
    return [
        i
        for i, rid in enumerate(request_ids)
        if _mmh3_32(head + rid.encode(), 0, False) < threshold
    ]
