-- Who asked: the data-plane client identity (--client-tokens-file) of every prediction and
-- outcome, so that an outcome counts only for a prediction of the same client; and what the
-- evaluator left out of its statistics, and why.
-- (0006 is left to the dead-letter migration developed beside this one.)

-- '' when the gateway runs without client tokens (everyone is the same, anonymous client),
-- and on shadow rows (the served row of the same request carries it).
ALTER TABLE predictions ADD COLUMN client_identity text NOT NULL DEFAULT '';

-- The identity that submitted the outcome. An outcome counts for a prediction of the same
-- identity, or for any prediction when `any_identity` (accepted by a gateway run with
-- --allow-cross-identity-outcomes). The identity is part of the key: an outcome recorded first
-- by another client no longer takes the place of the true one (first value per request id,
-- source and identity wins).
ALTER TABLE outcomes
    ADD COLUMN client_identity text NOT NULL DEFAULT '',
    ADD COLUMN any_identity boolean NOT NULL DEFAULT false,
    DROP CONSTRAINT outcomes_pkey,
    ADD PRIMARY KEY (request_id, source, client_identity);

-- Rows the aggregation read and did not count (evaluator.aggregate), per experiment:
--   duplicate_prediction: a served row whose request id an earlier served row already has
--                         (only the first, by ingest order, counts);
--   foreign_outcome:      an outcome from another identity than the prediction's, not
--                         accepted for any identity;
--   duplicate_outcome:    a second countable outcome for the same request id and source
--                         (the first, by ingest order, counts).
CREATE TABLE ignored_rows (
    experiment  text   NOT NULL,
    reason      text   NOT NULL,
    n           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, reason)
);

-- Log rows the aggregation skips because an earlier row has their request id (served rows) or
-- their request id and shadow (shadow rows), decided once by the tick that reads them; every
-- later join leaves them out. Derived like the aggregates (a reset empties it).
CREATE TABLE duplicate_rows (
    seq         bigint PRIMARY KEY,
    request_id  text   NOT NULL
);
