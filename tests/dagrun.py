"""Run DAGs in-process with dag.test() and read what they did."""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@cache
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def get_dag(dag_id: str):
    dag = dagbag().get_dag(dag_id)
    assert dag is not None, dagbag().import_errors
    return dag


def run_dag(dag_id: str, conf: dict | None = None, logical_date=None, retry_delay=timedelta(0), retries=None):
    """One dag.test() run; task retries wait `retry_delay` instead of minutes, and are `retries` when given
    (a run against an API that always fails). Returns (run, {task_id: state}).

    Parses the DAG afresh: in-process, a run's conf is merged into the Param objects its DAG shares.
    """
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py")).get_dag(dag_id)
    for task in dag.tasks:
        task.retry_delay = retry_delay
        task.max_retry_delay = retry_delay
        if retries is not None:
            task.retries = retries
    kwargs = {"run_conf": conf or {}}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    run = dag.test(**kwargs)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return run, states


def xcom(run, task_id: str):
    """The return value a task pushed in a finished run (a list, in map order, for a mapped task)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key="return_value")
            .order_by(XComModel.map_index)
            .all()
        )
        values = [XComModel.deserialize_value(row) for row in rows]
        if rows and rows[0].map_index >= 0:
            return values
        return values[0] if values else None


def register(dag):
    """Write a DAG built inside a test to the metadata DB, as the dag-processor would, so dag.test() runs it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.commit()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )
    return dag
