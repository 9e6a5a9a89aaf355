"""Incremental aggregation of the logs into per-arm sufficient statistics, in SQL.

A tick reads only rows whose ingest ``seq`` is above the stored watermark, adds their GROUP BY
sums into ``arm_stats``/``arm_latency`` and moves the watermark, all in one transaction: its
cost grows with new rows, not with history, and a crash mid-tick counts nothing twice.

A prediction and its outcome are counted together exactly once, when the later of the two is
read: new outcomes join every prediction read so far or in this tick, and new predictions join
the outcomes read in earlier ticks (see ``_OUTCOMES_NEW`` and ``_PREDICTIONS_NEW``). A request id
logged twice counts once (``duplicate_rows``), and an outcome counts only from the prediction's
client identity (``_eligible``); what is left out is counted in ``ignored_rows``.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from evaluator.experiments import ExperimentState
from evaluator.policy import ArmData, SplitCell
from evaluator.stats import ArmStats

# pg_advisory_lock key held while aggregating ("abgate" + 2; migrations hold "abgate" + 1).
AGGREGATE_LOCK = 0x61626761746502

# Latency histogram buckets: b holds [2^(b/4), 2^((b+1)/4)) microseconds (≈19% wide).
LATENCY_BUCKETS_PER_OCTAVE = 4


def latency_bucket_floor_us(bucket: int) -> float:
    return float(2.0 ** (bucket / LATENCY_BUCKETS_PER_OCTAVE))


# The highest seq at or below which every row is visible: rows ingested within `settle` seconds
# are left for the next tick (a writer transaction with a lower seq may still be in flight).
_UPPER = """
SELECT coalesce((SELECT seq FROM {table} WHERE seq > $1 AND ingested_at < $2
                 ORDER BY seq DESC LIMIT 1), $1)
"""


# The rows a tick reads (a statement's "INSERT 0 n" counts the groups it wrote): one scan of
# the seq index over them.
_ROWS = "SELECT count(*) FROM {table} WHERE seq > $1 AND seq <= $2"


# Each request id counts once, whatever reached the log (a client's retry on another worker or
# gateway, a reused id): only its first served row by ingest order, and per shadow its first
# shadow row, are read. The tick that reads a row decides that once (against the rows read
# before it and within its own batch) and keeps the others in ``duplicate_rows``, which every
# later join leaves out. NOT IN over the whole (nearly always empty) table is one hashed
# subplan; a NOT EXISTS became an anti-join scanning it once per joined row (5 µs a row).
_NOT_DUPLICATE = "{}.seq NOT IN (SELECT seq FROM duplicate_rows)"


# An outcome counts for the request's first served row when it comes from the same client
# identity or was accepted for any identity, and only the first such outcome (by ingest order)
# per request id and source does; the others are counted in ignored_rows. Whether a row is
# first in its batch is found by a hash aggregate of the keys that come twice (sorting a
# tick's rows by request id for a window cost more than the rest of the statement).
def _eligible(o: str, identity: str) -> str:
    return f"({o}.client_identity = {identity} OR {o}.any_identity)"


# Outcomes met (pairs CTE: experiment, eligible, first) but not counted, by reason.
_SKIPPED_OUTCOMES = """skipped AS (
    INSERT INTO ignored_rows AS i (experiment, reason, n)
    SELECT experiment, CASE WHEN eligible THEN 'duplicate_outcome' ELSE 'foreign_outcome' END,
           count(*)
    FROM pairs WHERE NOT (eligible AND first) GROUP BY 1, 2
    ON CONFLICT (experiment, reason) DO UPDATE SET n = i.n + EXCLUDED.n
)"""

# The new outcomes that an eligible outcome read in an earlier tick (seq <= $1) precedes, for
# the met CTE: one index probe per new outcome (LATERAL … LIMIT 1 keeps the planner from
# hashing every older outcome instead, a cost that would grow with history), none on a full
# pass ($1 = 0: the planner drops the CTE).
_EARLIER_OUTCOMES = f"""earlier AS (
    SELECT m.seq FROM met m
    CROSS JOIN LATERAL (
        SELECT 1 FROM outcomes e
        WHERE e.request_id = m.request_id AND e.source = m.source AND e.seq <= $1
              AND {_eligible("e", "m.pid")}
        LIMIT 1
    ) e
    WHERE $1 > 0
)"""

# Confusion counts of the counted pairs (migration 0016): label > 0 said positive, outcome
# value > 0 was positive.
_CONFUSION_COUNTS = """count(*) FILTER (WHERE label > 0) AS said_pos,
       count(*) FILTER (WHERE value > 0) AS was_pos,
       count(*) FILTER (WHERE label > 0 AND value > 0) AS true_pos"""
_CONFUSION_ADD = """said_pos = a.said_pos + EXCLUDED.said_pos,
    was_pos = a.was_pos + EXCLUDED.was_pos, true_pos = a.true_pos + EXCLUDED.true_pos"""

# The slot (migration 0015) of a current row answered at {0}: the start of its slot of {1}
# seconds, the rolling window's unit.
_SLOT = "to_timestamp(floor(extract(epoch FROM {0}) / {1}) * {1})"

# Decay bins (migration 0011), from the pairs (a served row and an outcome counted for it) the
# statement counts: per arm, numbered in the order they are counted after the pairs its
# reference already holds, the first reference_size ($4) are the reference, the rest current.
# Pairs of a row answered before the arm's monitor epoch are in no window.
_DECAY_NEW = f"""decay_new AS (
    SELECT pr.experiment, pr.arm, pr.label, pr.value, pr.pts,
           row_number() OVER (PARTITION BY pr.experiment, pr.arm ORDER BY pr.seq, pr.source)
               AS k
    FROM pairs pr LEFT JOIN monitor_epochs e USING (experiment, arm)
    WHERE pr.eligible AND pr.first AND pr.pts >= coalesce(e.from_ts, '-infinity')
), decay_w AS (
    SELECT dn.*, coalesce(d.reference_size, $4) AS size,
           CASE WHEN dn.k + coalesce(d.reference_rows, 0) <= coalesce(d.reference_size, $4)
                THEN 'reference' ELSE 'current' END AS win
    FROM decay_new dn LEFT JOIN decay_windows d USING (experiment, arm)
), decay_windows_new AS (
    INSERT INTO decay_windows AS d (experiment, arm, reference_size, reference_rows,
                                   current_from)
    SELECT experiment, arm, min(size), count(*) FILTER (WHERE win = 'reference'),
           min(pts) FILTER (WHERE win = 'current')
    FROM decay_w GROUP BY 1, 2
    ON CONFLICT (experiment, arm) DO UPDATE SET
        reference_rows = d.reference_rows + EXCLUDED.reference_rows,
        current_from = coalesce(d.current_from, EXCLUDED.current_from)
), decay_bins_new AS (
    INSERT INTO decay_bins AS b (experiment, arm, "window", kind, bin, n)
    SELECT experiment, arm, win, 'accuracy', (value = label)::int, count(*)
    FROM decay_w GROUP BY 1, 2, 3, 5
    UNION ALL
    SELECT experiment, arm, win, 'outcome', (value > 0)::int, count(*)
    FROM decay_w GROUP BY 1, 2, 3, 5
    ON CONFLICT (experiment, arm, "window", kind, bin) DO UPDATE SET n = b.n + EXCLUDED.n
), decay_slots_new AS (
    INSERT INTO drift_slots AS b (experiment, arm, measure, slot, bin, n)
    SELECT experiment, arm, 'decay:accuracy', {_SLOT.format("pts", "$5")}, (value = label)::int,
           count(*)
    FROM decay_w WHERE win = 'current' GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT experiment, arm, 'decay:outcome', {_SLOT.format("pts", "$5")}, (value > 0)::int,
           count(*)
    FROM decay_w WHERE win = 'current' GROUP BY 1, 2, 4, 5
    ON CONFLICT (experiment, arm, measure, slot, bin) DO UPDATE SET n = b.n + EXCLUDED.n
)"""

# One pass over the new rows (materialised once) decides which are first and feeds both
# aggregates. Outcomes join separately so a prediction with several outcome sources is still
# served once; they were all read in earlier ticks, so the first eligible one per request id
# and source is the first of them here.
_PREDICTIONS_NEW = f"""
WITH older AS (
    -- New rows whose key a row read in an earlier tick has (an index probe per new row, as
    -- in _EARLIER_OUTCOMES; none on a full pass).
    SELECT q.seq FROM predictions q
    CROSS JOIN LATERAL (
        SELECT 1 FROM predictions d
        WHERE d.request_id = q.request_id AND d.shadow = q.shadow
              AND (NOT q.shadow OR d.arm = q.arm) AND d.seq <= $1
        LIMIT 1
    ) d
    WHERE q.seq > $1 AND q.seq <= $2 AND $1 > 0
), multi AS (
    -- Keys that come more than once among the new rows, and their first row.
    SELECT request_id, shadow, CASE WHEN shadow THEN arm ELSE '' END AS arm_key,
           min(seq) AS first_seq
    FROM predictions WHERE seq > $1 AND seq <= $2
    GROUP BY 1, 2, 3 HAVING count(*) > 1
), n AS MATERIALIZED (
    SELECT q.seq, q.request_id, q.ts, experiment, config_version, arm, status, label, scores,
           latency_us, client_identity, q.shadow,
           coalesce(m.first_seq = q.seq, true) AND older.seq IS NULL AS first
    FROM predictions q
    LEFT JOIN multi m ON m.request_id = q.request_id AND m.shadow = q.shadow
                     AND m.arm_key = CASE WHEN q.shadow THEN q.arm ELSE '' END
    LEFT JOIN older ON older.seq = q.seq
    WHERE q.seq > $1 AND q.seq <= $2
), duplicates AS (
    INSERT INTO duplicate_rows (seq, request_id)
    SELECT seq, request_id FROM n WHERE NOT first
), ignored AS (
    INSERT INTO ignored_rows AS i (experiment, reason, n)
    SELECT experiment, 'duplicate_prediction', count(*) FROM n WHERE NOT first AND NOT shadow
    GROUP BY 1
    ON CONFLICT (experiment, reason) DO UPDATE SET n = i.n + EXCLUDED.n
), p AS (
    SELECT * FROM n WHERE first AND NOT shadow
), latency AS (
    INSERT INTO arm_latency AS l (experiment, config_version, arm, bucket, n)
    SELECT experiment, config_version, arm,
           floor(ln(greatest(latency_us, 1)) / ln(2) * {LATENCY_BUCKETS_PER_OCTAVE})::smallint,
           count(*)
    FROM p GROUP BY 1, 2, 3, 4
    ON CONFLICT (experiment, config_version, arm, bucket) DO UPDATE SET n = l.n + EXCLUDED.n
), served AS (
    SELECT experiment, config_version, arm, count(*) AS served,
           count(*) FILTER (WHERE status <> 0) AS errors,
           coalesce(sum(scores[2]) FILTER (WHERE status = 0), 0) AS score_sum,
           coalesce(sum(scores[2] * scores[2]) FILTER (WHERE status = 0), 0) AS score_sumsq
    FROM p GROUP BY 1, 2, 3
), met AS (
    SELECT p.experiment, p.config_version, p.arm, p.label, o.value, o.request_id, o.source,
           o.seq, p.ts AS pts, {_eligible("o", "p.client_identity")} AS eligible
    FROM p JOIN outcomes o ON o.request_id = p.request_id AND o.seq <= $3
    WHERE p.status = 0
), multi_met AS (
    SELECT request_id, source, eligible, min(seq) AS first_seq FROM met
    GROUP BY 1, 2, 3 HAVING count(*) > 1
), pairs AS MATERIALIZED (
    SELECT met.*, coalesce(m.first_seq = met.seq, true) AS first
    FROM met LEFT JOIN multi_met m USING (request_id, source, eligible)
), {_SKIPPED_OUTCOMES}, joined AS (
    SELECT experiment, config_version, arm, count(*) AS outcome_n,
           sum(value) AS outcome_sum, sum(value * value) AS outcome_sumsq,
           count(*) FILTER (WHERE value = label) AS correct, {_CONFUSION_COUNTS}
    FROM pairs WHERE eligible AND first
    GROUP BY 1, 2, 3
), {_DECAY_NEW}
INSERT INTO arm_stats AS a (experiment, config_version, arm, served, errors, score_sum,
                            score_sumsq, outcome_n, outcome_sum, outcome_sumsq, correct,
                            said_pos, was_pos, true_pos)
