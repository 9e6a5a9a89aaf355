-- The evaluator's state: experiment versions as the config source of truth, its audit trail,
-- and which config version every gateway runs.

-- Every experiment version gets a global sequence number: the config snapshot the gateways
-- serve is "the latest version of every experiment", versioned by the highest seq in it.
ALTER TABLE experiment_versions
    ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN reason text NOT NULL DEFAULT '';
CREATE UNIQUE INDEX experiment_versions_seq ON experiment_versions (seq);

-- One row per decision (by a policy or an operator), with what it was based on.
CREATE TABLE decisions (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment      text        NOT NULL,
    ts              timestamptz NOT NULL DEFAULT now(),
    action          text        NOT NULL,
    recommendation  text        NOT NULL DEFAULT '',
    source          text        NOT NULL DEFAULT 'policy',
    statistics      jsonb       NOT NULL DEFAULT '{}',
    inputs          jsonb       NOT NULL DEFAULT '{}',
    from_version    bigint,
    to_version      bigint
);
CREATE INDEX decisions_experiment_ts ON decisions (experiment, ts);

-- What each gateway runs, as it last told the evaluator over the config stream.
CREATE TABLE gateway_status (
    node_id          text        PRIMARY KEY,
    version          bigint      NOT NULL DEFAULT 0,
    acked_at         timestamptz,
    connected        boolean     NOT NULL DEFAULT false,
    last_nack_version bigint,
    last_error       text        NOT NULL DEFAULT '',
    updated_at       timestamptz NOT NULL DEFAULT now()
);
