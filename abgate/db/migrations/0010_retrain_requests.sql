-- Retrain requests (issue #16): the queue between whoever asks for a retrain (the evaluator when
-- drift or decay acts, a schedule, an operator's `abgate retrain`) and the trainer service.
--
-- A trainer claims the oldest pending request with SELECT ... FOR UPDATE SKIP LOCKED and keeps
-- that transaction (and so the row lock) open while it trains: two trainers never train the
-- same request, and a trainer that dies releases its lock with its connection, so the request
-- is still 'pending' and the next trainer takes it (attempts counts the claims). The terminal
-- states are written in the claiming transaction.
--
-- At most one open (pending) request per experiment: asking again while one waits is a no-op
-- for the asker (the unique partial index), not a second training.
CREATE TABLE retrain_requests (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment    text        NOT NULL,
    source        text        NOT NULL CHECK (source IN ('drift', 'decay', 'schedule', 'manual')),
    reason        text        NOT NULL DEFAULT '',
    requested_by  text        NOT NULL DEFAULT '',
    -- what the asker knows that the trainer may use (the measure that acted, a window, ...)
    details       jsonb       NOT NULL DEFAULT '{}',
    state         text        NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'registered', 'rejected', 'failed')),
    attempts      integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    claimed_at    timestamptz,
    claimed_by    text        NOT NULL DEFAULT '',
    finished_at   timestamptz,
    -- the outcome: the registered model's sha256 and metrics, or why nothing was registered
    result        jsonb       NOT NULL DEFAULT '{}'
);

CREATE UNIQUE INDEX retrain_requests_one_open ON retrain_requests (experiment)
    WHERE state = 'pending';
CREATE INDEX retrain_requests_pending ON retrain_requests (id) WHERE state = 'pending';
