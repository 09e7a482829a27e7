"""Prediction results select inputs like arrays: `prediction[rows]`."""

import dataclasses

import numpy as np
import pytest

import keras_uncertainty as ku


def _regression(n=5):
    rng = np.random.default_rng(0)
    fields = {
        f.name: rng.normal(size=(n, 2))
        for f in dataclasses.fields(ku.RegressionPrediction)
    }
    return ku.RegressionPrediction(**fields)


@pytest.mark.parametrize(
    "rows",
    [slice(1, 4), np.array([4, 0]), np.array([True, False, True, False, True]), 3],
)
def test_rows_select_every_field_of_a_regression_prediction(rows):
    pred = _regression()
    picked = pred[rows]
    assert isinstance(picked, ku.RegressionPrediction)
    expected_rows = np.arange(5)[rows].reshape(-1)
    assert len(picked) == len(expected_rows) and len(pred) == 5
    for field in dataclasses.fields(pred):
        np.testing.assert_array_equal(
            getattr(picked, field.name), getattr(pred, field.name)[expected_rows]
        )


def test_rows_keep_votes_none_and_the_subclass_fields():
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    pred = ku.ClassificationPrediction.from_moments(probs * 3, np.zeros(3), None, 3)
    picked = pred[[2, 0]]
    np.testing.assert_array_equal(picked.label, [0, 1])
    assert picked.votes is None
    evidential = ku.evidential.EvidentialClassificationPrediction(
        **{f.name: getattr(pred, f.name) for f in dataclasses.fields(pred)},
        vacuity=np.array([0.1, 0.2, 0.3]),
    )
    tail = evidential[1:]
    assert type(tail) is ku.evidential.EvidentialClassificationPrediction
    np.testing.assert_array_equal(tail.vacuity, [0.2, 0.3])


def test_rows_of_a_mixture_score_select_its_prediction_too():
    score = ku.sampling.MixtureScore(_regression(), np.arange(10.0).reshape(5, 2))
    picked = score[1:3]
    assert len(score) == 5 and len(picked) == 2
    np.testing.assert_array_equal(picked.log_likelihood, [[2, 3], [4, 5]])
    np.testing.assert_array_equal(picked.prediction.mean, score.prediction.mean[1:3])
