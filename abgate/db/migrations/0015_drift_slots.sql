-- A rolling current window for drift and decay (issue #16): the current rows of every measure
-- also counted per time slot of their answer time (`ts`), so PSI and the current rates can be
-- taken over the last --drift-window seconds (default one day, in 24 slots) against the fixed
-- reference, while the anytime-valid tests keep the cumulative current bins (drift_bins,
-- feature_bins, decay_bins), the sample they are valid on at every look.
--
-- measure: 'score', 'class' (bins as drift_bins), 'feature:<i>' (bins as feature_bins),
-- 'decay:accuracy', 'decay:outcome' (bins as decay_bins). slot: the start of the row's slot,
-- to_timestamp(floor(epoch(ts) / w) * w) for the slot width w. The tick deletes the slots that
-- ended before the window, so the table holds at most the window's slots per measure and bin:
-- its size follows the number of arms and bins, not history.
CREATE TABLE drift_slots (
    experiment  text        NOT NULL,
    arm         text        NOT NULL,
    measure     text        NOT NULL,
    slot        timestamptz NOT NULL,
    bin         bigint      NOT NULL,
    n           bigint      NOT NULL,
    PRIMARY KEY (experiment, arm, measure, slot, bin)
);

-- What the rolling window held when drift_history kept a row (the measure's psi is taken over
-- it), and for a feature the arm's model's name of it (the report reads PostgreSQL only, not
-- the model store); NULL on rows kept before this migration, and for a feature unnamed.
ALTER TABLE drift_history ADD COLUMN window_rows bigint, ADD COLUMN feature_name text;
