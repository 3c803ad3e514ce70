"""Private library API plexa keeps on purpose (each named, with its reason, where it is used),
and the deprecation filter: these fail when an upgrade moves what plexa calls, before a run
would."""

from __future__ import annotations

import inspect


def test_ray_gcs_key_value_store_used_by_the_epoch_relay() -> None:
    from ray.experimental import internal_kv

    expected = {
        "_internal_kv_put": ["key", "value", "overwrite", "namespace"],
        "_internal_kv_get": ["key", "namespace"],
        "_internal_kv_list": ["prefix", "namespace"],
        "_internal_kv_del": ["key", "del_by_prefix", "namespace"],
    }
    for name, params in expected.items():
        signature = inspect.signature(getattr(internal_kv, name))
        assert set(params) <= set(signature.parameters), (name, signature)


def test_tune_result_grid_keeps_its_trials_for_the_sweep_runner() -> None:
    from ray.tune import ResultGrid

    from plexa.runners.sweep import _trials

    class Analysis:  # no trials: a ResultGrid builds a result from each
        trials: list = []

    analysis = Analysis()
    assert _trials(ResultGrid(analysis)) is not analysis.trials  # type: ignore[arg-type]
    assert _trials(ResultGrid(analysis)) == []  # type: ignore[arg-type]
    assert "self._experiment_analysis = experiment_analysis" in inspect.getsource(
        ResultGrid.__init__
    )


def test_a_deprecation_raised_from_plexa_s_code_fails_the_test() -> None:
    """pyproject's filterwarnings: libraries' deprecations are ignored, plexa's are errors."""
    import warnings

    import pytest

    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="plexa.tracking")
    warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="mlflow.tracking")
