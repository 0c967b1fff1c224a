-- Before the one-row-per-run index: a run recorded twice (cleared and re-run) keeps its latest row.
DELETE FROM sync_runs AS older
USING sync_runs AS newer
WHERE newer.dag_id = older.dag_id AND newer.run_id = older.run_id AND newer.id > older.id