SELECT s.experiment, s.config_version, s.arm, s.served, s.errors, s.score_sum, s.score_sumsq,
       coalesce(j.outcome_n, 0), coalesce(j.outcome_sum, 0), coalesce(j.outcome_sumsq, 0),
       coalesce(j.correct, 0), coalesce(j.said_pos, 0), coalesce(j.was_pos, 0),
       coalesce(j.true_pos, 0)
FROM served s LEFT JOIN joined j USING (experiment, config_version, arm)
ON CONFLICT (experiment, config_version, arm) DO UPDATE SET
    served = a.served + EXCLUDED.served,
    errors = a.errors + EXCLUDED.errors,
    score_sum = a.score_sum + EXCLUDED.score_sum,
    score_sumsq = a.score_sumsq + EXCLUDED.score_sumsq,
    outcome_n = a.outcome_n + EXCLUDED.outcome_n,
    outcome_sum = a.outcome_sum + EXCLUDED.outcome_sum,
    outcome_sumsq = a.outcome_sumsq + EXCLUDED.outcome_sumsq,
    correct = a.correct + EXCLUDED.correct, {_CONFUSION_ADD}
"""

# New outcomes: an eligible one counts when no eligible outcome of its request id and source
# was read in an earlier tick and it is the first eligible one among the new ones.
_OUTCOMES_NEW = f"""
WITH met AS (
    SELECT p.experiment, p.config_version, p.arm, p.label, o.value, o.request_id, o.source,
           o.seq, p.ts AS pts, p.client_identity AS pid,
           {_eligible("o", "p.client_identity")} AS eligible
    FROM outcomes o
    JOIN predictions p ON p.request_id = o.request_id AND NOT p.shadow AND p.status = 0
                      AND p.seq <= $3 AND {_NOT_DUPLICATE.format("p")}
    WHERE o.seq > $1 AND o.seq <= $2
), {_EARLIER_OUTCOMES}, multi AS (
    SELECT request_id, source, eligible, min(seq) AS first_seq FROM met
    GROUP BY 1, 2, 3 HAVING count(*) > 1
), pairs AS MATERIALIZED (
    SELECT met.*, coalesce(m.first_seq = met.seq, true) AND earlier.seq IS NULL AS first
    FROM met LEFT JOIN multi m USING (request_id, source, eligible)
    LEFT JOIN earlier ON earlier.seq = met.seq
), {_SKIPPED_OUTCOMES}, {_DECAY_NEW}
INSERT INTO arm_stats AS a (experiment, config_version, arm, outcome_n, outcome_sum,
                            outcome_sumsq, correct, said_pos, was_pos, true_pos)
SELECT experiment, config_version, arm, count(*), sum(value), sum(value * value),
       count(*) FILTER (WHERE value = label), {_CONFUSION_COUNTS}
