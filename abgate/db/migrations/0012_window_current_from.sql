-- Where each monitoring window's current part begins (issue #16): the answer time (`ts`) of
-- the first row counted in an arm's current window, set once by the tick that counts it. A
-- retrain the evaluator asks for on drift or decay trains on the rows since then (the request's
-- details.since), not on the rows the reference was taken from. NULL until a current row is
-- counted. Kept by the same full recompute as the windows (evaluator.aggregate.reset).
ALTER TABLE drift_windows ADD COLUMN current_from timestamptz;
ALTER TABLE feature_windows ADD COLUMN current_from timestamptz;
ALTER TABLE decay_windows ADD COLUMN current_from timestamptz;
