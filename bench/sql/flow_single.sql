-- One flow run of a one-step flow per call: start the run, claim one run of
-- its step (60 s lease), complete the step claimed, which completes its
-- flow run in the same transaction. Each statement is its own transaction.
-- A claim that finds nothing skips the completion.
-- Variables: flow (a flow whose only step is named "only").
SELECT cb_run_flow(name => :flow, input => '{}');
SELECT id AS claimed_id, attempts AS claimed_attempt
FROM cb_claim_steps(flow => :flow, step => 'only', quantity => 1, hide_for => 60000)
UNION ALL SELECT 0, 0 ORDER BY 1 DESC LIMIT 1 \gset
\if :claimed_id > 0
SELECT cb_complete_step(flow => :flow, id => :claimed_id, attempt => :claimed_attempt, output => 'null');
\endif
