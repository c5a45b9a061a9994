-- Version 10: leases are extended in id order.
--
-- Completions and failures of many runs lock their rows in id order, so
-- two of them never wait for each other in a cycle. Lease renewals
-- (cb_hide_tasks, cb_hide_steps, cb_hide_map_tasks) locked theirs in the
-- order their plan visited the rows, which with a bitmap scan is the
-- order on disk. A worker renews the leases of runs while it completes
-- others of the same batch, so under load a renewal and a completion
-- deadlocked, and PostgreSQL aborted one of them. Renewals now lock in id
-- order as well. A batch of map item completions locks its items and then
-- their step runs the same way after its runs.

-- migrate:up

-- Extends the lease of the started rows among `ids` in the run, step or
-- item table `table_name` to now + `hide_for` milliseconds. Locks them in
-- id order first and returns the ids extended, ascending. The callers check
-- the name and `hide_for`.
CREATE FUNCTION cb_extend_leases(table_name text, ids bigint[], hide_for integer)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE format($sql$
        WITH locked AS (
            SELECT id FROM %1$I
            WHERE id = ANY($1) AND status = 'started'
            ORDER BY id
            FOR UPDATE
        ), hidden AS (
            UPDATE %1$I r SET visible_at = clock_timestamp() + make_interval(secs => $2 / 1000.0)
            FROM locked l
            WHERE r.id = l.id AND r.status = 'started'
            RETURNING r.id
        )
        SELECT id FROM hidden ORDER BY id$sql$, table_name)
        USING ids, hide_for;
END;
$$;

-- Extends the lease of started runs to now + `hide_for` milliseconds,
-- locking them in id order. Returns the ids extended, ascending.
CREATE OR REPLACE FUNCTION cb_hide_tasks(name text, ids bigint[], hide_for integer)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
BEGIN
    PERFORM cb_check_positive('hide_for', hide_for);
    RETURN QUERY SELECT cb_extend_leases(v_task.table_name, ids, hide_for);
END;
$$;

