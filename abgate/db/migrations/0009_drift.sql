-- Drift monitoring (issue #16), first slice: per running experiment and arm, the served
-- model's score distribution and predicted-class shares in a reference window (its first N
-- successful served rows) against a current window (every row after it), as bin counts the
-- evaluator's tick adds the new rows to (evaluator.aggregate, evaluator.drift).
--
-- Bins are fixed before the first row: kind 'score' has 10 equal-width bins of the
-- positive-class score scores[2] in [0, 1] (bin = floor(10 s), 1.0 in bin 9; scores are
-- probabilities, so the range is known in advance and no reference quantiles are needed; a
-- score outside [0, 1] or NaN is in no bin); kind 'class' has one bin per predicted label.

-- How many rows each arm's reference holds so far, and how many it is to hold (the
-- evaluator's --drift-reference-rows when the arm's first row was read; fixed from then on).
CREATE TABLE drift_windows (
    experiment      text   NOT NULL,
    arm             text   NOT NULL,
    reference_size  bigint NOT NULL CHECK (reference_size > 0),
    reference_rows  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, arm)
);

CREATE TABLE drift_bins (
    experiment  text   NOT NULL,
    arm         text   NOT NULL,
    "window"    text   NOT NULL CHECK ("window" IN ('reference', 'current')),
    kind        text   NOT NULL CHECK (kind IN ('score', 'class')),
    bin         bigint NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (experiment, arm, "window", kind, bin)
);

-- The highest PSI level (0 none, 1 warn, 2 act) and whether the sequential test rejected, as
-- last audited per (experiment, arm, kind): each is audited once, when first reached.
CREATE TABLE drift_alerts (
    experiment  text     NOT NULL,
    arm         text     NOT NULL,
    kind        text     NOT NULL,
    psi_level   smallint NOT NULL DEFAULT 0,
    rejected    boolean  NOT NULL DEFAULT false,
    PRIMARY KEY (experiment, arm, kind)
);
