-- Captured request features (issue #16): for a sampled share of each experiment's served
-- predictions (ExperimentDefinition.feature_sample_rate, default 0 = off), the exact float32
-- feature vector the model saw, keyed by the prediction's request id.
--
-- The gateway samples by a hash of the request id (a retry is sampled the same way) and writes
-- these rows like prediction rows: batched binary COPY, the disk spool while PostgreSQL is
-- away, idempotent replays. `ts` is the prediction row's own `ts`, so a replayed row lands on
-- the same key (ON CONFLICT DO NOTHING) and in the same day's partition as its prediction.
--
-- Features may be personal data: the table is partitioned by day like predictions, and
-- retention (abgate.db.partitions, the evaluator's --retention-days) drops a day's partition of
-- both tables together.
CREATE TABLE prediction_features (
    request_id  text        NOT NULL,
    ts          timestamptz NOT NULL,
    experiment  text        NOT NULL,
    arm         text        NOT NULL,
    features    real[]      NOT NULL,
    PRIMARY KEY (request_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE prediction_features_default PARTITION OF prediction_features DEFAULT;

CREATE INDEX prediction_features_experiment_ts ON prediction_features (experiment, ts);
