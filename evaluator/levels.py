"""The default drift levels of an experiment (its DriftThresholds), in a module of their own so
that the CLI and the experiment model read them without loading scipy.

The PSI bands are the conventional ones from credit scoring (Siddiqi, "Credit Risk Scorecards",
2006; Yurdakul, "Statistical properties of the population stability index", 2018): below 0.1 no
significant change, 0.1-0.25 a moderate one worth a look, above 0.25 a significant one.
"""

PSI_WARN = 0.1
PSI_ACT = 0.25
# The level of the anytime-valid drift and decay tests (evaluator.drift).
DRIFT_ALPHA = 0.01
