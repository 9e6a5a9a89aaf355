-- Shadow models compared pairwise with the served prediction of the same request (per
-- experiment and shadow): agreement, score and latency deltas, and — once outcomes arrive —
-- the paired-accuracy table McNemar's test needs.
CREATE TABLE shadow_stats (
    experiment          text             NOT NULL,
    shadow              text             NOT NULL,
    pairs               bigint           NOT NULL DEFAULT 0,  -- both answered (status 0)
    shadow_errors       bigint           NOT NULL DEFAULT 0,  -- shadow failed, served did not
    agree               bigint           NOT NULL DEFAULT 0,  -- same label
    score_delta_sum     double precision NOT NULL DEFAULT 0,  -- shadow − served, scores[2]
    score_delta_sumsq   double precision NOT NULL DEFAULT 0,
    latency_delta_sum   double precision NOT NULL DEFAULT 0,  -- µs, shadow − served
    latency_delta_sumsq double precision NOT NULL DEFAULT 0,
    labelled            bigint           NOT NULL DEFAULT 0,  -- pairs with an outcome
    both_right          bigint           NOT NULL DEFAULT 0,
    served_only_right   bigint           NOT NULL DEFAULT 0,
    shadow_only_right   bigint           NOT NULL DEFAULT 0,
    both_wrong          bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, shadow)
);