FROM pairs WHERE eligible AND first
GROUP BY 1, 2, 3
ON CONFLICT (experiment, config_version, arm) DO UPDATE SET
    outcome_n = a.outcome_n + EXCLUDED.outcome_n,
    outcome_sum = a.outcome_sum + EXCLUDED.outcome_sum,
    outcome_sumsq = a.outcome_sumsq + EXCLUDED.outcome_sumsq,
    correct = a.correct + EXCLUDED.correct, {_CONFUSION_ADD}
"""


# Shadow pairs (a shadow row and the served row of the same request) are counted once, in the
# tick that reads the later of the two: new shadow rows meet every served row read so far or
# now; new served rows meet shadow rows read in earlier ticks. Outcomes pair up as above: the
# outcomes a pair meets here were all read in earlier ticks, so per source the first eligible
# one of them counts.
_SHADOW_PAIRS_NEW = f"""
WITH pairs AS MATERIALIZED (
    SELECT s.request_id, p.experiment, s.arm AS shadow, p.label AS pl, s.label AS sl,
           p.scores[2] AS ps, s.scores[2] AS ss, p.latency_us AS plat, s.latency_us AS slat,
           p.status AS pst, s.status AS sst, p.client_identity AS pid
    FROM predictions s
    JOIN predictions p ON p.request_id = s.request_id AND NOT p.shadow AND p.seq <= $2
                      AND {_NOT_DUPLICATE.format("p")}
    WHERE s.seq > $1 AND s.seq <= $2 AND s.shadow AND {_NOT_DUPLICATE.format("s")}
    UNION ALL
    SELECT p.request_id, p.experiment, s.arm, p.label, s.label, p.scores[2], s.scores[2],
           p.latency_us, s.latency_us, p.status, s.status, p.client_identity
    FROM predictions p
    JOIN predictions s ON s.request_id = p.request_id AND s.shadow AND s.seq <= $1
                      AND {_NOT_DUPLICATE.format("s")}
    WHERE p.seq > $1 AND p.seq <= $2 AND NOT p.shadow AND {_NOT_DUPLICATE.format("p")}
), base AS (
    SELECT experiment, shadow,
           count(*) FILTER (WHERE pst = 0 AND sst = 0) AS pairs,
           count(*) FILTER (WHERE pst = 0 AND sst <> 0) AS shadow_errors,
           count(*) FILTER (WHERE pst = 0 AND sst = 0 AND pl = sl) AS agree,
           coalesce(sum(ss - ps) FILTER (WHERE pst = 0 AND sst = 0), 0) AS sd,
           coalesce(sum((ss - ps) ^ 2) FILTER (WHERE pst = 0 AND sst = 0), 0) AS sd2,
           coalesce(sum(slat - plat) FILTER (WHERE pst = 0 AND sst = 0), 0) AS ld,
           coalesce(sum((slat - plat)::float8 ^ 2) FILTER (WHERE pst = 0 AND sst = 0), 0) AS ld2
    FROM pairs GROUP BY 1, 2
), lab AS (
    SELECT pr.experiment, pr.shadow, count(*) AS labelled,
           count(*) FILTER (WHERE o.value = pr.pl AND o.value = pr.sl) AS both_right,
           count(*) FILTER (WHERE o.value = pr.pl AND o.value <> pr.sl) AS served_only,
           count(*) FILTER (WHERE o.value <> pr.pl AND o.value = pr.sl) AS shadow_only,
           count(*) FILTER (WHERE o.value <> pr.pl AND o.value <> pr.sl) AS both_wrong
    FROM pairs pr
    CROSS JOIN LATERAL (
        SELECT DISTINCT ON (e.source) e.value FROM outcomes e
        WHERE e.request_id = pr.request_id AND e.seq <= $3 AND {_eligible("e", "pr.pid")}
        ORDER BY e.source, e.seq
    ) o
    WHERE pr.pst = 0 AND pr.sst = 0
    GROUP BY 1, 2
)
INSERT INTO shadow_stats AS t (experiment, shadow, pairs, shadow_errors, agree, score_delta_sum,
    score_delta_sumsq, latency_delta_sum, latency_delta_sumsq, labelled, both_right,
    served_only_right, shadow_only_right, both_wrong)
SELECT b.experiment, b.shadow, b.pairs, b.shadow_errors, b.agree, b.sd, b.sd2, b.ld, b.ld2,
       coalesce(l.labelled, 0), coalesce(l.both_right, 0), coalesce(l.served_only, 0),
       coalesce(l.shadow_only, 0), coalesce(l.both_wrong, 0)
FROM base b LEFT JOIN lab l USING (experiment, shadow)
ON CONFLICT (experiment, shadow) DO UPDATE SET
    pairs = t.pairs + EXCLUDED.pairs,
    shadow_errors = t.shadow_errors + EXCLUDED.shadow_errors,
    agree = t.agree + EXCLUDED.agree,
    score_delta_sum = t.score_delta_sum + EXCLUDED.score_delta_sum,
    score_delta_sumsq = t.score_delta_sumsq + EXCLUDED.score_delta_sumsq,
    latency_delta_sum = t.latency_delta_sum + EXCLUDED.latency_delta_sum,
    latency_delta_sumsq = t.latency_delta_sumsq + EXCLUDED.latency_delta_sumsq,
    labelled = t.labelled + EXCLUDED.labelled,
    both_right = t.both_right + EXCLUDED.both_right,
    served_only_right = t.served_only_right + EXCLUDED.served_only_right,
    shadow_only_right = t.shadow_only_right + EXCLUDED.shadow_only_right,
    both_wrong = t.both_wrong + EXCLUDED.both_wrong
"""

_SHADOW_OUTCOMES_NEW = f"""
WITH met AS (
    SELECT p.experiment, s.arm AS shadow, p.label AS pl, s.label AS sl, o.value, o.request_id,
           o.source, o.seq, p.client_identity AS pid
    FROM outcomes o
    JOIN predictions p ON p.request_id = o.request_id AND NOT p.shadow AND p.status = 0
                      AND p.seq <= $3 AND {_NOT_DUPLICATE.format("p")}
    JOIN predictions s ON s.request_id = o.request_id AND s.shadow AND s.status = 0
                      AND s.seq <= $3 AND {_NOT_DUPLICATE.format("s")}
    WHERE o.seq > $1 AND o.seq <= $2 AND {_eligible("o", "p.client_identity")}
), {_EARLIER_OUTCOMES}, multi AS (
    SELECT request_id, shadow, source, min(seq) AS first_seq FROM met
    GROUP BY 1, 2, 3 HAVING count(*) > 1
), counted AS (
    SELECT met.* FROM met LEFT JOIN multi m USING (request_id, shadow, source)
    LEFT JOIN earlier ON earlier.seq = met.seq
    WHERE coalesce(m.first_seq = met.seq, true) AND earlier.seq IS NULL
)
INSERT INTO shadow_stats AS t (experiment, shadow, labelled, both_right, served_only_right,
                               shadow_only_right, both_wrong)
SELECT experiment, shadow, count(*),
       count(*) FILTER (WHERE value = pl AND value = sl),
       count(*) FILTER (WHERE value = pl AND value <> sl),
       count(*) FILTER (WHERE value <> pl AND value = sl),
       count(*) FILTER (WHERE value <> pl AND value <> sl)
FROM counted
GROUP BY 1, 2
ON CONFLICT (experiment, shadow) DO UPDATE SET
    labelled = t.labelled + EXCLUDED.labelled,
    both_right = t.both_right + EXCLUDED.both_right,
    served_only_right = t.served_only_right + EXCLUDED.served_only_right,
    shadow_only_right = t.shadow_only_right + EXCLUDED.shadow_only_right,
    both_wrong = t.both_wrong + EXCLUDED.both_wrong
