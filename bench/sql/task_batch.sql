-- 100 task runs per call: create 100 in one call, claim up to 100 (60 s
-- lease), then complete every run claimed with one cb_complete_tasks call.
-- Each statement is its own transaction.
-- Variables: task.
SELECT count(*) FROM cb_run_task(name => :task, inputs => array_fill('{}'::jsonb, ARRAY[100]));
SELECT coalesce(array_agg(id), '{}') AS claimed_ids, coalesce(array_agg(attempts), '{}') AS claimed_attempts,
       array_fill('null'::jsonb, ARRAY[count(*)::integer]) AS claimed_outputs
FROM cb_claim_tasks(name => :task, quantity => 100, hide_for => 60000) \gset
SELECT count(*) FROM cb_complete_tasks(name => :task, ids => :claimed_ids::bigint[],
    attempts => :claimed_attempts::integer[], outputs => :claimed_outputs::jsonb[]);
