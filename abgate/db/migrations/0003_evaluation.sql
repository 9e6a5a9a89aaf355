-- What the evaluator needs from the logs: failed predictions (for error-rate guardrails), an
-- ingest order (so a tick reads only rows new since the last one), and its running aggregates.

-- gRPC status code of the answer (0 = OK). Failed rows have label -1 and no scores.
ALTER TABLE predictions ADD COLUMN status smallint NOT NULL DEFAULT 0;

-- Ingest order and time, set by PostgreSQL. A tick reads seq ranges; rows ingested less than a
-- settle time ago are left for the next tick, so a writer's transaction still in flight (its
-- lower seq not yet visible) is not skipped.
CREATE SEQUENCE predictions_seq;
ALTER TABLE predictions
    ADD COLUMN seq bigint NOT NULL DEFAULT nextval('predictions_seq'),
    ADD COLUMN ingested_at timestamptz NOT NULL DEFAULT clock_timestamp();
CREATE INDEX predictions_seq_idx ON predictions (seq);

CREATE SEQUENCE outcomes_seq;
ALTER TABLE outcomes
    ADD COLUMN seq bigint NOT NULL DEFAULT nextval('outcomes_seq'),
    ADD COLUMN ingested_at timestamptz NOT NULL DEFAULT clock_timestamp();
CREATE INDEX outcomes_seq_idx ON outcomes (seq);

-- How far the aggregates below have read (one row).
CREATE TABLE evaluation_watermark (
    id              smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    prediction_seq  bigint      NOT NULL DEFAULT 0,
    outcome_seq     bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO evaluation_watermark DEFAULT VALUES;

-- Per-arm sufficient statistics by the config version the rows were served under, so a check
-- can sum exactly the versions it needs (SRM: since the split last changed).
CREATE TABLE arm_stats (
    experiment      text             NOT NULL,
    config_version  bigint           NOT NULL,
    arm             text             NOT NULL,
    served          bigint           NOT NULL DEFAULT 0,
    errors          bigint           NOT NULL DEFAULT 0,
    score_sum       double precision NOT NULL DEFAULT 0,
    score_sumsq     double precision NOT NULL DEFAULT 0,
    outcome_n       bigint           NOT NULL DEFAULT 0,
    outcome_sum     double precision NOT NULL DEFAULT 0,
    outcome_sumsq   double precision NOT NULL DEFAULT 0,
    correct         bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, config_version, arm)
);

-- Latency histogram per arm: bucket b holds latencies in [2^(b/4), 2^((b+1)/4)) microseconds.
CREATE TABLE arm_latency (
    experiment      text     NOT NULL,
    config_version  bigint   NOT NULL,
    arm             text     NOT NULL,
    bucket          smallint NOT NULL,
    n               bigint   NOT NULL,
    PRIMARY KEY (experiment, config_version, arm, bucket)
);