"""


# Drift bins (migration 0009): the new first served rows that succeeded, numbered per arm by
# ingest order after the rows the arm's reference already holds; the first reference_size
# of them are the reference, the rest the current window. A sort of the new rows only.
DEFAULT_DRIFT_REFERENCE_ROWS = 1000
# The rolling current window (migration 0015): the last DEFAULT_DRIFT_WINDOW seconds of answer
# time by default, counted in DRIFT_SLOTS slots; a read takes the slots that began inside it,
# so it holds between (DRIFT_SLOTS - 1) / DRIFT_SLOTS of the window and all of it.
DEFAULT_DRIFT_WINDOW = 86400.0
DRIFT_SLOTS = 24
SCORE_BINS = 10
_DRIFT_NEW = f"""
WITH new AS (
    SELECT q.experiment, q.arm, q.label, q.scores[2] AS s, q.ts,
           row_number() OVER (PARTITION BY q.experiment, q.arm ORDER BY q.seq) AS k
    FROM predictions q
    LEFT JOIN monitor_epochs e ON e.experiment = q.experiment AND e.arm = q.arm
    WHERE q.seq > $1 AND q.seq <= $2 AND NOT q.shadow AND q.status = 0
          AND {_NOT_DUPLICATE.format("q")} AND q.ts >= coalesce(e.from_ts, '-infinity')
), w AS (
    SELECT new.*, coalesce(d.reference_size, $3) AS size,
           CASE WHEN new.k + coalesce(d.reference_rows, 0) <= coalesce(d.reference_size, $3)
                THEN 'reference' ELSE 'current' END AS win
    FROM new LEFT JOIN drift_windows d USING (experiment, arm)
), windows AS (
    INSERT INTO drift_windows AS d (experiment, arm, reference_size, reference_rows, current_from)
    SELECT experiment, arm, min(size), count(*) FILTER (WHERE win = 'reference'),
           min(ts) FILTER (WHERE win = 'current')
    FROM w GROUP BY 1, 2
    ON CONFLICT (experiment, arm) DO UPDATE SET
        reference_rows = d.reference_rows + EXCLUDED.reference_rows,
        current_from = coalesce(d.current_from, EXCLUDED.current_from)
), scores AS (
    INSERT INTO drift_bins AS b (experiment, arm, "window", kind, bin, n)
    SELECT experiment, arm, win, 'score', least(floor(s * {SCORE_BINS}), {SCORE_BINS - 1})::bigint,
           count(*)
    FROM w WHERE s >= 0 AND s <= 1 GROUP BY 1, 2, 3, 5
    ON CONFLICT (experiment, arm, "window", kind, bin) DO UPDATE SET n = b.n + EXCLUDED.n
), slots AS (
    INSERT INTO drift_slots AS b (experiment, arm, measure, slot, bin, n)
    SELECT experiment, arm, 'score', {_SLOT.format("ts", "$4")},
           least(floor(s * {SCORE_BINS}), {SCORE_BINS - 1})::bigint, count(*)
    FROM w WHERE win = 'current' AND s >= 0 AND s <= 1 GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT experiment, arm, 'class', {_SLOT.format("ts", "$4")}, label, count(*)
    FROM w WHERE win = 'current' GROUP BY 1, 2, 4, 5
    ON CONFLICT (experiment, arm, measure, slot, bin) DO UPDATE SET n = b.n + EXCLUDED.n
)
INSERT INTO drift_bins AS b (experiment, arm, "window", kind, bin, n)
SELECT experiment, arm, win, 'class', label, count(*) FROM w GROUP BY 1, 2, 3, 5
ON CONFLICT (experiment, arm, "window", kind, bin) DO UPDATE SET n = b.n + EXCLUDED.n
"""


# Feature drift (migration 0011): the new captured feature rows, one per request id (the first
# by ingest order; a row whose request id an earlier tick read is left out) and none answered
# before its arm's monitor epoch. $1/$2: the feature watermark before/after the tick.
FEATURE_DECILES = tuple(round(0.1 * i, 1) for i in range(1, 10))
_FEATURES_NEW_ROWS = """
older AS (
    SELECT q.seq FROM prediction_features q
    CROSS JOIN LATERAL (
        SELECT 1 FROM prediction_features d
        WHERE d.request_id = q.request_id AND d.seq <= $1
        LIMIT 1
    ) d
    WHERE q.seq > $1 AND q.seq <= $2 AND $1 > 0
), firsts AS (
    SELECT request_id, min(seq) AS first_seq FROM prediction_features
    WHERE seq > $1 AND seq <= $2 GROUP BY 1
), fnew AS MATERIALIZED (
    SELECT q.seq, q.experiment, q.arm, q.features, q.ts
    FROM prediction_features q
    JOIN firsts f ON f.first_seq = q.seq
    LEFT JOIN older o ON o.seq = q.seq
    LEFT JOIN monitor_epochs e ON e.experiment = q.experiment AND e.arm = q.arm
    WHERE q.seq > $1 AND q.seq <= $2 AND o.seq IS NULL
          AND q.ts >= coalesce(e.from_ts, '-infinity')
)"""

# 1. The new rows that complete an arm's reference ($3: its size when the arm is new) are kept
# in feature_reference.
_FEATURES_REFERENCE_NEW = f"""
WITH {_FEATURES_NEW_ROWS}, numbered AS (
    SELECT fnew.*, row_number() OVER (PARTITION BY experiment, arm ORDER BY seq) AS k FROM fnew
), w AS (
    SELECT n.*, coalesce(d.reference_size, $3) AS size,
           n.k + coalesce(d.reference_rows, 0) <= coalesce(d.reference_size, $3) AS is_ref
    FROM numbered n LEFT JOIN feature_windows d USING (experiment, arm)
), windows AS (
    INSERT INTO feature_windows AS d (experiment, arm, reference_size, reference_rows)
    SELECT experiment, arm, min(size), count(*) FILTER (WHERE is_ref) FROM w GROUP BY 1, 2
    ON CONFLICT (experiment, arm) DO UPDATE SET
        reference_rows = d.reference_rows + EXCLUDED.reference_rows
)
INSERT INTO feature_reference (experiment, arm, seq, features)
SELECT experiment, arm, seq, features FROM w WHERE is_ref
"""

# 2. An arm whose reference just became complete gets its edges (per feature, the distinct
# deciles of the reference's finite values) and its reference bins, once. NaN compares above
# every number in PostgreSQL, so "< 'Infinity'" leaves NaN out too.
_FINITE = "{0} > '-Infinity' AND {0} < 'Infinity'"
_FEATURE_EDGES = f"""
WITH ready AS (
    SELECT experiment, arm FROM feature_windows
    WHERE NOT edges_ready AND reference_rows >= reference_size
), vals AS (
    SELECT r.experiment, r.arm, (u.i - 1)::int AS feature, u.v::float8 AS v
    FROM feature_reference r JOIN ready USING (experiment, arm)
    CROSS JOIN LATERAL unnest(r.features) WITH ORDINALITY AS u(v, i)
    WHERE {_FINITE.format("u.v")}
), q AS (
    SELECT experiment, arm, feature,
           percentile_cont(ARRAY{list(FEATURE_DECILES)}::float8[]) WITHIN GROUP (ORDER BY v) AS e
    FROM vals GROUP BY 1, 2, 3
), edges AS (
    INSERT INTO feature_edges (experiment, arm, feature, edges)
    SELECT experiment, arm, feature, ARRAY(SELECT DISTINCT x FROM unnest(q.e) AS x ORDER BY x)
    FROM q
    RETURNING experiment, arm, feature, edges
), bins AS (
    INSERT INTO feature_bins AS b (experiment, arm, "window", feature, bin, n)
    SELECT v.experiment, v.arm, 'reference', v.feature, width_bucket(v.v, e.edges), count(*)
    FROM vals v JOIN edges e USING (experiment, arm, feature)
    GROUP BY 1, 2, 3, 4, 5
)
UPDATE feature_windows d SET edges_ready = true
FROM ready WHERE d.experiment = ready.experiment AND d.arm = ready.arm
"""

# 3. Every other new row of an arm with edges is current: one bin per feature value.
_FEATURES_CURRENT_NEW = f"""
WITH {_FEATURES_NEW_ROWS}, rows AS (
    SELECT fnew.* FROM fnew
    JOIN feature_windows d ON d.experiment = fnew.experiment AND d.arm = fnew.arm
                          AND d.edges_ready
    LEFT JOIN feature_reference r ON r.experiment = fnew.experiment AND r.arm = fnew.arm
                                 AND r.seq = fnew.seq
    WHERE r.seq IS NULL
), began AS (
    UPDATE feature_windows d SET current_from = f.ts
    FROM (SELECT experiment, arm, min(ts) AS ts FROM rows GROUP BY 1, 2) f
    WHERE d.experiment = f.experiment AND d.arm = f.arm AND d.current_from IS NULL
), cur AS (
    SELECT rows.experiment, rows.arm, rows.ts, (u.i - 1)::int AS feature, u.v::float8 AS v
    FROM rows CROSS JOIN LATERAL unnest(rows.features) WITH ORDINALITY AS u(v, i)
    WHERE {_FINITE.format("u.v")}
), binned AS MATERIALIZED (
    SELECT c.experiment, c.arm, c.feature, c.ts, width_bucket(c.v, e.edges) AS bin
    FROM cur c JOIN feature_edges e USING (experiment, arm, feature)
), slots AS (
    INSERT INTO drift_slots AS b (experiment, arm, measure, slot, bin, n)
    SELECT experiment, arm, 'feature:' || feature, {_SLOT.format("ts", "$3")}, bin, count(*)
    FROM binned GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (experiment, arm, measure, slot, bin) DO UPDATE SET n = b.n + EXCLUDED.n
)
INSERT INTO feature_bins AS b (experiment, arm, "window", feature, bin, n)
SELECT experiment, arm, 'current', feature, bin, count(*)
FROM binned GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (experiment, arm, "window", feature, bin) DO UPDATE SET n = b.n + EXCLUDED.n
"""


@dataclass(frozen=True)
class TickResult:
    predictions: int  # log rows read this tick (all of them: served, shadow, failed)
    outcomes: int
    prediction_seq: int  # watermarks after the tick
    outcome_seq: int
    seconds: float
    behind: bool = False  # a log had more rows than max_rows: the next tick reads on
    ticks: int = 1  # transactions it took (catch_up)


# Most rows (by ingest seq) of each log table one tick reads. A tick's sorts and hash joins grow
# with the rows it reads: the first tick over 100M logged rows spilled more than this VM's 66 GB
# free disk into pgsql_tmp (benchmarks/bench_evaluator.py). Bounded, an evaluator that starts
# on a long log, or comes back after a while, catches up in transactions of this size.
DEFAULT_TICK_ROWS = 1_000_000


async def aggregate(
    conn: asyncpg.Connection,
    *,
    settle: float = 2.0,
    now: float | None = None,
    drift_reference_rows: int = DEFAULT_DRIFT_REFERENCE_ROWS,
    feature_reference_rows: int | None = None,
    decay_reference_rows: int | None = None,
    drift_window: float = DEFAULT_DRIFT_WINDOW,
    max_rows: int = DEFAULT_TICK_ROWS,
) -> TickResult:
    """Fold the rows ingested since the last tick into the aggregates; one transaction.
    ``max_rows``: most seq values of each log table read (``behind`` says more are waiting:
    ``catch_up`` reads on). Reading a log in several ticks counts what one tick would: a
    prediction and its outcome meet in whichever tick reads the later of the two.
    ``drift_reference_rows``: the reference window's size of an arm whose first row this
    tick reads (an arm keeps the size its reference started with); the feature rows' and the
    labelled rows' (decay) references default to it. ``drift_window``: seconds of the rolling
    current window (``DRIFT_SLOTS`` slots; slots that ended before it are deleted)."""
    sizes = (
        drift_reference_rows,
        drift_reference_rows if feature_reference_rows is None else feature_reference_rows,
        drift_reference_rows if decay_reference_rows is None else decay_reference_rows,
    )
    for name, size in zip(("drift", "feature", "decay"), sizes, strict=True):
        if size < 1:
            raise ValueError(f"{name}_reference_rows must be >= 1, got {size!r}")
    if not (drift_window > 0 and math.isfinite(drift_window)):
        raise ValueError(f"drift_window must be a positive number of seconds, got {drift_window!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows!r}")
    started = time.perf_counter()
    # One aggregator at a time, across processes: a session lock taken before the snapshot
    # (a lock inside a repeatable-read transaction would wait with a stale snapshot).
    await conn.execute("SELECT pg_advisory_lock($1)", AGGREGATE_LOCK)
    try:
        return await _aggregate(conn, settle, now, started, sizes, drift_window, max_rows)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", AGGREGATE_LOCK)


async def catch_up(conn: asyncpg.Connection, **options: Any) -> TickResult:
    """``aggregate`` until no log is left behind: every row the cutoff lets in is read, in
    transactions of at most ``max_rows`` rows of each log; one result for them all (its
    ``ticks`` says how many there were)."""
    started = time.perf_counter()
    result = await aggregate(conn, **options)
    predictions, outcomes, ticks = result.predictions, result.outcomes, 1
    while result.behind:
        result = await aggregate(conn, **options)
        predictions += result.predictions
        outcomes += result.outcomes
        ticks += 1
    return TickResult(
        predictions,
        outcomes,
        result.prediction_seq,
        result.outcome_seq,
        time.perf_counter() - started,
        ticks=ticks,
    )


async def _aggregate(
    conn: asyncpg.Connection,
    settle: float,
    now: float | None,
    started: float,
    sizes: tuple[int, int, int],
    window: float,
    max_rows: int,
) -> TickResult:
    drift_rows, feature_rows, decay_rows = sizes
    slot = window / DRIFT_SLOTS
    cutoff = time.time() - settle if now is None else now - settle
    async with conn.transaction(isolation="repeatable_read"):
        # asyncpg prepares these statements; after five runs PostgreSQL would switch to a
        # generic plan that cannot see how narrow the seq range is and scans far more (measured
        # 7x slower per tick on 1M rows; benchmarks/bench_evaluator.py).
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        row = await conn.fetchrow(
            "SELECT prediction_seq, outcome_seq, feature_seq FROM evaluation_watermark FOR UPDATE"
        )
        assert row is not None, "migration 0003 inserts the watermark row"
        wp, wo, wf = int(row["prediction_seq"]), int(row["outcome_seq"]), int(row["feature_seq"])
        cut = _timestamp(cutoff)
        up = int(await conn.fetchval(_UPPER.format(table="predictions"), wp, cut))
        uo = int(await conn.fetchval(_UPPER.format(table="outcomes"), wo, cut))
        uf = int(await conn.fetchval(_UPPER.format(table="prediction_features"), wf, cut))
        # At most max_rows seq values of each: a lower upper is an earlier cutoff, as valid.
        behind = up - wp > max_rows or uo - wo > max_rows or uf - wf > max_rows
        up, uo, uf = min(up, wp + max_rows), min(uo, wo + max_rows), min(uf, wf + max_rows)
        n_pred = n_out = 0
        if up > wp:
            n_pred = await conn.fetchval(_ROWS.format(table="predictions"), wp, up)
            # Outcomes read in earlier ticks (seq <= wo) meet their late predictions here.
            await conn.execute(_PREDICTIONS_NEW, wp, up, wo, decay_rows, slot)
            await conn.execute(_SHADOW_PAIRS_NEW, wp, up, wo)
            # After _PREDICTIONS_NEW: this batch's duplicates are in duplicate_rows.
            await conn.execute(_DRIFT_NEW, wp, up, drift_rows, slot)
        if uo > wo:
            n_out = await conn.fetchval(_ROWS.format(table="outcomes"), wo, uo)
            await conn.execute(_OUTCOMES_NEW, wo, uo, up, decay_rows, slot)
            await conn.execute(_SHADOW_OUTCOMES_NEW, wo, uo, up)
        if uf > wf:
            await conn.execute(_FEATURES_REFERENCE_NEW, wf, uf, feature_rows)
            await conn.execute(_FEATURE_EDGES)
            await conn.execute(_FEATURES_CURRENT_NEW, wf, uf, slot)
        # Slots that ended before the window: none is read again.
        await conn.execute(
            "DELETE FROM drift_slots WHERE slot + make_interval(secs => $1) <= now()"
            " - make_interval(secs => $2)",
            slot,
            window,
        )
        if up > wp or uo > wo or uf > wf:
            await conn.execute(
                "UPDATE evaluation_watermark SET prediction_seq = $1, outcome_seq = $2, "
                "feature_seq = $3, updated_at = now()",
                up,
                uo,
                uf,
            )
    return TickResult(n_pred, n_out, up, uo, time.perf_counter() - started, behind)


# Statistics the tick's plans need. A log table fills faster than autovacuum's one-minute nap
# re-reads it: a fresh day's partition, or a fresh database, is planned from an estimate a
# hundred times too small, and the joins on request_id become nested loops over every pair
# (measured: the demo's second run stalled with each tick statement running for minutes on 30k
# rows; after ANALYZE the same statements take 0.1-0.6 s). So before a tick the leader ANALYZEs
# the log tables that changed by more than ANALYZE_MIN_ROWS + ANALYZE_FRACTION of their rows at
# the last ANALYZE (autovacuum's rule with a larger floor), skipping any that autovacuum holds.
ANALYZE_MIN_ROWS = 1000
ANALYZE_FRACTION = 0.2
_STALE_LOG_TABLES = r"""
SELECT format('%I.%I', s.schemaname, s.relname)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE (s.relname IN ('outcomes', 'duplicate_rows') OR s.relname LIKE 'predictions\_%')
  AND s.n_mod_since_analyze > $1 + $2 * greatest(c.reltuples, 0)
