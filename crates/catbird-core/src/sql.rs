//! Every statement the client runs, in one place. Each one is a short call of
//! a `cb_*` function or a read of a catbird table; the integration suite
//! prepares all of them against a freshly migrated database.

/// `cb_create_queue`.
pub const CREATE_QUEUE: &str =
    "SELECT cb_create_queue(name => $1, expires_at => $2, description => $3)";

/// `cb_delete_queue`.
pub const DELETE_QUEUE: &str = "SELECT cb_delete_queue(name => $1)";

/// One queue's row.
pub const GET_QUEUE: &str =
    "SELECT name, description, created_at, expires_at FROM cb_queues WHERE name = $1";

/// Every queue, by name.
pub const LIST_QUEUES: &str =
    "SELECT name, description, created_at, expires_at FROM cb_queues ORDER BY name";

/// `cb_send`, one message.
pub const SEND: &str = "SELECT cb_send(queue => $1, body => $2, topic => $3, concurrency_key => $4, \
     headers => $5, visible_at => $6, expires_at => $7, priority => $8)";

/// `cb_send`, many messages.
pub const SEND_MANY: &str = "SELECT * FROM cb_send(queue => $1, bodies => $2, topic => $3, \
     concurrency_keys => $4, headers => $5, visible_at => $6, expires_at => $7, priority => $8)";

/// `cb_read`.
pub const READ: &str = "SELECT * FROM cb_read(queue => $1, quantity => $2, hide_for => $3)";

/// `cb_hide`, one message.
pub const HIDE: &str = "SELECT cb_hide(queue => $1, id => $2, hide_for => $3)";

/// `cb_hide`, many messages.
pub const HIDE_MANY: &str = "SELECT * FROM cb_hide(queue => $1, ids => $2, hide_for => $3)";

/// `cb_delete`, one message.
pub const DELETE: &str = "SELECT cb_delete(queue => $1, id => $2)";

/// `cb_delete`, many messages.
pub const DELETE_MANY: &str = "SELECT * FROM cb_delete(queue => $1, ids => $2)";

/// `cb_renew_message`: extends a lease the caller still holds.
pub const RENEW_MESSAGE: &str =
    "SELECT cb_renew_message(queue => $1, id => $2, deliveries => $3, hide_for => $4)";

/// `cb_create_task`.
pub const CREATE_TASK: &str = "SELECT cb_create_task(name => $1, description => $2, condition => $3, \
     retention_period => $4, has_on_fail => $5)";

/// `cb_delete_task`.
pub const DELETE_TASK: &str = "SELECT cb_delete_task(name => $1)";

/// One task definition.
pub const GET_TASK: &str = "SELECT name, description, condition, retention_period, created_at FROM cb_tasks WHERE name = $1";

/// Every task definition, by name.
pub const LIST_TASKS: &str =
    "SELECT name, description, condition, retention_period, created_at FROM cb_tasks ORDER BY name";

/// `cb_run_task`, one run.
pub const RUN_TASK: &str = "SELECT cb_run_task(name => $1, input => $2, concurrency_key => $3, headers => $4, \
     visible_at => $5, expires_at => $6, priority => $7)";

/// `cb_run_task`, many runs.
pub const RUN_TASKS: &str = "SELECT * FROM cb_run_task(name => $1, inputs => $2, concurrency_keys => $3, \
     headers => $4, visible_at => $5, expires_at => $6, priority => $7)";

/// `cb_get_task_run`.
pub const GET_TASK_RUN: &str = "SELECT * FROM cb_get_task_run(name => $1, id => $2)";

/// The status of one run, read by a worker before it starts a run that
/// waited for an execution slot.
pub const TASK_RUN_STATUS: &str = "SELECT status FROM cb_get_task_run(name => $1, id => $2)";

/// `cb_list_task_runs`.
pub const LIST_TASK_RUNS: &str = "SELECT * FROM cb_list_task_runs(name => $1, quantity => $2)";

/// `cb_cancel_task`.
pub const CANCEL_TASK: &str = "SELECT cb_cancel_task(name => $1, id => $2, reason => $3)";

/// `cb_claim_tasks`.
pub const CLAIM_TASKS: &str =
    "SELECT * FROM cb_claim_tasks(name => $1, quantity => $2, hide_for => $3)";

/// `cb_next_task_visible_in`: milliseconds until a task's next run becomes
/// visible.
pub const NEXT_TASK_VISIBLE_IN: &str = "SELECT cb_next_task_visible_in(name => $1)";

