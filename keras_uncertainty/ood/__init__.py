"""Out-of-distribution (OOD) scores: one float per input, higher = more likely OOD.

Scores read off a classifier's output (`msp`, `max_logit`, `energy`,
`entropy`, `mutual_information`, `variation_ratio`, and
`scores_from_prediction` for all that a prediction supports) and
feature-space scores fitted post-hoc on `ku.posthoc.PostHocMethod`
(`Mahalanobis`, `FeatureDensity`) on the features of a chosen layer
(`feature_extractor`, `layer_features`). Judge them with
`ku.metrics.ood_report(in_scores, out_scores)`.
"""

from keras_uncertainty.ood.features import (
    FeatureDensity,
    Mahalanobis,
    feature_extractor,
    layer_features,
)
from keras_uncertainty.ood.scores import (
    energy,
    entropy,
    max_logit,
    msp,
    mutual_information,
    scores_from_prediction,
    variation_ratio,
)

__all__ = [
    "FeatureDensity",
    "Mahalanobis",
    "energy",
    "entropy",
    "feature_extractor",
    "layer_features",
    "max_logit",
    "msp",
    "mutual_information",
    "scores_from_prediction",
    "variation_ratio",
]
