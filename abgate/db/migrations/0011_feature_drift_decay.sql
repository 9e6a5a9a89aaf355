-- Drift per captured feature, champion decay, and monitoring windows that restart after a
-- promotion (issue #16). Like migration 0009, every measure is a set of bin counts the tick
-- adds each new row to (evaluator.aggregate), so its cost follows new rows, not history.

-- Captured feature rows get an ingest order, so a tick reads only the new ones (as
-- predictions and outcomes do since migration 0003). The gateway's COPY names its columns, so
-- both are filled in by PostgreSQL.
CREATE SEQUENCE prediction_features_seq;
ALTER TABLE prediction_features
    ADD COLUMN seq bigint NOT NULL DEFAULT nextval('prediction_features_seq'),
    ADD COLUMN ingested_at timestamptz NOT NULL DEFAULT clock_timestamp();
CREATE INDEX prediction_features_seq_idx ON prediction_features (seq);
ALTER TABLE evaluation_watermark ADD COLUMN feature_seq bigint NOT NULL DEFAULT 0;

-- Where each arm's monitoring windows start: rows answered (`ts`) before `from_ts` count in no
-- window. An experiment's arms start at -infinity; a promotion restarts the winner's windows
-- (`since_version`: the promoted version's snapshot seq) so that its reference is the first
-- rows served after it. Kept by a full recompute (evaluator.aggregate.reset), like drift_alerts.
CREATE TABLE monitor_epochs (
    experiment     text        NOT NULL,
    arm            text        NOT NULL,
    since_version  bigint      NOT NULL,
    from_ts        timestamptz NOT NULL,
    PRIMARY KEY (experiment, arm)
);

-- Per arm, its first reference_size captured feature rows (by ingest order; one row per
-- request id) are its reference. They are kept here until the reference is complete; then,
-- in the same tick, each feature's bin edges are chosen from them (the distinct deciles of
-- its finite values: at most 10 bins, fewer for a discrete feature), the reference rows are
-- binned, and every later row is binned as it is read (width_bucket against the edges).
CREATE TABLE feature_windows (
    experiment      text    NOT NULL,
    arm             text    NOT NULL,
    reference_size  bigint  NOT NULL CHECK (reference_size > 0),
    reference_rows  bigint  NOT NULL DEFAULT 0,
    edges_ready     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (experiment, arm)
);

CREATE TABLE feature_reference (
    experiment  text   NOT NULL,
    arm         text   NOT NULL,
    seq         bigint NOT NULL,  -- prediction_features.seq
    features    real[] NOT NULL,
    PRIMARY KEY (experiment, arm, seq)
);

-- feature: 0-based position in the feature vector. Bin b of a value v is width_bucket(v,
-- edges): 0 below edges[1], len(edges) at or above the last edge. NaN and infinite values are
-- in no bin.
CREATE TABLE feature_edges (
    experiment  text               NOT NULL,
    arm         text               NOT NULL,
    feature     integer            NOT NULL,
    edges       double precision[] NOT NULL,
    PRIMARY KEY (experiment, arm, feature)
);

CREATE TABLE feature_bins (
    experiment  text    NOT NULL,
    arm         text    NOT NULL,
    "window"    text    NOT NULL CHECK ("window" IN ('reference', 'current')),
    feature     integer NOT NULL,
    bin         integer NOT NULL,
    n           bigint  NOT NULL,
    PRIMARY KEY (experiment, arm, "window", feature, bin)
);

-- Decay: per arm, its first reference_size labelled rows (a served prediction and an outcome
-- counted for it, in the order the tick counts them) are the reference, the rest current.
-- kind 'accuracy': bin 1 when the outcome equals the predicted label; kind 'outcome': bin 1
-- when the outcome value is positive (the positive rate of 0/1 labels).
CREATE TABLE decay_windows (
    experiment      text   NOT NULL,
    arm             text   NOT NULL,
    reference_size  bigint NOT NULL CHECK (reference_size > 0),
    reference_rows  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, arm)
);

CREATE TABLE decay_bins (
    experiment  text   NOT NULL,
    arm         text   NOT NULL,
    "window"    text   NOT NULL CHECK ("window" IN ('reference', 'current')),
    kind        text   NOT NULL CHECK (kind IN ('accuracy', 'outcome')),
    bin         bigint NOT NULL CHECK (bin IN (0, 1)),
    n           bigint NOT NULL,
    PRIMARY KEY (experiment, arm, "window", kind, bin)
);

-- drift_alerts (migration 0009) records the crossings of these measures too: kind
-- 'feature:<i>' for feature i, 'decay:accuracy' and 'decay:outcome' for decay (psi_level 0).