/// `cb_started_task_runs`: which of many runs are still started, read by a
/// worker before it starts runs that waited for an execution slot.
pub const STARTED_TASK_RUNS: &str = "SELECT * FROM cb_started_task_runs(name => $1, ids => $2)";

/// `cb_hide_tasks`: extends the leases of started runs.
pub const HIDE_TASKS: &str = "SELECT * FROM cb_hide_tasks(name => $1, ids => $2, hide_for => $3)";

/// `cb_release_task`: gives back a claim without counting the attempt.
pub const RELEASE_TASK: &str =
    "SELECT cb_release_task(name => $1, id => $2, attempt => $3, delay => $4)";

/// `cb_complete_task`.
pub const COMPLETE_TASK: &str =
    "SELECT cb_complete_task(name => $1, id => $2, attempt => $3, output => $4)";

/// `cb_complete_tasks`: completes many attempts in one statement.
pub const COMPLETE_TASKS: &str =
    "SELECT * FROM cb_complete_tasks(name => $1, ids => $2, attempts => $3, outputs => $4)";

/// `cb_fail_tasks`: records many failed attempts in one statement.
pub const FAIL_TASKS: &str = "SELECT * FROM cb_fail_tasks(name => $1, ids => $2, attempts => $3, \
     error_messages => $4, retry_delays => $5)";

/// `cb_wait_task_run`: registers a waiter, so the run's end is notified.
pub const WAIT_TASK_RUN: &str = "SELECT cb_wait_task_run(task => $1, run_id => $2)";

/// `cb_fail_task`.
pub const FAIL_TASK: &str = "SELECT cb_fail_task(name => $1, id => $2, attempt => $3, error_message => $4, retry_delay => $5)";

/// `cb_claim_task_on_fail`.
pub const CLAIM_TASK_ON_FAIL: &str =
    "SELECT * FROM cb_claim_task_on_fail(name => $1, quantity => $2, hide_for => $3)";

/// `cb_complete_task_on_fail`.
pub const COMPLETE_TASK_ON_FAIL: &str =
    "SELECT cb_complete_task_on_fail(name => $1, id => $2, on_fail_attempt => $3)";

/// `cb_fail_task_on_fail`.
pub const FAIL_TASK_ON_FAIL: &str = "SELECT cb_fail_task_on_fail(name => $1, id => $2, on_fail_attempt => $3, \
     error_message => $4, retry_delay => $5)";

/// `cb_worker_started`.
pub const WORKER_STARTED: &str =
    "SELECT cb_worker_started(id => $1, task_handlers => $2, step_handlers => $3)";

/// `cb_worker_heartbeat`.
pub const WORKER_HEARTBEAT: &str = "SELECT cb_worker_heartbeat(id => $1)";

/// `cb_worker_stopped`.
pub const WORKER_STOPPED: &str = "SELECT cb_worker_stopped(id => $1)";

/// Every registered worker, newest heartbeat first.
pub const LIST_WORKERS: &str =
    "SELECT id, task_handlers, step_handlers, started_at, last_heartbeat_at FROM cb_worker_info";

/// The wake-up channel of the installation in the connection's schema.
pub const WAKE_CHANNEL: &str = "SELECT cb_wake_channel()";

/// `cb_request_wake`: requests a notification for the next work of a kind
/// and name, and returns whether a sender with unannounced work is open.
pub const REQUEST_WAKE: &str = "SELECT cb_request_wake(kind => $1, name => $2)";

/// `cb_create_flow`.
pub const CREATE_FLOW: &str = "SELECT cb_create_flow(name => $1, steps => $2, description => $3, \
     output_priority => $4, retention_period => $5, has_on_fail => $6)";

/// `cb_delete_flow`.
pub const DELETE_FLOW: &str = "SELECT cb_delete_flow(name => $1)";

/// One flow definition.
pub const GET_FLOW: &str = "SELECT name, description, output_priority, retention_period, created_at FROM cb_flows WHERE name = $1";

/// Every flow definition, by name.
pub const LIST_FLOWS: &str = "SELECT name, description, output_priority, retention_period, created_at FROM cb_flows ORDER BY name";

/// The steps of one flow definition, in definition order.
pub const GET_FLOW_STEPS: &str = "SELECT step_name, description, kind, \
     CASE WHEN map_input THEN 'input' ELSE map_source END AS map_source, reduce_source, signal, depends_on \
     FROM cb_flow_steps \
     WHERE flow_name = $1 ORDER BY position";

/// `cb_run_flow`.
pub const RUN_FLOW: &str = "SELECT cb_run_flow(name => $1, input => $2, concurrency_key => $3, headers => $4, \
     visible_at => $5, expires_at => $6, priority => $7)";