ORDER BY 1
"""


async def analyze_stale(
    conn: asyncpg.Connection,
    *,
    min_rows: int = ANALYZE_MIN_ROWS,
    fraction: float = ANALYZE_FRACTION,
) -> list[str]:
    """ANALYZE the log tables whose statistics are stale (see ``_STALE_LOG_TABLES``); returns
    their names. Cheap when none is: one read of the statistics views."""
    tables = [r[0] for r in await conn.fetch(_STALE_LOG_TABLES, min_rows, fraction)]
    if tables:
        await conn.execute(f"ANALYZE (SKIP_LOCKED) {', '.join(tables)}")
    return tables


async def reset(conn: asyncpg.Connection) -> None:
    """Forget every aggregate (the next tick recomputes from the first row: a full pass).
    ``drift_alerts`` stays: it records what the audit table already holds; so does
    ``monitor_epochs``: where each arm's monitoring windows start."""
    async with conn.transaction():
        await conn.execute(
            "TRUNCATE arm_stats, arm_latency, shadow_stats, ignored_rows, duplicate_rows, "
            "drift_windows, drift_bins, feature_windows, feature_reference, feature_edges, "
            "feature_bins, decay_windows, decay_bins, drift_slots"
        )
        await conn.execute(
            "UPDATE evaluation_watermark SET prediction_seq = 0, outcome_seq = 0, feature_seq = 0"
        )


