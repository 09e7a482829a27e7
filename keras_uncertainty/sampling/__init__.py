"""Compiled Monte Carlo sampling and the combination of samples.

The contracts a method is built on: `SampledModel` (how a model is
sampled), `OutputSpec` (what its output means, `output_spec`), `Reducer`
(what a call computes from the samples), the per-call random draws
(`random_bits16`, `random_uniform`, `random_normal`) and the engine call
`reduce_samples`.
"""

from keras_uncertainty.sampling.class_scores import (
    ClassificationScore,
    ClassificationScores,
)
from keras_uncertainty.sampling.contract import (
    SampledModel,
    TiledInputsModel,
    TiledTwinModel,
    sampled_model,
)
from keras_uncertainty.sampling.engine import (
    DEFAULT_NUM_SAMPLES,
    check_model,
    input_stream,
    reduce_samples,
    reducing_step,
)
from keras_uncertainty.sampling.graph import is_stochastic, tile_rows
from keras_uncertainty.sampling.keys import (
    SEEDED_TOLERANCE,
    random_bits16,
    random_normal,
    random_uniform,
)
from keras_uncertainty.sampling.outputs import (
    OutputSpec,
    has_variance_head,
    output_names,
    output_spec,
    task_reducer,
)
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    MixtureScore,
    RegressionPrediction,
)
from keras_uncertainty.sampling.reducers import (
    ClassificationSummary,
    MixtureNLL,
    PerOutput,
    RawSamples,
    Reducer,
    RegressionMoments,
)
from keras_uncertainty.sampling.sampler import (
    predict,
    predict_classification,
    predict_regression,
    sample,
)

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "ClassificationPrediction",
    "ClassificationScore",
    "ClassificationScores",
    "ClassificationSummary",
    "MixtureNLL",
    "MixtureScore",
    "OutputSpec",
    "PerOutput",
    "RawSamples",
    "Reducer",
    "RegressionMoments",
    "RegressionPrediction",
    "SEEDED_TOLERANCE",
    "SampledModel",
    "TiledInputsModel",
    "TiledTwinModel",
    "check_model",
    "has_variance_head",
    "input_stream",
    "is_stochastic",
    "output_names",
    "output_spec",
    "predict",
    "predict_classification",
    "predict_regression",
    "random_bits16",
    "random_normal",
    "random_uniform",
    "reduce_samples",
    "reducing_step",
    "sample",
    "sampled_model",
    "task_reducer",
    "tile_rows",
]