-- Extends the lease of started step runs, locking them in id order.
-- Returns the ids extended, ascending.
CREATE OR REPLACE FUNCTION cb_hide_steps(flow text, ids bigint[], hide_for integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    PERFORM cb_check_positive('hide_for', hide_for);
    RETURN QUERY SELECT cb_extend_leases('cb_s_' || flow, ids, hide_for);
END;
$$;

-- Extends the lease of started map items, locking them in id order.
-- Returns the ids extended, ascending.
CREATE OR REPLACE FUNCTION cb_hide_map_tasks(flow text, ids bigint[], hide_for integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    PERFORM cb_check_positive('hide_for', hide_for);
    RETURN QUERY SELECT cb_extend_leases('cb_m_' || flow, ids, hide_for);
END;
$$;

-- Completes map items in one statement, as in version 6, but locks the
-- items and then their step runs in id order after their runs.
CREATE OR REPLACE FUNCTION cb_complete_map_tasks(flow text, ids bigint[], attempts integer[], outputs jsonb[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_runs text := cb_flow_table(flow);
    v_done bigint[];
    v_step record;
BEGIN
    IF cardinality(ids) IS DISTINCT FROM cardinality(attempts)
       OR cardinality(ids) IS DISTINCT FROM cardinality(outputs) THEN
        RAISE EXCEPTION 'catbird: ids, attempts and outputs must have the same length (% , %, %)',
            cardinality(ids), cardinality(attempts), cardinality(outputs)
            USING ERRCODE = 'CB002';
    END IF;
    IF coalesce(cardinality(ids), 0) = 0 THEN
        RETURN;
    END IF;

    -- NOTE: run rows first, in id order. Every transition of a run locks
    -- its row first, and a fixed order keeps two batches from waiting for
    -- each other in a cycle.
    EXECUTE format($sql$
        SELECT count(*) FROM (
            SELECT r.id FROM %I r
            WHERE r.id IN (SELECT m.flow_run_id FROM %I m WHERE m.id = ANY($1))
            ORDER BY r.id FOR UPDATE OF r) locked$sql$, v_runs, 'cb_m_' || flow)
        USING ids;
    -- NOTE: then the items and their step runs, each in id order, as
    -- cb_hide_map_tasks and cb_hide_steps lock them. A generator's step run
    -- stays started, so its lease is renewed while its items complete.
    EXECUTE format($sql$
        SELECT count(*) FROM (
            SELECT m.id FROM %I m WHERE m.id = ANY($1)
            ORDER BY m.id FOR UPDATE OF m) locked$sql$, 'cb_m_' || flow)
        USING ids;
    EXECUTE format($sql$
        SELECT count(*) FROM (
            SELECT s.id FROM %I s
            WHERE s.id IN (SELECT m.step_run_id FROM %I m WHERE m.id = ANY($1))
            ORDER BY s.id FOR UPDATE OF s) locked$sql$, 'cb_s_' || flow, 'cb_m_' || flow)
        USING ids;

    EXECUTE format($sql$
        WITH given AS (
            SELECT * FROM unnest($1::bigint[], $2::integer[], $3::jsonb[]) AS g(id, attempt, output)
        ), done AS (
            UPDATE %1$I m
            SET status = 'completed', done = true, running = false, output = coalesce(g.output, 'null'::jsonb),
                completed_at = clock_timestamp()
            FROM given g
            WHERE m.id = g.id AND m.status = 'started' AND m.attempts = g.attempt
              AND EXISTS (SELECT 1 FROM %2$I r WHERE r.id = m.flow_run_id AND r.status = 'started')
            RETURNING m.id, m.step_run_id
        ), counted AS (
            UPDATE %3$I s SET items_remaining = s.items_remaining - c.n
            FROM (SELECT step_run_id, count(*)::integer AS n FROM done GROUP BY step_run_id) c
            WHERE s.id = c.step_run_id
            RETURNING s.id
        )
        -- NOTE: counted runs even though nothing reads it: PostgreSQL runs
        -- every data-modifying WITH statement to completion.
        SELECT array_agg(id ORDER BY id) FROM done$sql$,
        'cb_m_' || flow, v_runs, 'cb_s_' || flow)
        INTO v_done USING ids, attempts, outputs;

    FOR v_step IN EXECUTE format($sql$
        SELECT s.id, s.flow_run_id FROM %I s
        WHERE s.id IN (SELECT m.step_run_id FROM %I m WHERE m.id = ANY($1))
          AND s.status = 'waiting_for_map_tasks' AND s.items_remaining = 0
        ORDER BY s.id$sql$, 'cb_s_' || flow, 'cb_m_' || flow)
        USING v_done
    LOOP
        PERFORM cb_flow_finish_fanout(flow, v_step.flow_run_id, v_step.id);
    END LOOP;

    RETURN QUERY SELECT unnest(coalesce(v_done, '{}'));
END;
$$;

-- migrate:down

CREATE OR REPLACE FUNCTION cb_hide_tasks(name text, ids bigint[], hide_for integer)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
BEGIN
    PERFORM cb_check_positive('hide_for', hide_for);
    RETURN QUERY EXECUTE format($sql$
        WITH hidden AS (
            UPDATE %I SET visible_at = clock_timestamp() + make_interval(secs => $2 / 1000.0)
            WHERE id = ANY($1) AND status = 'started'
            RETURNING id
        )
        SELECT id FROM hidden ORDER BY id$sql$, v_task.table_name)
        USING ids, hide_for;
END;
$$;

CREATE OR REPLACE FUNCTION cb_hide_steps(flow text, ids bigint[], hide_for integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    PERFORM cb_check_positive('hide_for', hide_for);
    RETURN QUERY EXECUTE format($sql$
        WITH hidden AS (
            UPDATE %I SET visible_at = clock_timestamp() + make_interval(secs => $2 / 1000.0)
            WHERE id = ANY($1) AND status = 'started'
            RETURNING id
        )
        SELECT id FROM hidden ORDER BY id$sql$, 'cb_s_' || flow)
        USING ids, hide_for;
END;
$$;

CREATE OR REPLACE FUNCTION cb_hide_map_tasks(flow text, ids bigint[], hide_for integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    PERFORM cb_check_positive('hide_for', hide_for);
    RETURN QUERY EXECUTE format($sql$
        WITH hidden AS (
            UPDATE %I SET visible_at = clock_timestamp() + make_interval(secs => $2 / 1000.0)
            WHERE id = ANY($1) AND status = 'started'
            RETURNING id
        )
        SELECT id FROM hidden ORDER BY id$sql$, 'cb_m_' || flow)
        USING ids, hide_for;
END;
$$;

CREATE OR REPLACE FUNCTION cb_complete_map_tasks(flow text, ids bigint[], attempts integer[], outputs jsonb[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_runs text := cb_flow_table(flow);
    v_done bigint[];
    v_step record;
BEGIN
    IF cardinality(ids) IS DISTINCT FROM cardinality(attempts)
       OR cardinality(ids) IS DISTINCT FROM cardinality(outputs) THEN
        RAISE EXCEPTION 'catbird: ids, attempts and outputs must have the same length (% , %, %)',
            cardinality(ids), cardinality(attempts), cardinality(outputs)
            USING ERRCODE = 'CB002';
    END IF;
    IF coalesce(cardinality(ids), 0) = 0 THEN
        RETURN;
    END IF;

    -- NOTE: run rows first, in id order. Every transition of a run locks
    -- its row first, and a fixed order keeps two batches from waiting for
    -- each other in a cycle.
    EXECUTE format($sql$
        SELECT count(*) FROM (
            SELECT r.id FROM %I r
            WHERE r.id IN (SELECT m.flow_run_id FROM %I m WHERE m.id = ANY($1))
            ORDER BY r.id FOR UPDATE OF r) locked$sql$, v_runs, 'cb_m_' || flow)
        USING ids;

    EXECUTE format($sql$
        WITH given AS (
            SELECT * FROM unnest($1::bigint[], $2::integer[], $3::jsonb[]) AS g(id, attempt, output)
        ), done AS (
            UPDATE %1$I m
            SET status = 'completed', done = true, running = false, output = coalesce(g.output, 'null'::jsonb),
                completed_at = clock_timestamp()
            FROM given g
            WHERE m.id = g.id AND m.status = 'started' AND m.attempts = g.attempt
              AND EXISTS (SELECT 1 FROM %2$I r WHERE r.id = m.flow_run_id AND r.status = 'started')
            RETURNING m.id, m.step_run_id
        ), counted AS (
            UPDATE %3$I s SET items_remaining = s.items_remaining - c.n
            FROM (SELECT step_run_id, count(*)::integer AS n FROM done GROUP BY step_run_id) c
            WHERE s.id = c.step_run_id
            RETURNING s.id
        )
        -- NOTE: counted runs even though nothing reads it: PostgreSQL runs
        -- every data-modifying WITH statement to completion.
        SELECT array_agg(id ORDER BY id) FROM done$sql$,
        'cb_m_' || flow, v_runs, 'cb_s_' || flow)
        INTO v_done USING ids, attempts, outputs;

    FOR v_step IN EXECUTE format($sql$
        SELECT s.id, s.flow_run_id FROM %I s
        WHERE s.id IN (SELECT m.step_run_id FROM %I m WHERE m.id = ANY($1))
          AND s.status = 'waiting_for_map_tasks' AND s.items_remaining = 0
        ORDER BY s.id$sql$, 'cb_s_' || flow, 'cb_m_' || flow)
        USING v_done
    LOOP
        PERFORM cb_flow_finish_fanout(flow, v_step.flow_run_id, v_step.id);
    END LOOP;

    RETURN QUERY SELECT unnest(coalesce(v_done, '{}'));
END;
$$;

DROP FUNCTION cb_extend_leases(text, bigint[], integer);
