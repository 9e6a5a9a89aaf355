-- Precision, recall and FPR per arm (issue #17): the labelled rows' confusion counts beside
-- `correct` (migration 0003), for binary labels: said_pos counts predicted label > 0, was_pos
-- outcome value > 0, true_pos both; with outcome_n they give tp, fp, fn and tn.
ALTER TABLE arm_stats
    ADD COLUMN said_pos bigint NOT NULL DEFAULT 0,
    ADD COLUMN was_pos  bigint NOT NULL DEFAULT 0,
    ADD COLUMN true_pos bigint NOT NULL DEFAULT 0;

-- The rows counted before this migration have none of them: every aggregate is recomputed from
-- the first logged row by the next tick (what evaluator.aggregate.reset does; drift_alerts and
-- monitor_epochs stay, as there).
TRUNCATE arm_stats, arm_latency, shadow_stats, ignored_rows, duplicate_rows, drift_windows,
    drift_bins, feature_windows, feature_reference, feature_edges, feature_bins, decay_windows,
    decay_bins, drift_slots;
UPDATE evaluation_watermark SET prediction_seq = 0, outcome_seq = 0, feature_seq = 0;