/// `cb_signal_flow`.
pub const SIGNAL_FLOW: &str =
    "SELECT cb_signal_flow(flow => $1, run_id => $2, step => $3, input => $4)";

/// `cb_cancel_flow`.
pub const CANCEL_FLOW: &str = "SELECT cb_cancel_flow(name => $1, id => $2, reason => $3)";

/// `cb_get_flow_run`.
pub const GET_FLOW_RUN: &str = "SELECT * FROM cb_get_flow_run(flow => $1, id => $2)";

/// `cb_list_flow_runs`.
pub const LIST_FLOW_RUNS: &str = "SELECT * FROM cb_list_flow_runs(flow => $1, quantity => $2)";

/// `cb_get_flow_run_steps`.
pub const GET_FLOW_RUN_STEPS: &str =
    "SELECT * FROM cb_get_flow_run_steps(flow => $1, run_id => $2)";

/// `cb_get_flow_step`.
pub const GET_FLOW_STEP: &str =
    "SELECT * FROM cb_get_flow_step(flow => $1, run_id => $2, step => $3)";

/// `cb_claim_steps`.
pub const CLAIM_STEPS: &str =
    "SELECT * FROM cb_claim_steps(flow => $1, step => $2, quantity => $3, hide_for => $4)";

/// `cb_hide_steps`.
pub const HIDE_STEPS: &str = "SELECT * FROM cb_hide_steps(flow => $1, ids => $2, hide_for => $3)";

/// `cb_complete_step`.
pub const COMPLETE_STEP: &str =
    "SELECT cb_complete_step(flow => $1, id => $2, attempt => $3, output => $4)";

/// `cb_fail_step`.
pub const FAIL_STEP: &str = "SELECT cb_fail_step(flow => $1, id => $2, attempt => $3, error_message => $4, retry_delay => $5)";

/// `cb_release_step`.
pub const RELEASE_STEP: &str =
    "SELECT cb_release_step(flow => $1, id => $2, attempt => $3, delay => $4)";

/// `cb_cancel_step_run`.
pub const CANCEL_STEP_RUN: &str = "SELECT cb_cancel_step_run(flow => $1, id => $2, attempt => $3)";

/// `cb_claim_map_tasks`.
pub const CLAIM_MAP_TASKS: &str =
    "SELECT * FROM cb_claim_map_tasks(flow => $1, step => $2, quantity => $3, hide_for => $4)";

/// `cb_hide_map_tasks`.
pub const HIDE_MAP_TASKS: &str =
    "SELECT * FROM cb_hide_map_tasks(flow => $1, ids => $2, hide_for => $3)";

/// `cb_complete_map_tasks`, batched.
pub const COMPLETE_MAP_TASKS: &str =
    "SELECT * FROM cb_complete_map_tasks(flow => $1, ids => $2, attempts => $3, outputs => $4)";

/// `cb_fail_map_task`.
pub const FAIL_MAP_TASK: &str = "SELECT cb_fail_map_task(flow => $1, id => $2, attempt => $3, \
     error_message => $4, retry_delay => $5)";

/// `cb_release_map_task`.
pub const RELEASE_MAP_TASK: &str =
    "SELECT cb_release_map_task(flow => $1, id => $2, attempt => $3, delay => $4)";

/// `cb_start_generator_step`.
pub const START_GENERATOR_STEP: &str =
    "SELECT cb_start_generator_step(flow => $1, id => $2, attempt => $3)";

/// `cb_spawn_generator_map_tasks`, with the items as an array of JSON
/// values.
pub const SPAWN_GENERATOR_MAP_TASKS: &str = "SELECT cb_spawn_generator_map_tasks(flow => $1, id => $2, attempt => $3, items => to_jsonb($4::jsonb[]))";

/// `cb_complete_generator_step`.
pub const COMPLETE_GENERATOR_STEP: &str =
    "SELECT cb_complete_generator_step(flow => $1, id => $2, attempt => $3)";

/// `cb_read_map_outputs`.
pub const READ_MAP_OUTPUTS: &str = "SELECT * FROM cb_read_map_outputs(flow => $1, run_id => $2, \
     step => $3, after_index => $4, quantity => $5)";

/// `cb_complete_flow_early`.
pub const COMPLETE_FLOW_EARLY: &str =
    "SELECT cb_complete_flow_early(flow => $1, run_id => $2, output => $3, reason => $4)";

/// The status of one flow run.
pub const FLOW_RUN_STATUS: &str = "SELECT status FROM cb_get_flow_run(flow => $1, id => $2)";