_MONITORED_TABLES = (
    "drift_windows", "drift_bins", "feature_windows", "feature_reference", "feature_edges",
    "feature_bins", "decay_windows", "decay_bins", "drift_slots", "drift_alerts",
)  # fmt: skip


async def restart_windows(
    conn: asyncpg.Connection, experiment: str, arm: str, since_version: int
) -> bool:
    """Start ``arm``'s monitoring windows afresh at snapshot version ``since_version`` (a
    promotion): its drift, feature and decay references become the first rows answered at or
    after that version was written, and its crossings are news again. A no-op (False) when its
    windows already start there, so the tick can ask every time."""
    async with conn.transaction():
        # Not while another process aggregates (it would add rows to the bins being dropped).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AGGREGATE_LOCK)
        changed = await conn.fetchval(
            """INSERT INTO monitor_epochs AS e (experiment, arm, since_version, from_ts)
               SELECT $1, $2, $3, coalesce(
                   (SELECT created_at FROM experiment_versions WHERE seq = $3), now())
               ON CONFLICT (experiment, arm) DO UPDATE SET
                   since_version = EXCLUDED.since_version, from_ts = EXCLUDED.from_ts
               WHERE e.since_version <> EXCLUDED.since_version
               RETURNING true""",
            experiment,
            arm,
            since_version,
        )
        if not changed:
            return False
        for table in _MONITORED_TABLES:
            await conn.execute(
                f"DELETE FROM {table} WHERE experiment = $1 AND arm = $2", experiment, arm
            )
        return True


async def monitor_epochs(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str | None = None
) -> dict[tuple[str, str], tuple[int, float]]:
    """(experiment, arm) -> (since_version, from_ts as epoch seconds) of restarted windows."""
    rows = await conn.fetch(
        "SELECT experiment, arm, since_version, extract(epoch FROM from_ts) AS t"
        " FROM monitor_epochs WHERE $1::text IS NULL OR experiment = $1",
        experiment,
    )
    return {(r["experiment"], r["arm"]): (int(r["since_version"]), float(r["t"])) for r in rows}


def _timestamp(epoch: float) -> object:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


# -- reading ------------------------------------------------------------------------------------
_SUMS = (
    "served", "errors", "score_sum", "score_sumsq", "outcome_n", "outcome_sum", "outcome_sumsq",
    "correct", "said_pos", "was_pos", "true_pos",
)  # fmt: skip


@dataclass
class ArmTotals:
    """One arm's sums over a range of config versions."""

    served: int = 0
    errors: int = 0
    score_sum: float = 0.0
    score_sumsq: float = 0.0
    outcome_n: int = 0
    outcome_sum: float = 0.0
    outcome_sumsq: float = 0.0
    correct: int = 0
    said_pos: int = 0  # labelled rows predicted positive (label > 0)
    was_pos: int = 0  # labelled rows whose outcome was positive (value > 0)
    true_pos: int = 0  # both
    latency: dict[int, int] = field(default_factory=dict)  # bucket -> rows

    def confusion(self) -> dict[str, float | None]:
        """Precision, recall and false-positive rate of the labelled rows (None: no rows)."""
        tp, n = self.true_pos, self.outcome_n
        fp, fn = self.said_pos - tp, self.was_pos - tp
        tn = n - tp - fp - fn

        def rate(a: int, b: int) -> float | None:
            return a / b if b > 0 else None

        return {"precision": rate(tp, tp + fp), "recall": rate(tp, tp + fn),
                "fpr": rate(fp, fp + tn)}  # fmt: skip

    def add(self, other: Mapping[str, float]) -> None:
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + type(getattr(self, name))(other[name]))

    def slower_than(self, threshold_us: float) -> int:
        """Rows certainly slower than ``threshold_us`` (their bucket starts above it)."""
        return sum(n for b, n in self.latency.items() if latency_bucket_floor_us(b) >= threshold_us)

    def latency_quantile_us(self, q: float) -> float:
        """Upper edge of the histogram bucket holding quantile ``q`` (nan without rows)."""
        total = sum(self.latency.values())
        if total == 0:
            return math.nan
        rank = q * total
        seen = 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen >= rank:
                return latency_bucket_floor_us(b + 1)
        return latency_bucket_floor_us(max(self.latency) + 1)


