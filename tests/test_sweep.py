"""Architecture search on Ray Tune: spaces refused at validation, the evolution searcher, the
Pareto front, and real sweeps (embedded Ray, real MLflow store, ONNX Runtime): nested runs with
FINISHED / FAILED / early-stopped statuses, the best trial registered, Ctrl-C and --resume."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest

from plexa import orchestrator
from plexa.config import ConfigError, load_pipeline, validate
from plexa.runners import RunInterrupted
from plexa.sweep import space as spaces
from plexa.sweep.pareto import TrialRow, front, table

from .conftest import PIPELINES

BASE = {
    "name": "nas",
    "data": {"plugin": "digits"},
    "model": {"plugin": "cnn"},
    "train": {"max_epochs": 2},
}


def problems_of(sweep: dict, **extra) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        validate({**BASE, **extra, "sweep": sweep})
    return info.value.problems


# ------------------------------------------------------------------ spaces (no Ray)


def test_invalid_spaces_are_refused_at_validation_with_their_paths() -> None:
    problems = dict(
        problems_of(
            {
                "space": {
                    "model.params.kernel_size": {"choice": [3, 4]},  # cnn refuses even sizes
                    "model.params.hidden": {"normal": [0, 1]},
                    "model.params.dropout": {"uniform": [0.5, 0.1]},
                    "train.optimizer.lr": {"loguniform": [0, 0.1]},
                    "model.params.channels": {"each": {"choice": [8]}, "length": [0, 2]},
                    "data.params.flatten": {"choice": [True, False]},
                    "train.early_stopping.patience": {"randint": [1, 3]},
                }
            }
        )
    )
    assert "kernel_size must be odd" in problems["sweep.space.model.params.kernel_size"]
    assert "unknown domain (normal)" in problems["sweep.space.model.params.hidden"]
    assert "below high" in problems["sweep.space.model.params.dropout.uniform"]
    assert "low > 0" in problems["sweep.space.train.optimizer.lr.loguniform"]
    assert "1 <= min" in problems["sweep.space.model.params.channels.length"]
    assert "only model.params" in problems["sweep.space.data.params.flatten"]
    assert "not set" in problems["sweep.space.train.early_stopping.patience"]


def test_sweep_rules_and_exclusions() -> None:
    assert "use search: random" in problems_of({"scheduler": "pbt", "search": "optuna"})[0][1]
    (where, msg), *_ = problems_of(
        {"scheduler": "pbt", "space": {"model.params.hidden": {"choice": [32, 64]}}}
    )
    assert where == "sweep.space.model.params.hidden" and "training hyperparameters" in msg
    assert "nothing to search" in problems_of({"default_space": False})[0][1]
    assert "not a metric" in problems_of({"objectives": {"speed": 1.0}})[0][1]
    assert "logs no 'val/r2'" in problems_of({"metric": "val/r2"})[0][1]  # digits: classification
    federated = {"federated": {"clients": 2}}
    assert ("sweep", "a pipeline has at most one of federated: and sweep:") in problems_of(
        {"trials": 2}, **federated
    )


def test_a_space_narrowed_widened_and_nested_round_trips_to_a_pipeline() -> None:
    spec = validate(
        {
            **BASE,
            "sweep": {
                "space": {
                    "model.params.channels": {"each": {"choice": [8, 16]}, "length": [1, 3]},
                    "model.params.hidden": {"choice": [32]},  # narrowed to one value
                    "model.params.dropout": None,  # removed: the pipeline's value stays
                    "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]},  # widened
                    "train.batch_size": {"randint": [16, 17]},
                }
            },
        }
    )
    from plexa.plugins import architectures

    plain, defaults = spaces.merged(spec, architectures.get("cnn"))
    assert "model.params.dropout" in defaults and "model.params.dropout" not in plain
    assert plain["model.params.kernel_size"] == {"choice": [3, 5]}  # the plugin's default
    domains = spaces.flat_domains(plain)
    assert {"model.params.channels#length", "model.params.channels[2]"} <= set(domains)
    seen_lengths, seen_batches = set(), set()
    for seed in range(40):
        point = {k: d.sample(random_state=seed) for k, d in domains.items()}
        values = spaces.decode(plain, point)
        trial = spaces.apply(spec, values)
        seen_lengths.add(len(trial.model.params["channels"]))
        seen_batches.add(trial.train.batch_size)
        assert set(trial.model.params["channels"]) <= {8, 16}
        assert 1e-4 <= trial.train.optimizer.lr <= 1e-2 and trial.sweep is None
        assert trial.model.params["dropout"] == spec.model.params["dropout"]
    assert seen_lengths == {1, 2, 3} and seen_batches == {16, 17}  # both ends included
    with pytest.raises(spaces.SpaceError, match="kernel_size"):
        spaces.apply(spec, {"model.params.kernel_size": 4})


def test_regularised_evolution_mutates_tournament_winners_and_ages_out() -> None:
    from ray import tune

    from plexa.sweep.evolution import RegularizedEvolution

    space = {"a": tune.choice(list(range(100))), "b": tune.uniform(0, 1)}
    search = RegularizedEvolution(population=4, tournament=4, seed=0)
    assert search.set_search_properties("score", "max", space)
    for i in range(4):  # random until the population is full
        point = search.suggest(f"t{i}")
        search.on_trial_complete(f"t{i}", {"score": point["a"]})
    best = max(search.members, key=lambda m: m[1])[0]
    child = search.suggest("t4")  # the whole population is the tournament: best is the parent
    assert sum(child[k] != best[k] for k in space) <= 1
    search.on_trial_complete("t4", {"score": -1.0})
    assert len(search.members) == 4 and search.members[-1][1] == -1.0  # the oldest left
    search.on_trial_complete("gone", error=True)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"evolution-{os.getpid()}.pkl"
    search.save(str(path))
    again = RegularizedEvolution()
    again.restore(str(path))
    assert again.members == search.members


def test_pareto_front_keeps_only_undominated_trials() -> None:
    rows = [
        TrialRow("a", "FINISHED", metric=0.90, latency_ms=1.0),
        TrialRow("b", "FINISHED", metric=0.95, latency_ms=2.0),
        TrialRow("c", "FINISHED", metric=0.93, latency_ms=3.0),  # beaten by b on both
        TrialRow("d", "FINISHED", metric=0.90, latency_ms=1.5),  # beaten by a
        TrialRow("e", "FAILED"),
    ]
    assert [r.trial_id for r in front(rows, "max")] == ["a", "b"]
    assert [r.trial_id for r in front(rows, "min")] == ["a"]
    text = table(rows, "val/acc", "max", "b")
    assert text.splitlines()[2].startswith("| b **best** *")


# ------------------------------------------------------------------ real sweeps on Ray


@pytest.fixture(scope="module")
def ray_session():
    """One embedded Ray for the module's sweeps (each sweep joins it instead of starting its
    own); a sweep started without one starts and stops Ray itself, as `plexa run` does."""
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep_run(ray_session, tmp_path_factory: pytest.TempPathFactory):
    """One small sweep shared by the tests below: 3 trials, ASHA after one epoch, a learning
    rate of 1e-7 (hopeless: ASHA stops it) and one of 1e30 (NaN losses: the trial fails)."""
    home = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{home}/mlflow.db"
    spec = load_pipeline(
        PIPELINES / "digits-nas.yaml",
        [
            f"tracking.uri={uri}",
            "train.max_epochs=2",
            "train.limit_batches=10",  # enough for lr 0.01 to be far ahead after one epoch
            "sweep.trials=3",
            "sweep.concurrency=1",  # one actor; reports reach ASHA in a known order
            "sweep.search=evolution",
            "sweep.population=4",
            "sweep.tournament=2",
            "sweep.seed=6",  # draws lr 0.01, 1e-7, 1e30 in this order
            "sweep.grace_period=1",
            "sweep.latency_runs=20",
            "sweep.objectives={val/acc: 1.0, latency_ms: -0.01}",  # Tune follows `objective`
            "sweep.space={model.params.channels: {choice: [[8], [16, 32]]}, "
            "train.optimizer.lr: {choice: [0.01, 1.0e-7, 1.0e+30]}}",
            "sweep.default_space=false",
        ],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        patch.setenv("PLEXA_RUNS_DIR", str(home / "plexa-runs"))
        result = orchestrator.run(spec)
    return result, uri


def nested(uri: str, parent: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent}'")


def test_a_sweep_records_every_trial_as_a_nested_run(sweep_run) -> None:
    result, uri = sweep_run
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    trials = nested(uri, result.run_id)
    assert len(trials) == 3
    statuses = [t.info.status for t in trials]
    assert set(statuses) <= {"FINISHED", "FAILED", "KILLED"}
    assert parent.data.metrics["sweep/finished"] == statuses.count("FINISHED") >= 1
    for trial in trials:
        assert {"model.params.channels", "train.optimizer.lr"} <= set(trial.data.params)
        if trial.info.status == "FINISHED":
            # per-epoch metrics, the hardware cost, the trial's own ONNX file
            epochs = client.get_metric_history(trial.info.run_id, "val/acc")
            assert [m.step for m in sorted(epochs, key=lambda m: m.step)] == [0, 1]
            assert trial.data.metrics["latency_ms"] > 0
            assert trial.data.metrics["params"] > 100
            assert trial.data.metrics["export/parity_max_abs_diff"] <= 1e-4
            assert "test/acc" in trial.data.metrics
            m = trial.data.metrics
            assert m["objective"] == pytest.approx(m["val/acc"] - 0.01 * m["latency_ms"])
        if trial.info.status == "KILLED":
            assert trial.data.tags["plexa.sweep.early_stopped"] == "true"


def test_a_trial_with_nan_loss_fails_alone(sweep_run) -> None:
    result, uri = sweep_run
    failed = [t for t in nested(uri, result.run_id) if t.info.status == "FAILED"]
    assert failed, "the seeded sweep samples the 1e30 learning rate"
    for trial in failed:
        assert trial.data.params["train.optimizer.lr"] == "1e+30"
        assert "FloatingPointError: train/loss is nan" in trial.data.tags["plexa.error"]
    parent = mlflow.MlflowClient(uri).get_run(result.run_id)
    assert parent.data.metrics["sweep/failed"] == len(failed)


def test_asha_stops_a_hopeless_trial_early(sweep_run) -> None:
    result, uri = sweep_run
    killed = [t for t in nested(uri, result.run_id) if t.info.status == "KILLED"]
    assert killed, "ASHA stops the lr-1e-7 trial at the first rung, behind the lr-0.01 one"
    for trial in killed:
        steps = mlflow.MlflowClient(uri).get_metric_history(trial.info.run_id, "val/acc")
        assert len(steps) < 2


def test_the_best_trial_is_exported_registered_and_the_pareto_front_logged(sweep_run) -> None:
    result, uri = sweep_run
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.run_id)
    best = client.get_run(parent.data.tags["plexa.sweep.best_run"])
    assert best.info.status == "FINISHED"
    assert result.metrics["test/acc"] == best.data.metrics["test/acc"]
    assert result.export.max_abs_diff <= 1e-4 and result.export.registered_version == "1"
    assert result.export.registered_name == "digits-nas"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/pareto.png" in artifacts
    table_text = Path(
        mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="sweep/trials.md")
    ).read_text()
    assert "**best**" in table_text and table_text.count("\n") == 2 + 3


def test_ctrl_c_then_resume_runs_only_the_unfinished_trials(ray_session, workdir: Path) -> None:
    spec = load_pipeline(
        PIPELINES / "digits-nas.yaml",
        [
            "train.max_epochs=1",
            "train.limit_batches=2",
            "sweep.trials=3",
            "sweep.concurrency=1",
            "sweep.search=evolution",
            "sweep.population=2",
            "sweep.tournament=1",
            "sweep.scheduler=none",
            "sweep.latency_runs=10",
            "export.onnx=false",
        ],
    )
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri)

    def press_ctrl_c_after_the_first_trial() -> None:
        """Ctrl-C, as a user would press it, once one trial has finished."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                "tags.`plexa.sweep.trial` != '' and attributes.status = 'FINISHED'",
            )
            if runs:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=press_ctrl_c_after_the_first_trial, daemon=True)
    watcher.start()
    with pytest.raises(RunInterrupted) as info:
        orchestrator.run(spec)
    watcher.join()
    run_id = info.value.run_id
    assert client.get_run(run_id).info.status == "KILLED"
    before = {
        t.info.run_id: t.info.end_time for t in nested(uri, run_id) if t.info.status == "FINISHED"
    }
    assert 1 <= len(before) < 3

    started = time.time()
    result = orchestrator.run(spec, resume=run_id)
    assert result.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    after = nested(uri, run_id)
    finished = {t.data.tags["plexa.sweep.trial"] for t in after if t.info.status == "FINISHED"}
    assert len(finished) == 3  # the sweep reached its trial count
    for trial_run, end_time in before.items():  # finished trials were not run again
        assert client.get_run(trial_run).info.end_time == end_time
    rerun = [t for t in after if t.info.start_time >= started * 1000]
    assert len(rerun) == 3 - len(before)
    with pytest.raises(orchestrator.ResumeError, match="already finished"):
        orchestrator.run(spec, resume=run_id)