/// `cb_claim_flow_on_fail`.
pub const CLAIM_FLOW_ON_FAIL: &str =
    "SELECT * FROM cb_claim_flow_on_fail(flow => $1, quantity => $2, hide_for => $3)";

/// `cb_complete_flow_on_fail`.
pub const COMPLETE_FLOW_ON_FAIL: &str =
    "SELECT cb_complete_flow_on_fail(flow => $1, id => $2, on_fail_attempt => $3)";

/// `cb_fail_flow_on_fail`.
pub const FAIL_FLOW_ON_FAIL: &str = "SELECT cb_fail_flow_on_fail(flow => $1, id => $2, on_fail_attempt => $3, \
     error_message => $4, retry_delay => $5)";

/// `cb_gc`.
pub const GC: &str = "SELECT * FROM cb_gc()";

/// `cb_purge_task_runs`.
pub const PURGE_TASK_RUNS: &str = "SELECT cb_purge_task_runs(name => $1, older_than => $2)";

/// `cb_purge_flow_runs`.
pub const PURGE_FLOW_RUNS: &str = "SELECT cb_purge_flow_runs(name => $1, older_than => $2)";

/// `cb_clear_task_runs`.
pub const CLEAR_TASK_RUNS: &str = "SELECT cb_clear_task_runs(name => $1)";

/// `cb_clear_flow_runs`.
pub const CLEAR_FLOW_RUNS: &str = "SELECT cb_clear_flow_runs(name => $1)";

/// The newest applied schema version (the version table must exist).
pub const APPLIED_SCHEMA_VERSION: &str =
    "SELECT coalesce(max(version), 0) FROM cb_schema_migrations";

/// Every statement above, for the prepare-all test.
pub const ALL: &[&str] = &[
    CREATE_QUEUE,
    DELETE_QUEUE,
    GET_QUEUE,
    LIST_QUEUES,
    SEND,
    SEND_MANY,
    READ,
    HIDE,
    HIDE_MANY,
    DELETE,
    DELETE_MANY,
    RENEW_MESSAGE,
    CREATE_TASK,
    DELETE_TASK,
    GET_TASK,
    LIST_TASKS,
    RUN_TASK,
    RUN_TASKS,
    GET_TASK_RUN,
    TASK_RUN_STATUS,
    LIST_TASK_RUNS,
    CANCEL_TASK,
    CLAIM_TASKS,
    NEXT_TASK_VISIBLE_IN,
    STARTED_TASK_RUNS,
    HIDE_TASKS,
    RELEASE_TASK,
    COMPLETE_TASK,
    COMPLETE_TASKS,
    FAIL_TASK,
    FAIL_TASKS,
    WAIT_TASK_RUN,
    CLAIM_TASK_ON_FAIL,
    COMPLETE_TASK_ON_FAIL,
    FAIL_TASK_ON_FAIL,
    WORKER_STARTED,
    WORKER_HEARTBEAT,
    WORKER_STOPPED,
    LIST_WORKERS,
    WAKE_CHANNEL,
    REQUEST_WAKE,
    CREATE_FLOW,
    DELETE_FLOW,
    GET_FLOW,
    LIST_FLOWS,
    GET_FLOW_STEPS,
    RUN_FLOW,
    SIGNAL_FLOW,
    CANCEL_FLOW,
    GET_FLOW_RUN,
    LIST_FLOW_RUNS,
    GET_FLOW_RUN_STEPS,
    GET_FLOW_STEP,
    CLAIM_STEPS,
    HIDE_STEPS,
    COMPLETE_STEP,
    FAIL_STEP,
    RELEASE_STEP,
    CANCEL_STEP_RUN,
    CLAIM_MAP_TASKS,
    HIDE_MAP_TASKS,
    COMPLETE_MAP_TASKS,
    FAIL_MAP_TASK,
    RELEASE_MAP_TASK,
    START_GENERATOR_STEP,
    SPAWN_GENERATOR_MAP_TASKS,
    COMPLETE_GENERATOR_STEP,
    READ_MAP_OUTPUTS,
    COMPLETE_FLOW_EARLY,
    FLOW_RUN_STATUS,
    CLAIM_FLOW_ON_FAIL,
    COMPLETE_FLOW_ON_FAIL,
    FAIL_FLOW_ON_FAIL,
    GC,
    PURGE_TASK_RUNS,
    PURGE_FLOW_RUNS,
    CLEAR_TASK_RUNS,
    CLEAR_FLOW_RUNS,
    APPLIED_SCHEMA_VERSION,
];