async def arm_totals(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str, since_version: int = 0
) -> dict[str, ArmTotals]:
    """Per-arm sums over rows served under config versions >= ``since_version``."""
    out: dict[str, ArmTotals] = {}
    rows = await conn.fetch(
        "SELECT arm, sum(served) AS served, sum(errors) AS errors, sum(score_sum) AS score_sum,"
        " sum(score_sumsq) AS score_sumsq, sum(outcome_n) AS outcome_n,"
        " sum(outcome_sum) AS outcome_sum, sum(outcome_sumsq) AS outcome_sumsq,"
        " sum(correct) AS correct, sum(said_pos) AS said_pos, sum(was_pos) AS was_pos,"
        " sum(true_pos) AS true_pos FROM arm_stats WHERE experiment = $1 AND config_version >= $2"
        " GROUP BY arm",
        experiment,
        since_version,
    )
    for r in rows:
        out.setdefault(r["arm"], ArmTotals()).add(r)
    lat = await conn.fetch(
        "SELECT arm, bucket, sum(n) AS n FROM arm_latency WHERE experiment = $1"
        " AND config_version >= $2 GROUP BY arm, bucket",
        experiment,
        since_version,
    )
    for r in lat:
        out.setdefault(r["arm"], ArmTotals()).latency[int(r["bucket"])] = int(r["n"])
    return out


def metric_stats(metric: str, totals: ArmTotals) -> ArmStats:
    """An arm's primary metric as sufficient statistics: ``accuracy`` is the share of outcomes
    equal to the predicted label (0/1 values), ``outcome`` the mean outcome value, ``score`` the
    mean positive-class score of successful predictions."""
    if metric == "accuracy":
        return ArmStats(totals.outcome_n, float(totals.correct), float(totals.correct))
    if metric == "outcome":
        return ArmStats(totals.outcome_n, totals.outcome_sum, totals.outcome_sumsq)
    if metric == "score":
        return ArmStats(totals.served - totals.errors, totals.score_sum, totals.score_sumsq)
    raise ValueError(f"unknown metric {metric!r}")


async def ignored_totals(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str | None = None
) -> dict[tuple[str, str], int]:
    """(experiment, reason) -> log rows the aggregation read and left out (``ignored_rows``:
    duplicate_prediction, foreign_outcome, duplicate_outcome)."""
    rows = await conn.fetch(
        "SELECT experiment, reason, n FROM ignored_rows WHERE $1::text IS NULL OR experiment = $1",
        experiment,
    )
    return {(r["experiment"], r["reason"]): int(r["n"]) for r in rows}


@dataclass
class DriftBins:
    """One arm's drift bins: bin -> rows, per kind ('score', 'class'), per window:
    ``current`` every row after the reference, ``window`` those of the rolling current window
    (None: not read, the current rows stand for it)."""

    reference_size: int
    reference_rows: int
    reference: dict[str, dict[int, int]] = field(default_factory=dict)
    current: dict[str, dict[int, int]] = field(default_factory=dict)
    window: dict[str, dict[int, int]] | None = None


async def window_totals(
    conn: asyncpg.Connection | asyncpg.Pool,
    experiment: str | None = None,
    seconds: float = DEFAULT_DRIFT_WINDOW,
) -> dict[tuple[str, str], dict[str, dict[int, int]]]:
    """(experiment, arm) -> measure -> bin -> rows in the slots (migration 0015) that began in
    the last ``seconds``: the rolling current window."""
    out: dict[tuple[str, str], dict[str, dict[int, int]]] = {}
    for r in await conn.fetch(
        "SELECT experiment, arm, measure, bin, sum(n)::bigint AS n FROM drift_slots"
        " WHERE ($1::text IS NULL OR experiment = $1)"
        " AND slot > now() - make_interval(secs => $2) GROUP BY 1, 2, 3, 4",
        experiment,
        seconds,
    ):
        key = (r["experiment"], r["arm"])
        out.setdefault(key, {}).setdefault(r["measure"], {})[int(r["bin"])] = int(r["n"])
    return out


async def drift_totals(
    conn: asyncpg.Connection | asyncpg.Pool,
    experiment: str | None = None,
    window: float = DEFAULT_DRIFT_WINDOW,
) -> dict[tuple[str, str], DriftBins]:
    """(experiment, arm) -> its drift windows (migration 0009) and its rolling window of
    ``window`` seconds, for one experiment or all."""
    out: dict[tuple[str, str], DriftBins] = {}
    for r in await conn.fetch(
        "SELECT * FROM drift_windows WHERE $1::text IS NULL OR experiment = $1", experiment
    ):
        out[(r["experiment"], r["arm"])] = DriftBins(
            int(r["reference_size"]), int(r["reference_rows"])
        )
    for r in await conn.fetch(
        'SELECT experiment, arm, "window", kind, bin, n FROM drift_bins'
        " WHERE $1::text IS NULL OR experiment = $1",
        experiment,
    ):
        bins = out.get((r["experiment"], r["arm"]))
        if bins is None:
            continue
        side = bins.reference if r["window"] == "reference" else bins.current
        side.setdefault(r["kind"], {})[int(r["bin"])] = int(r["n"])
    recent = await window_totals(conn, experiment, window)
    for key, bins in out.items():
        got = recent.get(key, {})
        bins.window = {kind: got[kind] for kind in ("score", "class") if kind in got}
    return out


@dataclass
class FeatureBins:
    """One arm's feature drift windows: per feature (0-based), its edges and bin -> rows per
    window; ``edges`` is empty until the reference is complete."""

    reference_size: int
    reference_rows: int
    edges: dict[int, list[float]] = field(default_factory=dict)
    reference: dict[int, dict[int, int]] = field(default_factory=dict)
    current: dict[int, dict[int, int]] = field(default_factory=dict)
    window: dict[int, dict[int, int]] | None = None  # as DriftBins.window


async def feature_totals(
    conn: asyncpg.Connection | asyncpg.Pool,
    experiment: str | None = None,
    window: float = DEFAULT_DRIFT_WINDOW,
) -> dict[tuple[str, str], FeatureBins]:
    """(experiment, arm) -> its feature drift windows (migration 0011) and rolling window."""
    out: dict[tuple[str, str], FeatureBins] = {}
    for r in await conn.fetch(
        "SELECT * FROM feature_windows WHERE $1::text IS NULL OR experiment = $1", experiment
    ):
        out[(r["experiment"], r["arm"])] = FeatureBins(
            int(r["reference_size"]), int(r["reference_rows"])
        )
    for r in await conn.fetch(
        "SELECT experiment, arm, feature, edges FROM feature_edges"
        " WHERE $1::text IS NULL OR experiment = $1",
        experiment,
    ):
        bins = out.get((r["experiment"], r["arm"]))
        if bins is not None:
            bins.edges[int(r["feature"])] = [float(x) for x in r["edges"]]
    for r in await conn.fetch(
        'SELECT experiment, arm, "window", feature, bin, n FROM feature_bins'
        " WHERE $1::text IS NULL OR experiment = $1",
        experiment,
    ):
        bins = out.get((r["experiment"], r["arm"]))
        if bins is None:
            continue
        side = bins.reference if r["window"] == "reference" else bins.current
        side.setdefault(int(r["feature"]), {})[int(r["bin"])] = int(r["n"])
    recent = await window_totals(conn, experiment, window)
    for key, bins in out.items():
        got = recent.get(key, {})
        bins.window = {f: got[f"feature:{f}"] for f in bins.edges if f"feature:{f}" in got}
    return out


