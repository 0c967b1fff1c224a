"""Every DAG refuses a run's conf with an unknown key or a NaN/Infinity before anything runs (check_params)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dagrun import get_dag, run_dag

# A valid conf (every key declared, finite numbers) and a number param for each DAG.
DAGS = {
    "intra42_users": ({"full_refresh": True, "per_page": 50, "max_delete_share": 0.2}, "max_delete_share"),
    "gazelle_sync": ({"appointments_days_ahead": 3, "page_size": 50, "force_users": True}, "page_size"),
    "portaildf_user_kind": ({"dry_run": True, "limit": 10, "batch_size": 5}, "limit"),
}
SANDBOXES = {
    "intra42_users": "intra42_sandbox",
    "gazelle_sync": "gazelle_sandbox",
    "portaildf_user_kind": "portaildf_sandbox",
}


def check(dag_id: str, conf: dict) -> None:
    """The check_params task's callable, as the run would call it."""
    dag = get_dag(dag_id)
    dag.get_task("check_params").python_callable(dag=dag, dag_run=SimpleNamespace(conf=conf))


@pytest.mark.parametrize("dag_id", DAGS)
def test_check_params_runs_before_anything_else(airflow_db, dag_id):
    dag = get_dag(dag_id)
    first = dag.get_task("check_params")
    assert not first.upstream_task_ids
    assert {t.task_id for t in dag.roots} == {"check_params"}  # the sensor and create_tables wait for it


@pytest.mark.parametrize("dag_id", DAGS)
def test_a_valid_conf_passes(airflow_db, dag_id):
    valid, _ = DAGS[dag_id]
    check(dag_id, valid)
    check(dag_id, {})


@pytest.mark.parametrize("dag_id", DAGS)
def test_an_unknown_key_fails_the_run_before_anything_runs(request, pg, airflow_db, dag_id, capfd):
    sandbox = request.getfixturevalue(SANDBOXES[dag_id])
    sandbox.control("reset")
    valid, _ = DAGS[dag_id]
    _, states = run_dag(dag_id, {**valid, "full_refrsh": True})
    assert states.pop("check_params") == "failed"
    states.pop("report_run", None)  # Gazelle's report runs whatever failed: the failed run is recorded
    assert set(states.values()) == {"upstream_failed"}, states  # no sensor, no table, no fetch
    assert sandbox.state()["stats"]["requests"] == 0
    assert "unknown param 'full_refrsh'" in "".join(capfd.readouterr())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dag_id", DAGS)
def test_nan_and_infinity_are_refused_when_the_run_is_created_naming_the_key(pg, airflow_db, dag_id, value):
    """Integer params refuse them by their type; number params by dag_parts.FINITE (without it, NaN would be
    stored as null and fail the first task with "None is not of type 'number'")."""
    from airflow.exceptions import ParamValidationError

    valid, key = DAGS[dag_id]
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {key}:"):
        run_dag(dag_id, {**valid, key: value})


@pytest.mark.parametrize("dag_id", DAGS)
def test_every_number_param_refuses_nan(airflow_db, dag_id):
    import jsonschema

    for param in get_dag(dag_id).params.values():
        types = param.schema.get("type")
        if "number" in (types if isinstance(types, list) else [types]):
            for value in (float("nan"), float("inf")):
                with pytest.raises(jsonschema.ValidationError):
                    jsonschema.validate(value, param.schema)
            jsonschema.validate(param.value, param.schema)
