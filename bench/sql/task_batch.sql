-- 100 task runs per call: create 100 in one call, claim up to 100 (60 s
-- lease), then complete every run claimed in one statement. The SQL API has
-- no bulk completion, so that statement calls cb_complete_task once per run
-- inside one transaction. Each statement is its own transaction.
-- Variables: task.
SELECT count(*) FROM cb_run_task(name => :task, inputs => array_fill('{}'::jsonb, ARRAY[100]));
SELECT coalesce(array_agg(id), '{}') AS claimed_ids, coalesce(array_agg(attempts), '{}') AS claimed_attempts
FROM cb_claim_tasks(name => :task, quantity => 100, hide_for => 60000) \gset
SELECT count(*) FROM unnest(:claimed_ids::bigint[], :claimed_attempts::integer[]) AS claimed(id, attempt)
WHERE cb_complete_task(name => :task, id => claimed.id, attempt => claimed.attempt, output => 'null');