async def decay_totals(
    conn: asyncpg.Connection | asyncpg.Pool,
    experiment: str | None = None,
    window: float = DEFAULT_DRIFT_WINDOW,
) -> dict[tuple[str, str], DriftBins]:
    """(experiment, arm) -> its decay windows (migration 0011): kinds 'accuracy' and
    'outcome', bins 0/1, in the shape of the drift bins, with the rolling window."""
    out: dict[tuple[str, str], DriftBins] = {}
    for r in await conn.fetch(
        "SELECT * FROM decay_windows WHERE $1::text IS NULL OR experiment = $1", experiment
    ):
        out[(r["experiment"], r["arm"])] = DriftBins(
            int(r["reference_size"]), int(r["reference_rows"])
        )
    for r in await conn.fetch(
        'SELECT experiment, arm, "window", kind, bin, n FROM decay_bins'
        " WHERE $1::text IS NULL OR experiment = $1",
        experiment,
    ):
        bins = out.get((r["experiment"], r["arm"]))
        if bins is None:
            continue
        side = bins.reference if r["window"] == "reference" else bins.current
        side.setdefault(r["kind"], {})[int(r["bin"])] = int(r["n"])
    recent = await window_totals(conn, experiment, window)
    for key, bins in out.items():
        got = recent.get(key, {})
        bins.window = {k: got[f"decay:{k}"] for k in ("accuracy", "outcome") if f"decay:{k}" in got}
    return out


async def shadow_totals(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str
) -> dict[str, dict[str, float]]:
    """Per-shadow pairwise sums of ``experiment`` (``shadow_stats`` columns)."""
    every = await all_shadow_totals(conn, experiment)
    return {shadow: sums for (_, shadow), sums in every.items()}


async def all_shadow_totals(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str | None = None
) -> dict[tuple[str, str], dict[str, float]]:
    """(experiment, shadow) -> pairwise sums, for one experiment or all of them."""
    rows = await conn.fetch(
        "SELECT * FROM shadow_stats WHERE $1::text IS NULL OR experiment = $1 "
        "ORDER BY experiment, shadow",
        experiment,
    )
    return {
        (r["experiment"], r["shadow"]): {
            k: float(v) for k, v in r.items() if k not in ("experiment", "shadow")
        }
        for r in rows
    }


async def arm_totals_by_version(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str
) -> dict[int, dict[str, ArmTotals]]:
    """config version -> arm -> sums of the rows served under it (``arm_stats`` as stored)."""
    out: dict[int, dict[str, ArmTotals]] = {}
    rows = await conn.fetch(
        "SELECT config_version, arm, served, errors, score_sum, score_sumsq, outcome_n,"
        " outcome_sum, outcome_sumsq, correct, said_pos, was_pos, true_pos FROM arm_stats"
        " WHERE experiment = $1",
        experiment,
    )
    for r in rows:
        out.setdefault(int(r["config_version"]), {}).setdefault(r["arm"], ArmTotals()).add(r)
    lat = await conn.fetch(
        "SELECT config_version, arm, bucket, n FROM arm_latency WHERE experiment = $1",
        experiment,
    )
    for r in lat:
        totals = out.setdefault(int(r["config_version"]), {}).setdefault(r["arm"], ArmTotals())
        totals.latency[int(r["bucket"])] = totals.latency.get(int(r["bucket"]), 0) + int(r["n"])
    return out


async def version_history(
    conn: asyncpg.Connection | asyncpg.Pool, experiment: str
) -> list[tuple[int, ExperimentState]]:
    """(snapshot seq, state) of every version of ``experiment``, oldest first."""
    rows = await conn.fetch(
        "SELECT seq, config::text AS config FROM experiment_versions WHERE experiment = $1"
        " ORDER BY version",
        experiment,
    )
    return [(int(r["seq"]), ExperimentState.from_json(json.loads(r["config"]))) for r in rows]


def _merge(into: ArmTotals, other: ArmTotals) -> None:
    for name in _SUMS:
        setattr(into, name, getattr(into, name) + getattr(other, name))
    for b, n in other.latency.items():
        into.latency[b] = into.latency.get(b, 0) + n


def build_arm_data(
    state: ExperimentState,
    history: Sequence[tuple[int, ExperimentState]],
    by_version: Mapping[int, Mapping[str, ArmTotals]],
    since: int,
) -> dict[str, ArmData]:
    """What the policy of ``state`` reads after a tick (pure; the tick and
    ``evaluator.simulate`` both build it here): per arm, the primary metric and the guardrail
    counts over every row, rows served since the current split (config version ``since`` on),
    and the same per split. A row logged under config version v was routed by the latest
    version of the experiment with seq <= v; its split is that version's window (its
    ``since_version``, or its own seq), so pausing, resuming and re-weighting each start one.
    """
    seqs = [seq for seq, _ in history]
    window_of: dict[int, Mapping[str, float]] = {}
    cells: dict[int, dict[str, ArmTotals]] = {}
    everything: dict[str, ArmTotals] = {}
    current: dict[str, ArmTotals] = {}
    for version in sorted(by_version):
        i = max(0, bisect.bisect_right(seqs, version) - 1)
        seq, st = history[i] if history else (since, state)
        start = st.since_version or seq
        window_of.setdefault(start, st.weights)
        per_arm = cells.setdefault(start, {})
        for name, totals in by_version[version].items():
            _merge(per_arm.setdefault(name, ArmTotals()), totals)
            _merge(everything.setdefault(name, ArmTotals()), totals)
            if version >= since:
                _merge(current.setdefault(name, ArmTotals()), totals)
    limit_us = state.guardrails.max_p99_latency_ms * 1000.0
    order = sorted(cells)
    data = {}
    for arm in state.arms:
        a = everything.get(arm.name, ArmTotals())
        splits = []
        for start in order:
            c = cells[start].get(arm.name, ArmTotals())
            splits.append(
                SplitCell(
                    weight=float(window_of[start].get(arm.name, 0.0)),
                    metric=metric_stats(state.primary_metric, c),
                    served=c.served,
                    errors=c.errors,
                    slow=c.slower_than(limit_us) if limit_us > 0 else 0,
                )
            )
        data[arm.name] = ArmData(
            metric=metric_stats(state.primary_metric, a),
            served_since=current.get(arm.name, ArmTotals()).served,
            window_served=a.served,
            window_errors=a.errors,
            window_slow=a.slower_than(limit_us) if limit_us > 0 else 0,
            p99_ms=a.latency_quantile_us(0.99) / 1000.0,
            splits=tuple(splits),
            confusion=a.confusion(),
        )
    return data


async def arm_data(
    conn: asyncpg.Connection | asyncpg.Pool, state: ExperimentState, since: int
) -> dict[str, ArmData]:
    """``build_arm_data`` from PostgreSQL: the experiment's aggregates and version history."""
    by_version = await arm_totals_by_version(conn, state.name)
    history = await version_history(conn, state.name)
    return build_arm_data(state, history, by_version, since)
