-- A retrain request with too few labelled rows waits for more instead of being rejected at once
-- (the evaluator asks as soon as drift or decay acts, when the changed world has few outcomes
-- yet): the trainer puts it back with not_before, and rejects it once `abgate trainer
-- --wait-for-rows` seconds have passed since it was made. window_end fixes the end of the
-- training window at the claim that trains, so a retry after a crashed trainer reads the same
-- rows; a request put back to wait has none. waits counts the times it was put back.
ALTER TABLE retrain_requests
    ADD COLUMN not_before timestamptz,
    ADD COLUMN window_end timestamptz,
    ADD COLUMN waits integer NOT NULL DEFAULT 0;
