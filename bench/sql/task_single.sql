-- One task run per call: create one, claim one (60 s lease), complete the
-- one claimed with a null output. Each statement is its own transaction. A
-- claim that finds nothing (another client took the run) skips the
-- completion.
-- Variables: task.
SELECT cb_run_task(name => :task, input => '{}');
SELECT id AS claimed_id, attempts AS claimed_attempt
FROM cb_claim_tasks(name => :task, quantity => 1, hide_for => 60000)
UNION ALL SELECT 0, 0 ORDER BY 1 DESC LIMIT 1 \gset
\if :claimed_id > 0
SELECT cb_complete_task(name => :task, id => :claimed_id, attempt => :claimed_attempt, output => 'null');
\endif
