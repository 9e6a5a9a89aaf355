-- Logs of served and shadow predictions, outcomes, experiment versions and the model registry.

-- One row per served or shadow prediction. The gateway fixes `ts` when it answers, so a replayed
-- row carries the same (request_id, shadow, arm, ts) and lands on the same key: replays are
-- harmless with INSERT ... ON CONFLICT DO NOTHING. Partitioned by time for retention.
CREATE TABLE predictions (
    request_id      text        NOT NULL,
    ts              timestamptz NOT NULL,
    experiment      text        NOT NULL,
    config_version  bigint      NOT NULL,
    bucket          integer     NOT NULL CHECK (bucket BETWEEN 0 AND 9999),
    hash_version    smallint    NOT NULL,
    arm             text        NOT NULL,
    model_id        text        NOT NULL,
    model_version   text        NOT NULL,
    model_sha256    text        NOT NULL,
    label           bigint      NOT NULL,
    scores          real[]      NOT NULL,
    latency_us      integer     NOT NULL,
    shadow          boolean     NOT NULL DEFAULT false,
    gateway_id      text        NOT NULL,
    PRIMARY KEY (request_id, shadow, arm, ts)
) PARTITION BY RANGE (ts);

-- Rows outside every dated partition land here. Dated partitions (for retention by dropping
-- old ones) are not managed yet; until then everything is in this one.
CREATE TABLE predictions_default PARTITION OF predictions DEFAULT;

CREATE INDEX predictions_experiment_ts ON predictions (experiment, ts);

-- Outcomes (labels, rewards) arrive later, by request_id; they may arrive before the
-- prediction's row is flushed, so there is no foreign key.
CREATE TABLE outcomes (
    request_id  text             NOT NULL,
    value       double precision NOT NULL,
    ts          timestamptz      NOT NULL DEFAULT now(),
    source      text             NOT NULL DEFAULT '',
    PRIMARY KEY (request_id, source)
);

-- Append-only versions of each experiment's config (the evaluator writes them).
CREATE TABLE experiment_versions (
    experiment  text        NOT NULL,
    version     bigint      NOT NULL,
    config      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL DEFAULT '',
    PRIMARY KEY (experiment, version)
);

-- Model registry mirrored from the content-addressed store.
CREATE TABLE models (
    sha256      text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    id          text        NOT NULL,
    version     text        NOT NULL,
    metadata    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, version)
);
