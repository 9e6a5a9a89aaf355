-- Drift and decay over time (issue #16): what the evaluator's tick measured, kept at most every
-- --drift-history-interval seconds per experiment, for the report's "Drift over time" and
-- anyone reading the trend. measure is 'score', 'class', 'feature:NAME', 'decay:accuracy' or
-- 'decay:outcome'; psi is NULL for decay, rate (the current accuracy or outcome rate) NULL for
-- drift. Rows go with --retention-days like the log; an aggregate reset keeps them (they are
-- what was seen, as drift_alerts is).
CREATE TABLE drift_history (
    experiment      text             NOT NULL,
    arm             text             NOT NULL,
    measure         text             NOT NULL,
    ts              timestamptz      NOT NULL,
    psi             double precision,
    level           text             NOT NULL,  -- ok | warn | act (decay: ok | act)
    p_value         double precision NOT NULL,
    rejected        boolean          NOT NULL,
    rate            double precision,
    reference_rate  double precision,
    reference_rows  bigint           NOT NULL,
    current_rows    bigint           NOT NULL,
    PRIMARY KEY (experiment, arm, measure, ts)
);
CREATE INDEX drift_history_ts ON drift_history (ts);
