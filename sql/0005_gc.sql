-- Version 5: garbage collection, purging and clearing of runs.
--
-- cb_gc() is one collection pass: it deletes expired queues and messages,
-- moves queued or started runs past their expiry to expired, finishes flow
-- cancellations whose running steps lost their worker, deletes workers whose
-- heartbeat stopped, and deletes finished runs older than their task's or
-- flow's retention period. Workers run it from their heartbeat; anyone can
-- call it.

-- migrate:up

CREATE TYPE cb_gc_report AS (
    expired_queues_deleted integer,
    expired_messages_deleted integer,
    expired_task_runs integer,
    expired_flow_runs integer,
    stale_workers_deleted integer,
    task_runs_purged integer,
    flow_runs_purged integer
);

-- How long a worker may go without a heartbeat before it counts as gone.
CREATE FUNCTION cb_stale_worker_age() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT interval '5 minutes'
$$;

-- The time a finished task or flow run finished: the latest of its terminal
-- timestamps.
CREATE FUNCTION cb_finished_at(completed_at timestamptz, failed_at timestamptz, skipped_at timestamptz,
                               canceled_at timestamptz, expired_at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT greatest(completed_at, failed_at, skipped_at, canceled_at, expired_at)
$$;

-- Runs one garbage collection pass and returns what it did.
CREATE FUNCTION cb_gc() RETURNS cb_gc_report
LANGUAGE plpgsql AS $$
DECLARE
    v_report cb_gc_report := ROW(0, 0, 0, 0, 0, 0, 0);
    v_name text;
    v_retention bigint;
    v_run_id bigint;
    v_count integer;
BEGIN
    FOR v_name IN SELECT name FROM cb_queues WHERE expires_at <= now() ORDER BY name LOOP
        IF cb_delete_queue(v_name) THEN
            v_report.expired_queues_deleted := v_report.expired_queues_deleted + 1;
        END IF;
    END LOOP;

    FOR v_name IN SELECT name FROM cb_queues ORDER BY name LOOP
        EXECUTE format('DELETE FROM %I WHERE expires_at <= now()', 'cb_q_' || v_name);
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_report.expired_messages_deleted := v_report.expired_messages_deleted + v_count;
    END LOOP;

    FOR v_name, v_retention IN SELECT name, retention_period FROM cb_tasks ORDER BY name LOOP
        EXECUTE format($sql$
            UPDATE %I SET status = 'expired', expired_at = now()
            WHERE status IN ('queued', 'started') AND expires_at <= now()$sql$, 'cb_t_' || v_name);
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_report.expired_task_runs := v_report.expired_task_runs + v_count;

        IF v_retention > 0 THEN
            EXECUTE format($sql$
                DELETE FROM %I
                WHERE status IN ('completed', 'failed', 'skipped', 'canceled', 'expired')
                  AND cb_finished_at(completed_at, failed_at, skipped_at, canceled_at, expired_at)
                      < now() - make_interval(secs => $1 / 1000.0)$sql$, 'cb_t_' || v_name)
                USING v_retention;
            GET DIAGNOSTICS v_count = ROW_COUNT;
            v_report.task_runs_purged := v_report.task_runs_purged + v_count;
        END IF;
    END LOOP;

    FOR v_name, v_retention IN SELECT name, retention_period FROM cb_flows ORDER BY name LOOP
        -- A canceling run whose running step lost its worker (the lease ran
        -- out) would wait forever: cancel such steps and finish the runs.
        FOR v_run_id IN EXECUTE format($sql$
            SELECT r.id FROM %I r
            WHERE r.status = 'canceling'
              AND EXISTS (SELECT 1 FROM %I s WHERE s.flow_run_id = r.id AND s.status = 'started'
                          AND s.visible_at <= clock_timestamp())
            FOR UPDATE OF r SKIP LOCKED$sql$, 'cb_f_' || v_name, 'cb_s_' || v_name)
        LOOP
            EXECUTE format($sql$
                UPDATE %I SET status = 'canceled', running = false, canceled_at = clock_timestamp()
                WHERE flow_run_id = $1 AND status = 'started' AND visible_at <= clock_timestamp()$sql$,
                'cb_s_' || v_name)
                USING v_run_id;
            PERFORM cb_flow_finish_cancel(v_name, v_run_id);
        END LOOP;

        EXECUTE format($sql$
            UPDATE %I SET status = 'expired', expired_at = now()
            WHERE status IN ('started', 'canceling') AND expires_at <= now()$sql$, 'cb_f_' || v_name);
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_report.expired_flow_runs := v_report.expired_flow_runs + v_count;

        IF v_retention > 0 THEN
            -- Step runs go with their flow run (ON DELETE CASCADE).
            EXECUTE format($sql$
                DELETE FROM %I
                WHERE status IN ('completed', 'failed', 'canceled', 'expired')
                  AND cb_finished_at(completed_at, failed_at, NULL, canceled_at, expired_at)
                      < now() - make_interval(secs => $1 / 1000.0)$sql$, 'cb_f_' || v_name)
                USING v_retention;
            GET DIAGNOSTICS v_count = ROW_COUNT;
            v_report.flow_runs_purged := v_report.flow_runs_purged + v_count;
        END IF;
    END LOOP;

    DELETE FROM cb_workers WHERE last_heartbeat_at < now() - cb_stale_worker_age();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    v_report.stale_workers_deleted := v_count;

    RETURN v_report;
END;
$$;

-- Deletes the finished runs of a task that finished more than `older_than`
-- milliseconds ago, whatever its retention period (0 deletes every finished
-- run). Returns how many were deleted; 0 for a task that does not exist.
CREATE FUNCTION cb_purge_task_runs(name text, older_than bigint DEFAULT 0) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_count integer;
BEGIN
    PERFORM cb_check_name('task', name);
    PERFORM cb_check_period('older_than', older_than);
    IF NOT EXISTS (SELECT 1 FROM cb_tasks t WHERE t.name = cb_purge_task_runs.name) THEN
        RETURN 0;
    END IF;
    EXECUTE format($sql$
        DELETE FROM %I
        WHERE status IN ('completed', 'failed', 'skipped', 'canceled', 'expired')
          AND cb_finished_at(completed_at, failed_at, skipped_at, canceled_at, expired_at)
              <= now() - make_interval(secs => $1 / 1000.0)$sql$, 'cb_t_' || name)
        USING coalesce(older_than, 0);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- Deletes the finished runs of a flow (with their steps) that finished more
-- than `older_than` milliseconds ago. Returns how many were deleted.
CREATE FUNCTION cb_purge_flow_runs(name text, older_than bigint DEFAULT 0) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_count integer;
BEGIN
    PERFORM cb_check_name('flow', name);
    PERFORM cb_check_period('older_than', older_than);
    IF NOT EXISTS (SELECT 1 FROM cb_flows f WHERE f.name = cb_purge_flow_runs.name) THEN
        RETURN 0;
    END IF;
    EXECUTE format($sql$
        DELETE FROM %I
        WHERE status IN ('completed', 'failed', 'canceled', 'expired')
          AND cb_finished_at(completed_at, failed_at, NULL, canceled_at, expired_at)
              <= now() - make_interval(secs => $1 / 1000.0)$sql$, 'cb_f_' || name)
        USING coalesce(older_than, 0);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- Deletes every run of a task, whatever its status: work in flight is lost.
-- Returns how many were deleted; 0 for a task that does not exist.
CREATE FUNCTION cb_clear_task_runs(name text) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_count integer;
BEGIN
    PERFORM cb_check_name('task', name);
    IF NOT EXISTS (SELECT 1 FROM cb_tasks t WHERE t.name = cb_clear_task_runs.name) THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM %I', 'cb_t_' || name);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- Deletes every run of a flow, with their steps, whatever their status.
CREATE FUNCTION cb_clear_flow_runs(name text) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_count integer;
BEGIN
    PERFORM cb_check_name('flow', name);
    IF NOT EXISTS (SELECT 1 FROM cb_flows f WHERE f.name = cb_clear_flow_runs.name) THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM %I', 'cb_f_' || name);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- migrate:down

DROP FUNCTION cb_clear_flow_runs(text);
DROP FUNCTION cb_clear_task_runs(text);
DROP FUNCTION cb_purge_flow_runs(text, bigint);
DROP FUNCTION cb_purge_task_runs(text, bigint);
DROP FUNCTION cb_gc();
DROP FUNCTION cb_finished_at(timestamptz, timestamptz, timestamptz, timestamptz, timestamptz);
DROP FUNCTION cb_stale_worker_age();
DROP TYPE cb_gc_report;
