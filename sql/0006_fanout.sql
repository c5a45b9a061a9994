-- Version 6: fan-out steps. A mapper step turns each element of an array
-- (the flow input or a dependency's output) into a map item. A generator
-- step runs a function that yields items while they are processed. A
-- reducer step folds the item outputs of a mapper or generator.
--
-- Items live in one table per flow, cb_m_<flow>, and are claimed, leased,
-- retried and fenced by attempt like step runs. The step run counts its
-- outstanding items; the transaction that completes the last one completes
-- the step and moves the run on. A mapper's or generator's output (its item
-- outputs in item order) is built when something reads it, never stored.
--
-- Wake-up payload: 'i|<flow>.<step>|<epoch>' items became claimable.

-- migrate:up

ALTER TABLE cb_flow_steps
    ADD COLUMN map_input boolean NOT NULL DEFAULT false,
    ADD COLUMN map_source text,
    ADD COLUMN reduce_source text;

-- Adds what fan-out steps need to a flow's tables: item counters on its
-- step runs and the table of its map items, cb_m_<flow>. Items are claimed
-- like step runs, through a partial index that holds only claimable items.
CREATE FUNCTION cb_flow_add_fanout_tables(flow text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($sql$
        ALTER TABLE %I
            ADD COLUMN items_total integer NOT NULL DEFAULT 0,
            ADD COLUMN items_remaining integer NOT NULL DEFAULT 0,
            ADD COLUMN generator_done boolean NOT NULL DEFAULT false$sql$, 'cb_s_' || flow);
    EXECUTE format($sql$
        CREATE TABLE %I (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            flow_run_id bigint NOT NULL REFERENCES %I (id) ON DELETE CASCADE,
            step_run_id bigint NOT NULL,
            step_name text NOT NULL,
            item_index integer NOT NULL,
            status text NOT NULL DEFAULT 'queued' CHECK (status IN
                ('queued', 'started', 'completed', 'failed', 'canceled')),
            -- True from a claim until the attempt ends, as for step runs.
            running boolean NOT NULL DEFAULT false,
            -- Set with the terminal status. The claim index depends on this
            -- column only, so a claim, which changes status, attempts and
            -- the lease, is a HOT update that adds no index entry.
            done boolean NOT NULL DEFAULT false,
            priority integer NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            item jsonb NOT NULL,
            output jsonb,
            error_message text,
            created_at timestamptz NOT NULL DEFAULT now(),
            visible_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            completed_at timestamptz,
            failed_at timestamptz,
            canceled_at timestamptz,
            UNIQUE (step_run_id, item_index),
            CHECK (done = (status IN ('completed', 'failed', 'canceled')))
        ) WITH (fillfactor = 70)$sql$, 'cb_m_' || flow, 'cb_f_' || flow);
    -- NOTE: the claim index holds only unfinished items, and its leaf pages
    -- change only when items are added or finish, so scans can mark the
    -- entries of finished items dead and skip them until vacuum removes
    -- them.
    EXECUTE format('CREATE INDEX ON %I (step_name, priority DESC, id) WHERE NOT done', 'cb_m_' || flow);
    EXECUTE format('CREATE INDEX ON %I (flow_run_id)', 'cb_m_' || flow);
END;
$$;

-- The output of a completed step run. A mapper's or generator's output is
-- the array of its item outputs in item order, built when it is read, so a
-- dependent that ignores it, or a reducer that pages through the items,
-- never materialises it.
CREATE FUNCTION cb_step_output(flow text, step_run_id bigint, kind text, output jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_output jsonb;
BEGIN
    IF kind NOT IN ('mapper', 'generator') THEN
        RETURN output;
    END IF;
    EXECUTE format($sql$
        SELECT coalesce(jsonb_agg(output ORDER BY item_index), '[]')
        FROM %I WHERE step_run_id = $1 AND status = 'completed'$sql$, 'cb_m_' || flow)
        INTO v_output USING step_run_id;
    RETURN v_output;
END;
$$;

-- Activates a mapper step: one item per element of its source (the flow
-- input, or the output of its map source), in element order. Returns
-- 'waiting' when items were created, 'completed' for an empty array, and
-- 'failed' when the source is not an array, after failing the run. The
-- caller holds the run's row lock.
CREATE FUNCTION cb_flow_spawn_map(flow text, run_id bigint, flow_input jsonb, step_run_id bigint, step text,
                                  map_input boolean, map_source text, visible_at timestamptz, priority integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_source jsonb;
    v_count integer;
    v_message text;
BEGIN
    IF map_input THEN
        v_source := flow_input;
    ELSE
        EXECUTE format($sql$
            SELECT cb_step_output($3, s.id, d.kind, s.output)
            FROM %I s JOIN cb_flow_steps d ON d.flow_name = $3 AND d.step_name = s.step_name
            WHERE s.flow_run_id = $1 AND s.step_name = $2 AND s.status = 'completed'$sql$, 'cb_s_' || flow)
            INTO v_source USING run_id, map_source, flow;
    END IF;

    IF v_source IS NULL OR jsonb_typeof(v_source) <> 'array' THEN
        v_message := format('map source for step "%s" must be a JSON array, got %s', step,
            CASE WHEN v_source IS NULL THEN 'no output' ELSE 'a JSON ' || jsonb_typeof(v_source) END);
        EXECUTE format($sql$
            UPDATE %I SET status = 'failed', error_message = $2, failed_at = clock_timestamp() WHERE id = $1$sql$,
            'cb_s_' || flow)
            USING step_run_id, v_message;
        PERFORM cb_flow_mark_failed(flow, run_id, v_message, step, flow_input, NULL, 0);
        RETURN 'failed';
    END IF;

    v_count := jsonb_array_length(v_source);
    IF v_count = 0 THEN
        EXECUTE format($sql$
            UPDATE %I SET status = 'completed', started_at = clock_timestamp(), completed_at = clock_timestamp()
            WHERE id = $1$sql$, 'cb_s_' || flow)
            USING step_run_id;
        RETURN 'completed';
    END IF;

    EXECUTE format($sql$
        INSERT INTO %I (flow_run_id, step_run_id, step_name, item_index, priority, item, visible_at)
        SELECT $1, $2, $3, (x.ordinality - 1)::integer, $4, x.value, greatest($5, clock_timestamp())
        FROM jsonb_array_elements($6) WITH ORDINALITY AS x$sql$, 'cb_m_' || flow)
        USING run_id, step_run_id, step, priority, visible_at, v_source;
    EXECUTE format($sql$
        UPDATE %I SET status = 'waiting_for_map_tasks', started_at = clock_timestamp(),
                      items_total = $2, items_remaining = $2
        WHERE id = $1$sql$, 'cb_s_' || flow)
        USING step_run_id, v_count;
    PERFORM cb_wake('i', flow || '.' || step, visible_at);
    RETURN 'waiting';
END;
$$;

-- Completes a mapper or generator step whose items are all done, then
-- resolves its dependents and moves the run on. The caller holds the run's
-- row lock.
CREATE FUNCTION cb_flow_finish_fanout(flow text, run_id bigint, step_run_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_step text;
BEGIN
    EXECUTE format($sql$
        UPDATE %I SET status = 'completed', running = false, completed_at = clock_timestamp()
        WHERE id = $1
        RETURNING step_name$sql$, 'cb_s_' || flow)
        INTO v_step USING step_run_id;
    PERFORM cb_flow_resolve(flow, run_id,
        (SELECT d.dependents FROM cb_flow_steps d WHERE d.flow_name = flow AND d.step_name = v_step));
    PERFORM cb_flow_advance(flow, run_id);
END;
$$;

-- A claimed map item, as cb_claim_map_tasks returns it. `input` is the flow
-- input for a mapper over a step's output, and NULL otherwise because the
-- item takes its place. `dependencies` maps the step's other completed
-- dependencies whose output it receives to that output.
CREATE TYPE cb_claimed_map_task AS (
    id bigint,
    flow_run_id bigint,
    step_run_id bigint,
    item_index integer,
    attempts integer,
    priority integer,
    item jsonb,
    input jsonb,
    signal_input jsonb,
    dependencies jsonb,
    started_at timestamptz
);

-- Claims up to `quantity` visible, unfinished items of a mapper or
-- generator step whose flow runs are started and not expired, highest
-- priority first, then oldest. Each claimed item becomes started with its
-- attempt count raised and is leased for `hide_for` milliseconds.
-- NOTE: bitmap scans are off inside: a burst of new items leaves the
-- statistics stale, and the planner then reads every unfinished item and
-- sorts them instead of reading the first `quantity` in index order.
CREATE FUNCTION cb_claim_map_tasks(flow text, step text, quantity integer, hide_for integer)
RETURNS SETOF cb_claimed_map_task
LANGUAGE plpgsql SET enable_bitmapscan = off AS $$
DECLARE
    v_runs text := cb_flow_table(flow);
    v_def record;
    v_inputs text[];
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM cb_check_positive('quantity', quantity);
    PERFORM cb_check_positive('hide_for', hide_for);
    SELECT d.kind, d.map_input, d.map_source, d.inputs INTO v_def
    FROM cb_flow_steps d WHERE d.flow_name = flow AND d.step_name = step;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'catbird: flow "%" has no step "%"', flow, step
            USING ERRCODE = 'CB001';
    END IF;
    IF v_def.kind NOT IN ('mapper', 'generator') THEN
        RAISE EXCEPTION 'catbird: step "%" of flow "%" is a % step, not a mapper or generator', step, flow, v_def.kind
            USING ERRCODE = 'CB002';
    END IF;
    -- A generator's items receive only the item; a mapper's also receive
    -- the step's other dependencies.
    v_inputs := CASE WHEN v_def.kind = 'mapper' THEN array_remove(v_def.inputs, v_def.map_source) ELSE '{}' END;

    -- NOTE: SKIP LOCKED is load-bearing, as for task claims.
    RETURN QUERY EXECUTE format($sql$
        WITH selected AS (
            -- NOTE: the run check is a scalar subquery, not a join, so the
            -- plan stays an ordered scan of the claim index that stops
            -- after `quantity` rows, even with stale statistics.
            SELECT m.id FROM %1$I m
            WHERE m.step_name = $1 AND NOT m.done AND m.visible_at <= $2
              AND (SELECT r.status = 'started' AND (r.expires_at IS NULL OR r.expires_at > $2)
                   FROM %2$I r WHERE r.id = m.flow_run_id)
            ORDER BY m.priority DESC, m.id
            LIMIT $3
            FOR UPDATE OF m SKIP LOCKED
        ), claimed AS (
            UPDATE %1$I m
            SET status = 'started', started_at = $2, attempts = m.attempts + 1, running = true,
                visible_at = $2 + make_interval(secs => $4 / 1000.0)
            FROM selected x
            WHERE m.id = x.id
            RETURNING m.id, m.flow_run_id, m.step_run_id, m.item_index, m.attempts, m.priority, m.item, m.started_at
        )
        SELECT c.id, c.flow_run_id, c.step_run_id, c.item_index, c.attempts, c.priority, c.item,
               CASE WHEN $6 THEN r.input END, s.signal_input,
               CASE WHEN cardinality($5) = 0 THEN '{}'::jsonb ELSE
               (SELECT coalesce(jsonb_object_agg(d.step_name, cb_step_output($7, d.id, k.kind, d.output)), '{}')
                FROM %3$I d JOIN cb_flow_steps k ON k.flow_name = $7 AND k.step_name = d.step_name
                WHERE d.flow_run_id = c.flow_run_id AND d.step_name = ANY($5) AND d.status = 'completed') END,
               c.started_at
        FROM claimed c JOIN %2$I r ON r.id = c.flow_run_id JOIN %3$I s ON s.id = c.step_run_id
        ORDER BY c.priority DESC, c.id$sql$, 'cb_m_' || flow, v_runs, 'cb_s_' || flow)
        USING step, v_now, quantity, hide_for, v_inputs,
              v_def.kind = 'mapper' AND NOT v_def.map_input, flow;
END;
$$;

-- Extends the lease of started map items. Returns the ids extended.
CREATE FUNCTION cb_hide_map_tasks(flow text, ids bigint[], hide_for integer) RETURNS SETOF bigint
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

-- Completes map items in one statement: item `ids[i]`, held by attempt
-- `attempts[i]`, gets `outputs[i]`. The runs involved are locked first, in
-- id order. A step whose last item completes completes in the same
-- transaction, and its run moves on. Items no longer held by the given
-- attempt (or of runs that stopped) are left alone. Returns the ids
-- recorded.
CREATE FUNCTION cb_complete_map_tasks(flow text, ids bigint[], attempts integer[], outputs jsonb[])
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

-- Returns the run id and run status of a map item claimed by `attempt`,
-- locking the run's row first. Returns NULLs when the item is no longer
-- claimed by that attempt.
CREATE FUNCTION cb_flow_lock_map_task(flow text, id bigint, attempt integer, OUT run_id bigint, OUT run_status text)
LANGUAGE plpgsql AS $$
DECLARE
    v_held boolean;
BEGIN
    PERFORM cb_flow_table(flow);
    EXECUTE format('SELECT flow_run_id FROM %I WHERE id = $1', 'cb_m_' || flow) INTO run_id USING id;
    IF run_id IS NULL THEN
        RETURN;
    END IF;
    run_status := cb_flow_lock_run(flow, run_id);
    EXECUTE format('SELECT status = ''started'' AND attempts = $2 FROM %I WHERE id = $1 FOR UPDATE', 'cb_m_' || flow)
        INTO v_held USING id, attempt;
    IF NOT coalesce(v_held, false) THEN
        run_id := NULL;
        run_status := NULL;
    END IF;
END;
$$;

-- Records a failed attempt of a map item. With `retry_delay` (milliseconds)
-- the item stays started and is claimable again after the delay. Without
-- it the item fails for good, and so do its step and its run, whose
-- failed-step input is the item. Returns the item's new status, or NULL
-- when the item is no longer claimed by the attempt or its run stopped.
CREATE FUNCTION cb_fail_map_task(flow text, id bigint, attempt integer, error_message text,
                                 retry_delay integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record := cb_flow_lock_map_task(flow, id, attempt);
    v_message text := coalesce(nullif(error_message, ''), 'handler failed without an error message');
    v_item record;
    v_step record;
BEGIN
    PERFORM cb_check_non_negative('retry_delay', retry_delay);
    IF v_lock.run_id IS NULL OR v_lock.run_status <> 'started' THEN
        RETURN NULL;
    END IF;

    IF retry_delay IS NOT NULL THEN
        EXECUTE format($sql$
            UPDATE %I SET error_message = $2, running = false,
                          visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
            WHERE id = $1
            RETURNING step_name$sql$, 'cb_m_' || flow)
            INTO v_item USING id, v_message, retry_delay;
        PERFORM cb_wake('i', flow || '.' || v_item.step_name,
                        clock_timestamp() + make_interval(secs => retry_delay / 1000.0));
        RETURN 'started';
    END IF;

    EXECUTE format($sql$
        UPDATE %I SET status = 'failed', done = true, running = false, error_message = $2,
                      failed_at = clock_timestamp()
        WHERE id = $1
        RETURNING step_run_id, item, attempts$sql$, 'cb_m_' || flow)
        INTO v_item USING id, v_message;
    EXECUTE format($sql$
        UPDATE %I SET status = 'failed', running = false, error_message = $2, failed_at = clock_timestamp()
        WHERE id = $1
        RETURNING step_name, signal_input$sql$, 'cb_s_' || flow)
        INTO v_step USING v_item.step_run_id, v_message;
    PERFORM cb_flow_mark_failed(flow, v_lock.run_id, v_message, v_step.step_name, v_item.item,
                                v_step.signal_input, v_item.attempts);
    RETURN 'failed';
END;
$$;

-- Gives a map item claim back without counting the attempt; claimable
-- again after `delay` milliseconds. Returns whether the attempt still held
-- the item.
CREATE FUNCTION cb_release_map_task(flow text, id bigint, attempt integer, delay integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_step text;
BEGIN
    PERFORM cb_flow_table(flow);
    PERFORM cb_check_non_negative('delay', delay);
    EXECUTE format($sql$
        UPDATE %I
        SET attempts = attempts - 1,
            status = CASE WHEN attempts = 1 THEN 'queued' ELSE status END,
            running = false,
            visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
        WHERE id = $1 AND status = 'started' AND attempts = $2
        RETURNING step_name$sql$, 'cb_m_' || flow)
        INTO v_step USING id, attempt, coalesce(delay, 0);
    IF v_step IS NULL THEN
        RETURN false;
    END IF;
    PERFORM cb_wake('i', flow || '.' || v_step, clock_timestamp() + make_interval(secs => coalesce(delay, 0) / 1000.0));
    RETURN true;
END;
$$;

-- Starts attempt `attempt` of a generator step: the items of earlier
-- attempts are deleted and the counters reset, so a retried generator
-- yields from the start without duplicates. Returns whether the step is
-- still claimed by the attempt, in a started run.
CREATE FUNCTION cb_start_generator_step(flow text, id bigint, attempt integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record := cb_flow_lock_step(flow, id, attempt);
BEGIN
    IF v_lock.run_id IS NULL OR v_lock.run_status <> 'started' THEN
        RETURN false;
    END IF;
    -- NOTE: unconditional: an attempt given back at shutdown is claimed
    -- again under the same number.
    EXECUTE format('DELETE FROM %I WHERE step_run_id = $1', 'cb_m_' || flow) USING id;
    EXECUTE format($sql$
        UPDATE %I SET items_total = 0, items_remaining = 0, generator_done = false WHERE id = $1$sql$,
        'cb_s_' || flow)
        USING id;
    RETURN true;
END;
$$;

-- Adds the items a generator yielded (a JSON array) to its step run, with
-- indices following those already spawned, and wakes the item handlers.
-- Returns the index of the first new item. Returns NULL, adding nothing,
-- when the step is no longer claimed by the attempt or its run stopped.
CREATE FUNCTION cb_spawn_generator_map_tasks(flow text, id bigint, attempt integer, items jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record;
    v_count integer;
    v_step record;
BEGIN
    IF items IS NULL OR jsonb_typeof(items) <> 'array' THEN
        RAISE EXCEPTION 'catbird: generated items must be a JSON array, got %',
            coalesce('a JSON ' || jsonb_typeof(items), 'SQL NULL')
            USING ERRCODE = 'CB002';
    END IF;
    v_lock := cb_flow_lock_step(flow, id, attempt);
    IF v_lock.run_id IS NULL OR v_lock.run_status <> 'started' THEN
        RETURN NULL;
    END IF;
    v_count := jsonb_array_length(items);
    EXECUTE format($sql$
        UPDATE %I SET items_total = items_total + $2, items_remaining = items_remaining + $2
        WHERE id = $1
        RETURNING items_total - $2 AS first_index, step_name, priority$sql$, 'cb_s_' || flow)
        INTO v_step USING id, v_count;
    IF v_count > 0 THEN
        EXECUTE format($sql$
            INSERT INTO %I (flow_run_id, step_run_id, step_name, item_index, priority, item)
            SELECT $1, $2, $3, $4 + (x.ordinality - 1)::integer, $5, x.value
            FROM jsonb_array_elements($6) WITH ORDINALITY AS x$sql$, 'cb_m_' || flow)
            USING v_lock.run_id, id, v_step.step_name, v_step.first_index, v_step.priority, items;
        PERFORM cb_wake('i', flow || '.' || v_step.step_name, NULL);
    END IF;
    RETURN v_step.first_index;
END;
$$;

-- Records that attempt `attempt` of a generator step returned: the step
-- completes once its items have (at once when none is outstanding), and
-- waits in waiting_for_map_tasks until then. While the run is being
-- canceled the step ends canceled instead. Returns false, changing nothing,
-- when the attempt no longer holds the step.
CREATE FUNCTION cb_complete_generator_step(flow text, id bigint, attempt integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record := cb_flow_lock_step(flow, id, attempt);
    v_remaining integer;
BEGIN
    IF v_lock.run_id IS NULL THEN
        RETURN false;
    END IF;
    IF v_lock.run_status = 'canceling' THEN
        EXECUTE format('UPDATE %I SET status = ''canceled'', canceled_at = clock_timestamp() WHERE id = $1', 'cb_s_' || flow)
            USING id;
        PERFORM cb_flow_finish_cancel(flow, v_lock.run_id);
        RETURN false;
    END IF;
    IF v_lock.run_status <> 'started' THEN
        RETURN false;
    END IF;
    EXECUTE format($sql$
        UPDATE %I SET generator_done = true, running = false, status = 'waiting_for_map_tasks'
        WHERE id = $1
        RETURNING items_remaining$sql$, 'cb_s_' || flow)
        INTO v_remaining USING id;
    IF v_remaining = 0 THEN
        PERFORM cb_flow_finish_fanout(flow, v_lock.run_id, id);
    END IF;
    RETURN true;
END;
$$;

-- Returns up to `quantity` completed item outputs of step `step` of a flow
-- run with an index above `after_index`, in index order: how a reducer
-- pages through the items it folds.
CREATE FUNCTION cb_read_map_outputs(flow text, run_id bigint, step text, after_index integer, quantity integer)
RETURNS TABLE (item_index integer, output jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_step_run_id bigint;
BEGIN
    PERFORM cb_flow_table(flow);
    PERFORM cb_check_positive('quantity', quantity);
    EXECUTE format('SELECT id FROM %I WHERE flow_run_id = $1 AND step_name = $2', 'cb_s_' || flow)
        INTO v_step_run_id USING run_id, step;
    IF v_step_run_id IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($sql$
        SELECT m.item_index, m.output FROM %I m
        WHERE m.step_run_id = $1 AND m.item_index > $2 AND m.status = 'completed'
        ORDER BY m.item_index
        LIMIT $3$sql$, 'cb_m_' || flow)
        USING v_step_run_id, coalesce(after_index, -1), quantity;
END;
$$;

-- Validates a step list and returns it normalised (see version 4). Version
-- 6 adds fan-out steps: a step object may carry "kind" ("normal", "mapper",
-- "generator" or "reducer"), "map_input": true or "map_source": "<step>"
-- for a mapper, and "reduce_source": "<step>" for a reducer. Without
-- "kind", these fields imply it. The normalised step keeps them only when
-- set, so definitions of normal steps read as in version 4.
CREATE OR REPLACE FUNCTION cb_normalize_flow_steps(flow text, steps jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_step jsonb;
    v_dep jsonb;
    v_name text;
    v_dep_name text;
    v_names text[] := '{}';
    v_result jsonb := '[]';
    v_deps jsonb;
    v_dep_names text[];
    v_kind text;
    v_map_input boolean;
    v_map_source text;
    v_reduce_source text;
    v_source text;
    v_condition text;
    v_parsed jsonb;
    v_root text;
    v_key text;
    v_extra jsonb;
BEGIN
    IF steps IS NULL OR jsonb_typeof(steps) <> 'array' THEN
        PERFORM cb_flow_definition_error(flow, 'steps must be a JSON array');
    END IF;
    IF jsonb_array_length(steps) = 0 THEN
        PERFORM cb_flow_definition_error(flow, 'a flow needs at least one step');
    END IF;

    -- Names first, so dependencies may refer to steps defined later.
    FOR v_step IN SELECT value FROM jsonb_array_elements(steps) LOOP
        IF jsonb_typeof(v_step) <> 'object' THEN
            PERFORM cb_flow_definition_error(flow, format('each step must be a JSON object, got %s', v_step));
        END IF;
        IF jsonb_typeof(v_step -> 'name') IS DISTINCT FROM 'string' THEN
            PERFORM cb_flow_definition_error(flow, format('each step needs a "name" string, got %s', v_step));
        END IF;
        v_name := v_step ->> 'name';
        PERFORM cb_check_name('step', v_name);
        IF v_name IN ('input', 'signal') THEN
            PERFORM cb_flow_definition_error(flow,
                format('step name "%s" is reserved (conditions use input.* and signal.*)', v_name));
        END IF;
        IF v_name = ANY(v_names) THEN
            PERFORM cb_flow_definition_error(flow, format('step "%s" is defined twice', v_name));
        END IF;
        v_names := v_names || v_name;
    END LOOP;

    FOR v_step IN SELECT value FROM jsonb_array_elements(steps) LOOP
        v_name := v_step ->> 'name';
        FOR v_key IN SELECT jsonb_object_keys(v_step) LOOP
            IF v_key NOT IN ('name', 'description', 'depends_on', 'condition', 'signal', 'kind',
                             'map_input', 'map_source', 'reduce_source') THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'step "%s" has an unknown field "%s" (expected name, description, depends_on, condition, '
                    'signal, kind, map_input, map_source, reduce_source)', v_name, v_key));
            END IF;
        END LOOP;
        IF v_step ? 'signal' AND jsonb_typeof(v_step -> 'signal') <> 'boolean' THEN
            PERFORM cb_flow_definition_error(flow, format('step "%s": signal must be true or false', v_name));
        END IF;
        IF v_step ? 'map_input' AND jsonb_typeof(v_step -> 'map_input') <> 'boolean' THEN
            PERFORM cb_flow_definition_error(flow, format('step "%s": map_input must be true or false', v_name));
        END IF;
        FOREACH v_key IN ARRAY ARRAY['kind', 'map_source', 'reduce_source'] LOOP
            IF jsonb_typeof(v_step -> v_key) NOT IN ('string', 'null') THEN
                PERFORM cb_flow_definition_error(flow, format('step "%s": %s must be a string', v_name, v_key));
            END IF;
        END LOOP;

        v_map_input := coalesce((v_step ->> 'map_input')::boolean, false);
        v_map_source := v_step ->> 'map_source';
        v_reduce_source := v_step ->> 'reduce_source';
        v_kind := v_step ->> 'kind';
        IF v_kind IS NULL THEN
            v_kind := CASE
                WHEN v_map_input OR v_map_source IS NOT NULL THEN 'mapper'
                WHEN v_reduce_source IS NOT NULL THEN 'reducer'
                ELSE 'normal' END;
        END IF;
        IF v_kind NOT IN ('normal', 'mapper', 'generator', 'reducer') THEN
            PERFORM cb_flow_definition_error(flow, format(
                'step "%s" has kind "%s" (expected normal, mapper, generator or reducer)', v_name, v_kind));
        END IF;
        IF v_map_input AND v_map_source IS NOT NULL THEN
            PERFORM cb_flow_definition_error(flow, format(
                'step "%s" maps both the flow input and the output of "%s"; choose one map source',
                v_name, v_map_source));
        END IF;
        IF (v_map_input OR v_map_source IS NOT NULL) AND v_kind <> 'mapper' THEN
            PERFORM cb_flow_definition_error(flow, format(
                'step "%s" is a %s step but sets a map source; a step has one kind', v_name, v_kind));
        END IF;
        IF v_reduce_source IS NOT NULL AND v_kind <> 'reducer' THEN
            PERFORM cb_flow_definition_error(flow, format(
                'step "%s" is a %s step but sets a reduce source; a step has one kind', v_name, v_kind));
        END IF;
        IF v_kind = 'mapper' AND NOT v_map_input AND v_map_source IS NULL THEN
            PERFORM cb_flow_definition_error(flow, format(
                'mapper step "%s" needs a map source: "map_input": true or "map_source": "<step>"', v_name));
        END IF;
        IF v_kind = 'reducer' AND v_reduce_source IS NULL THEN
            PERFORM cb_flow_definition_error(flow, format(
                'reducer step "%s" needs "reduce_source": the map or generator step it folds', v_name));
        END IF;

        v_deps := '[]';
        v_dep_names := '{}';
        IF v_step ? 'depends_on' AND jsonb_typeof(v_step -> 'depends_on') <> 'null' THEN
            IF jsonb_typeof(v_step -> 'depends_on') <> 'array' THEN
                PERFORM cb_flow_definition_error(flow, format('step "%s": depends_on must be a JSON array', v_name));
            END IF;
            FOR v_dep IN SELECT value FROM jsonb_array_elements(v_step -> 'depends_on') LOOP
                IF jsonb_typeof(v_dep) = 'string' THEN
                    v_dep := jsonb_build_object('name', v_dep #>> '{}');
                ELSIF jsonb_typeof(v_dep) <> 'object' THEN
                    PERFORM cb_flow_definition_error(flow, format(
                        'step "%s": each dependency must be a step name or an object with "name", got %s', v_name, v_dep));
                END IF;
                v_dep_name := v_dep ->> 'name';
                IF v_dep_name IS NULL THEN
                    PERFORM cb_flow_definition_error(flow, format('step "%s": a dependency has no name', v_name));
                END IF;
                IF v_dep_name = v_name THEN
                    PERFORM cb_flow_definition_error(flow, format('step "%s" depends on itself', v_name));
                END IF;
                IF NOT v_dep_name = ANY(v_names) THEN
                    PERFORM cb_flow_definition_error(flow, format(
                        'step "%s" depends on "%s", which is not a step of the flow', v_name, v_dep_name));
                END IF;
                IF v_dep_name = ANY(v_dep_names) THEN
                    PERFORM cb_flow_definition_error(flow, format(
                        'step "%s" lists the dependency "%s" twice', v_name, v_dep_name));
                END IF;
                v_dep_names := v_dep_names || v_dep_name;
                v_deps := v_deps || jsonb_build_array(jsonb_build_object(
                    'name', v_dep_name,
                    'optional', coalesce((v_dep ->> 'optional')::boolean, false),
                    'ignore_output', coalesce((v_dep ->> 'ignore_output')::boolean, false)));
            END LOOP;
        END IF;

        -- The source of a mapper or reducer must be one of its dependencies,
        -- required, and not ignored: the step reads what it produced.
        v_source := coalesce(v_map_source, v_reduce_source);
        IF v_source IS NOT NULL THEN
            IF v_source = v_name THEN
                PERFORM cb_flow_definition_error(flow, format('step "%s" cannot %s its own output',
                    v_name, CASE WHEN v_kind = 'mapper' THEN 'map' ELSE 'reduce' END));
            END IF;
            IF NOT v_source = ANY(v_names) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'step "%s" %s "%s", which is not a step of the flow', v_name,
                    CASE WHEN v_kind = 'mapper' THEN 'maps' ELSE 'reduces' END, v_source));
            END IF;
            IF NOT v_source = ANY(v_dep_names) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'step "%s" %s "%s", which is not one of its dependencies; add it to depends_on', v_name,
                    CASE WHEN v_kind = 'mapper' THEN 'maps' ELSE 'reduces' END, v_source));
            END IF;
            IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_deps) d
                       WHERE d ->> 'name' = v_source AND (d ->> 'ignore_output')::boolean) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'step "%s" ignores the output of "%s", its %s source', v_name, v_source,
                    CASE WHEN v_kind = 'mapper' THEN 'map' ELSE 'reduce' END));
            END IF;
            IF v_kind = 'mapper' AND EXISTS (SELECT 1 FROM jsonb_array_elements(v_deps) d
                       WHERE d ->> 'name' = v_source AND (d ->> 'optional')::boolean) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'step "%s" maps "%s", declared optional; a map source must be a required dependency',
                    v_name, v_source));
            END IF;
        END IF;

        v_condition := nullif(btrim(v_step ->> 'condition'), '');
        v_parsed := NULL;
        IF v_condition IS NOT NULL THEN
            BEGIN
                v_parsed := cb_parse_condition(v_condition);
            EXCEPTION WHEN SQLSTATE 'CB002' THEN
                PERFORM cb_flow_definition_error(flow, format('the condition of step "%s" is invalid: %s',
                    v_name, regexp_replace(SQLERRM, '^catbird: ', '')));
            END;
            v_root := v_parsed -> 'path' ->> 0;
            IF v_root = 'signal' AND NOT coalesce((v_step ->> 'signal')::boolean, false) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'the condition of step "%s" reads signal.*, but the step does not wait for a signal', v_name));
            ELSIF v_root <> 'input' AND v_root <> 'signal' AND NOT v_root = ANY(v_dep_names) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'the condition of step "%s" reads "%s", which is not one of its dependencies (%s)',
                    v_name, v_root, coalesce(nullif(array_to_string(v_dep_names, ', '), ''), 'none')));
            ELSIF v_root = ANY(v_dep_names) AND EXISTS (
                SELECT 1 FROM jsonb_array_elements(v_deps) d
                WHERE d ->> 'name' = v_root AND (d ->> 'ignore_output')::boolean
            ) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'the condition of step "%s" reads "%s", whose output the step ignores', v_name, v_root));
            END IF;
        END IF;

        v_extra := '{}';
        IF v_map_input THEN
            v_extra := v_extra || jsonb_build_object('map_input', true);
        END IF;
        IF v_map_source IS NOT NULL THEN
            v_extra := v_extra || jsonb_build_object('map_source', v_map_source);
        END IF;
        IF v_reduce_source IS NOT NULL THEN
            v_extra := v_extra || jsonb_build_object('reduce_source', v_reduce_source);
        END IF;
        v_result := v_result || jsonb_build_array(jsonb_build_object(
            'name', v_name,
            'description', nullif(v_step ->> 'description', ''),
            'depends_on', v_deps,
            'condition', v_condition,
            'signal', coalesce((v_step ->> 'signal')::boolean, false),
            'kind', v_kind) || v_extra);
    END LOOP;

    FOR v_step IN SELECT value FROM jsonb_array_elements(v_result) LOOP
        -- A reducer folds the items of a mapper or generator.
        IF v_step ? 'reduce_source' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(v_result) s
            WHERE s ->> 'name' = v_step ->> 'reduce_source' AND s ->> 'kind' IN ('mapper', 'generator')
        ) THEN
            PERFORM cb_flow_definition_error(flow, format(
                'reducer step "%s" reduces "%s", which is not a mapper or generator step',
                v_step ->> 'name', v_step ->> 'reduce_source'));
        END IF;
        -- A step whose dependency has a condition must declare it optional:
        -- the dependency may be skipped, and the step then runs without its
        -- output. A reducer folds zero items of a skipped source instead.
        FOR v_dep IN SELECT value FROM jsonb_array_elements(v_step -> 'depends_on') LOOP
            IF NOT (v_dep ->> 'optional')::boolean AND NOT (v_dep ->> 'ignore_output')::boolean
               AND (v_dep ->> 'name') IS DISTINCT FROM (v_step ->> 'reduce_source') AND EXISTS (
                SELECT 1 FROM jsonb_array_elements(v_result) s
                WHERE s ->> 'name' = v_dep ->> 'name' AND s ->> 'condition' IS NOT NULL
            ) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    CASE WHEN v_dep ->> 'name' = v_step ->> 'map_source' THEN
                        'step "%s" maps "%s", which has a condition and may be skipped; a map source cannot be skipped'
                    ELSE
                        'step "%s" depends on "%s", which has a condition and may be skipped; declare the dependency optional'
                    END,
                    v_step ->> 'name', v_dep ->> 'name'));
            END IF;
        END LOOP;
    END LOOP;

    RETURN v_result;
END;
$$;

CREATE OR REPLACE FUNCTION cb_create_flow(
    name text,
    steps jsonb,
    description text DEFAULT NULL,
    output_priority text[] DEFAULT NULL,
    retention_period bigint DEFAULT NULL,
    has_on_fail boolean DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_flow text := cb_create_flow.name;
    v_steps jsonb;
    v_cycle text;
    v_terminal text[];
    v_priority text[];
    v_entry text;
    v_definition jsonb;
    v_stored jsonb;
    v_difference text;
    v_step jsonb;
    v_position integer := 0;
BEGIN
    PERFORM cb_check_name('flow', v_flow);
    PERFORM cb_check_period('retention_period', retention_period);
    v_steps := cb_normalize_flow_steps(v_flow, steps);

    v_cycle := cb_find_flow_cycle(v_steps);
    IF v_cycle IS NOT NULL THEN
        PERFORM cb_flow_definition_error(v_flow, format('the dependencies form a cycle: %s', v_cycle));
    END IF;

    SELECT array_agg(s ->> 'name' ORDER BY o) INTO v_terminal
    FROM jsonb_array_elements(v_steps) WITH ORDINALITY AS t(s, o)
    WHERE NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(v_steps) other, jsonb_array_elements(other -> 'depends_on') d
        WHERE d ->> 'name' = s ->> 'name');

    IF output_priority IS NULL THEN
        v_priority := v_terminal;
    ELSE
        IF cardinality(output_priority) = 0 THEN
            PERFORM cb_flow_definition_error(v_flow, 'output_priority is empty; omit it to use the final steps');
        END IF;
        FOREACH v_entry IN ARRAY output_priority LOOP
            IF v_entry IS NULL OR NOT EXISTS (SELECT 1 FROM jsonb_array_elements(v_steps) s WHERE s ->> 'name' = v_entry) THEN
                PERFORM cb_flow_definition_error(v_flow, format('output_priority names "%s", which is not a step', v_entry));
            END IF;
        END LOOP;
        IF (SELECT count(DISTINCT e) FROM unnest(output_priority) e) <> cardinality(output_priority) THEN
            PERFORM cb_flow_definition_error(v_flow, 'output_priority lists a step twice');
        END IF;
        FOREACH v_entry IN ARRAY v_terminal LOOP
            IF NOT v_entry = ANY(output_priority) THEN
                PERFORM cb_flow_definition_error(v_flow, format(
                    'output_priority must include every final step; "%s" is missing', v_entry));
            END IF;
        END LOOP;
        v_priority := output_priority;
    END IF;

    v_definition := jsonb_build_object(
        'description', nullif(description, ''),
        'output_priority', to_jsonb(v_priority),
        'retention_period', coalesce(retention_period, 0),
        'steps', v_steps);

    -- NOTE: serialises concurrent creators of one flow.
    PERFORM pg_advisory_xact_lock(hashtext('cb_flow:' || v_flow));
    SELECT f.definition INTO v_stored FROM cb_flows f WHERE f.name = v_flow;
    IF FOUND THEN
        v_difference := cb_flow_definition_difference(v_stored, v_definition);
        IF v_difference IS NOT NULL THEN
            RAISE EXCEPTION 'catbird: flow "%" already exists with a different definition: %; delete it first or use a new name',
                v_flow, v_difference
                USING ERRCODE = 'CB002';
        END IF;
        IF has_on_fail IS NOT NULL THEN
            UPDATE cb_flows f SET has_on_fail = cb_create_flow.has_on_fail WHERE f.name = v_flow;
        END IF;
        RETURN;
    END IF;

    INSERT INTO cb_flows (name, description, output_priority, retention_period, has_on_fail, definition)
    VALUES (v_flow, nullif(description, ''), v_priority, coalesce(retention_period, 0),
            coalesce(has_on_fail, false), v_definition);

    FOR v_step IN SELECT value FROM jsonb_array_elements(v_steps) LOOP
        v_position := v_position + 1;
        INSERT INTO cb_flow_steps (flow_name, step_name, position, description, kind, signal, condition,
                                   condition_parsed, depends_on, inputs, optional, dependents,
                                   map_input, map_source, reduce_source)
        SELECT v_flow, v_step ->> 'name', v_position, v_step ->> 'description', v_step ->> 'kind',
               (v_step ->> 'signal')::boolean, v_step ->> 'condition',
               CASE WHEN v_step ->> 'condition' IS NOT NULL THEN cb_parse_condition(v_step ->> 'condition') END,
               coalesce((SELECT array_agg(d ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_step -> 'depends_on') WITH ORDINALITY AS x(d, o)), '{}'),
               coalesce((SELECT array_agg(d ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_step -> 'depends_on') WITH ORDINALITY AS x(d, o)
                         WHERE NOT (d ->> 'ignore_output')::boolean), '{}'),
               coalesce((SELECT array_agg(d ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_step -> 'depends_on') WITH ORDINALITY AS x(d, o)
                         WHERE (d ->> 'optional')::boolean), '{}'),
               coalesce((SELECT array_agg(other ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_steps) WITH ORDINALITY AS x(other, o),
                              jsonb_array_elements(other -> 'depends_on') d
                         WHERE d ->> 'name' = v_step ->> 'name'), '{}'),
               coalesce((v_step ->> 'map_input')::boolean, false), v_step ->> 'map_source',
               v_step ->> 'reduce_source';
    END LOOP;

    EXECUTE format($sql$
        CREATE TABLE %I (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            concurrency_key text,
            input jsonb NOT NULL,
            headers jsonb,
            priority integer NOT NULL DEFAULT 0,
            status text NOT NULL DEFAULT 'started' CHECK (status IN
                ('started', 'canceling', 'completed', 'failed', 'canceled', 'expired')),
            output jsonb,
            error_message text,
            cancel_reason text,
            failed_step_name text,
            failed_step_input jsonb,
            failed_step_signal jsonb,
            failed_step_attempts integer,
            remaining_steps integer NOT NULL,
            visible_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            started_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz,
            failed_at timestamptz,
            canceled_at timestamptz,
            cancel_requested_at timestamptz,
            expired_at timestamptz,
            on_fail_status text CHECK (on_fail_status IN ('queued', 'started', 'completed', 'failed')),
            on_fail_attempts integer NOT NULL DEFAULT 0,
            on_fail_error text,
            on_fail_visible_at timestamptz,
            CHECK (status <> 'failed' OR error_message <> '')
        )$sql$, 'cb_f_' || v_flow);
    EXECUTE format($sql$
        CREATE UNIQUE INDEX ON %I (concurrency_key)
        WHERE concurrency_key IS NOT NULL AND status = 'started'$sql$, 'cb_f_' || v_flow);
    EXECUTE format('CREATE INDEX ON %I (id) WHERE on_fail_visible_at IS NOT NULL', 'cb_f_' || v_flow);

    EXECUTE format($sql$
        CREATE TABLE %I (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            flow_run_id bigint NOT NULL REFERENCES %I (id) ON DELETE CASCADE,
            step_name text NOT NULL,
            position integer NOT NULL,
            status text NOT NULL CHECK (status IN
                ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'started',
                 'waiting_for_map_tasks', 'completed', 'failed', 'skipped', 'canceled')),
            remaining_dependencies integer NOT NULL,
            -- True from a claim until the attempt ends; a started step that
            -- is not running waits for a retry.
            running boolean NOT NULL DEFAULT false,
            signal_delivered boolean NOT NULL DEFAULT false,
            signal_input jsonb,
            priority integer NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            output jsonb,
            error_message text,
            created_at timestamptz NOT NULL DEFAULT now(),
            visible_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            completed_at timestamptz,
            failed_at timestamptz,
            skipped_at timestamptz,
            canceled_at timestamptz,
            UNIQUE (flow_run_id, step_name)
        )$sql$, 'cb_s_' || v_flow, 'cb_f_' || v_flow);
    -- NOTE: the claim index holds only claimable step runs.
    EXECUTE format($sql$
        CREATE INDEX ON %I (step_name, priority DESC, id) WHERE status IN ('queued', 'started')$sql$,
        'cb_s_' || v_flow);
    PERFORM cb_flow_add_fanout_tables(v_flow);
END;
$$;

CREATE OR REPLACE FUNCTION cb_delete_flow(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM cb_check_name('flow', cb_delete_flow.name);
    PERFORM pg_advisory_xact_lock(hashtext('cb_flow:' || cb_delete_flow.name));
    DELETE FROM cb_flows f WHERE f.name = cb_delete_flow.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_m_' || cb_delete_flow.name);
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_s_' || cb_delete_flow.name);
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_f_' || cb_delete_flow.name);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION cb_step_context(flow text, run_id bigint, flow_input jsonb, inputs text[],
                                signal_delivered boolean, signal_input jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_outputs jsonb;
BEGIN
    EXECUTE format($sql$
        SELECT coalesce(jsonb_object_agg(s.step_name, cb_step_output($3, s.id, d.kind, s.output)), '{}')
        FROM %I s JOIN cb_flow_steps d ON d.flow_name = $3 AND d.step_name = s.step_name
        WHERE s.flow_run_id = $1 AND s.step_name = ANY($2) AND s.status = 'completed'$sql$, 'cb_s_' || flow)
        INTO v_outputs USING run_id, inputs, flow;
    RETURN v_outputs
        || jsonb_build_object('input', flow_input)
        || CASE WHEN signal_delivered THEN jsonb_build_object('signal', signal_input) ELSE '{}' END;
END;
$$;

CREATE OR REPLACE FUNCTION cb_flow_advance(flow text, run_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_runs text := 'cb_f_' || flow;
    v_steps text := 'cb_s_' || flow;
    v_run record;
    v_step record;
    v_changed boolean;
    v_output jsonb;
    v_found boolean;
    v_candidate text;
    v_remaining integer;
    v_spawned text;
BEGIN
    EXECUTE format('SELECT id, input, status, remaining_steps, visible_at FROM %I WHERE id = $1', v_runs)
        INTO v_run USING run_id;
    IF v_run.status <> 'started' THEN
        RETURN;
    END IF;

    LOOP
        v_changed := false;
        FOR v_step IN EXECUTE format($sql$
            SELECT s.id, s.step_name, s.status, s.signal_delivered, s.signal_input, s.visible_at, s.priority,
                   d.signal, d.condition_parsed, d.inputs, d.dependents, d.kind, d.map_input, d.map_source
            FROM %I s JOIN cb_flow_steps d ON d.flow_name = $2 AND d.step_name = s.step_name
            WHERE s.flow_run_id = $1 AND s.remaining_dependencies = 0
              AND s.status IN ('waiting_for_dependencies', 'waiting_for_signal')
            ORDER BY s.position$sql$, v_steps) USING run_id, flow
        LOOP
            IF v_step.signal AND NOT v_step.signal_delivered THEN
                IF v_step.status <> 'waiting_for_signal' THEN
                    EXECUTE format('UPDATE %I SET status = ''waiting_for_signal'' WHERE id = $1', v_steps)
                        USING v_step.id;
                END IF;
                CONTINUE;
            END IF;

            IF v_step.condition_parsed IS NOT NULL AND NOT cb_eval_condition(
                v_step.condition_parsed,
                cb_step_context(flow, run_id, v_run.input, v_step.inputs, v_step.signal_delivered, v_step.signal_input)
            ) THEN
                EXECUTE format($sql$
                    UPDATE %I SET status = 'skipped', skipped_at = clock_timestamp() WHERE id = $1$sql$, v_steps)
                    USING v_step.id;
                PERFORM cb_flow_resolve(flow, run_id, v_step.dependents);
                v_changed := true;
            ELSIF v_step.kind = 'mapper' THEN
                v_spawned := cb_flow_spawn_map(flow, run_id, v_run.input, v_step.id, v_step.step_name,
                                               v_step.map_input, v_step.map_source, v_step.visible_at,
                                               v_step.priority);
                IF v_spawned = 'failed' THEN
                    RETURN;
                ELSIF v_spawned = 'completed' THEN
                    PERFORM cb_flow_resolve(flow, run_id, v_step.dependents);
                    v_changed := true;
                END IF;
            ELSE
                EXECUTE format($sql$
                    UPDATE %I SET status = 'queued', visible_at = greatest(visible_at, clock_timestamp())
                    WHERE id = $1$sql$, v_steps)
                    USING v_step.id;
                PERFORM cb_wake('s', flow || '.' || v_step.step_name, v_step.visible_at);
            END IF;
        END LOOP;
        EXIT WHEN NOT v_changed;
    END LOOP;

    EXECUTE format('SELECT remaining_steps FROM %I WHERE id = $1', v_runs) INTO v_remaining USING run_id;
    IF v_remaining > 0 THEN
        RETURN;
    END IF;

    -- Every step is resolved: the output is that of the first completed step
    -- in the output priority.
    v_found := false;
    FOREACH v_candidate IN ARRAY (SELECT output_priority FROM cb_flows WHERE name = flow) LOOP
        v_output := NULL;
        -- NOTE: EXECUTE does not set FOUND; a completed step's output is
        -- never SQL NULL (JSON null is the jsonb value 'null').
        EXECUTE format($sql$
            SELECT cb_step_output($3, s.id, d.kind, s.output)
            FROM %I s JOIN cb_flow_steps d ON d.flow_name = $3 AND d.step_name = s.step_name
            WHERE s.flow_run_id = $1 AND s.step_name = $2 AND s.status = 'completed'$sql$, v_steps)
            INTO v_output USING run_id, v_candidate, flow;
        IF v_output IS NOT NULL THEN
            v_found := true;
            EXIT;
        END IF;
    END LOOP;

    IF v_found THEN
        EXECUTE format($sql$
            UPDATE %I SET status = 'completed', output = $2, completed_at = clock_timestamp() WHERE id = $1$sql$, v_runs)
            USING run_id, v_output;
    ELSE
        PERFORM cb_flow_mark_failed(flow, run_id, 'no output candidate produced output', NULL, NULL, NULL, NULL);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION cb_flow_mark_failed(flow text, run_id bigint, error_message text, step_name text,
                                    step_input jsonb, step_signal jsonb, step_attempts integer)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_has_on_fail boolean;
BEGIN
    SELECT f.has_on_fail INTO v_has_on_fail FROM cb_flows f WHERE f.name = flow;
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'failed', error_message = $2, failed_at = clock_timestamp(),
            failed_step_name = $3, failed_step_input = $4, failed_step_signal = $5, failed_step_attempts = $6,
            on_fail_status = CASE WHEN $7 THEN 'queued' END,
            on_fail_visible_at = CASE WHEN $7 THEN clock_timestamp() END
        WHERE id = $1 AND status = 'started'$sql$, 'cb_f_' || flow)
        USING run_id, error_message, step_name, step_input, step_signal, step_attempts, v_has_on_fail;
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'failed', failed_at = clock_timestamp(), error_message = coalesce(error_message, $2)
        WHERE flow_run_id = $1
          AND status IN ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'started', 'waiting_for_map_tasks')$sql$,
        'cb_s_' || flow)
        USING run_id, error_message;
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'failed', done = true, running = false, failed_at = clock_timestamp(),
            error_message = coalesce(error_message, $2)
        WHERE flow_run_id = $1 AND NOT done$sql$, 'cb_m_' || flow)
        USING run_id, error_message;
    PERFORM pg_notify(cb_wake_channel(), 'fx|' || flow || '|' || run_id);
    IF v_has_on_fail THEN
        PERFORM cb_wake('ff', flow, NULL);
    END IF;
END;
$$;

-- NOTE: as in cb_claim_map_tasks, bitmap scans are off and the run check is
-- a scalar subquery, so stale statistics cannot turn the claim into a read
-- and sort of every claimable step run.
CREATE OR REPLACE FUNCTION cb_claim_steps(flow text, step text, quantity integer, hide_for integer)
RETURNS SETOF cb_claimed_step
LANGUAGE plpgsql SET enable_bitmapscan = off AS $$
DECLARE
    v_runs text := cb_flow_table(flow);
    v_inputs text[];
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM cb_check_positive('quantity', quantity);
    PERFORM cb_check_positive('hide_for', hide_for);
    SELECT CASE WHEN d.kind = 'reducer' THEN '{}' ELSE d.inputs END INTO v_inputs FROM cb_flow_steps d WHERE d.flow_name = flow AND d.step_name = step;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'catbird: flow "%" has no step "%"', flow, step
            USING ERRCODE = 'CB001';
    END IF;

    -- NOTE: SKIP LOCKED is load-bearing, as for task claims.
    RETURN QUERY EXECUTE format($sql$
        WITH selected AS (
            SELECT s.id FROM %1$I s
            WHERE s.step_name = $1 AND s.status IN ('queued', 'started') AND s.visible_at <= $2
              AND (SELECT r.status = 'started' AND (r.expires_at IS NULL OR r.expires_at > $2)
                   FROM %2$I r WHERE r.id = s.flow_run_id)
            ORDER BY s.priority DESC, s.id
            LIMIT $3
            FOR UPDATE OF s SKIP LOCKED
        ), claimed AS (
            UPDATE %1$I s
            SET status = 'started', started_at = $2, attempts = s.attempts + 1, running = true,
                visible_at = $2 + make_interval(secs => $4 / 1000.0)
            FROM selected x
            WHERE s.id = x.id
            RETURNING s.id, s.flow_run_id, s.attempts, s.priority, s.signal_input, s.started_at
        )
        SELECT c.id, c.flow_run_id, c.attempts, c.priority, r.input, c.signal_input,
               CASE WHEN cardinality($5) = 0 THEN '{}'::jsonb ELSE
               (SELECT coalesce(jsonb_object_agg(d.step_name, cb_step_output($6, d.id, k.kind, d.output)), '{}')
                FROM %1$I d JOIN cb_flow_steps k ON k.flow_name = $6 AND k.step_name = d.step_name
                WHERE d.flow_run_id = c.flow_run_id AND d.step_name = ANY($5) AND d.status = 'completed') END,
               c.started_at
        FROM claimed c JOIN %2$I r ON r.id = c.flow_run_id
        ORDER BY c.priority DESC, c.id$sql$, 'cb_s_' || flow, v_runs)
        USING step, v_now, quantity, hide_for, v_inputs, flow;
END;
$$;

CREATE OR REPLACE FUNCTION cb_cancel_flow(name text, id bigint, reason text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_runs text := cb_flow_table(name);
    v_status text := cb_flow_lock_run(name, id);
BEGIN
    IF v_status IS NULL THEN
        RETURN false;
    END IF;
    IF v_status <> 'started' THEN
        RETURN true;
    END IF;

    EXECUTE format($sql$
        UPDATE %I SET status = 'canceling', cancel_reason = nullif($2, ''), cancel_requested_at = clock_timestamp()
        WHERE id = $1$sql$, v_runs)
        USING id, reason;
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', canceled_at = clock_timestamp()
        WHERE flow_run_id = $1
          AND status IN ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'waiting_for_map_tasks')$sql$,
        'cb_s_' || name)
        USING id;
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', done = true, running = false, canceled_at = clock_timestamp()
        WHERE flow_run_id = $1 AND NOT done$sql$, 'cb_m_' || name)
        USING id;
    PERFORM pg_notify(cb_wake_channel(), 'fx|' || name || '|' || id);
    PERFORM cb_flow_finish_cancel(name, id);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION cb_complete_flow_early(flow text, run_id bigint, output jsonb, reason text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    PERFORM cb_flow_table(flow);
    v_status := cb_flow_lock_run(flow, run_id);
    IF v_status IS DISTINCT FROM 'started' THEN
        RETURN false;
    END IF;
    EXECUTE format($sql$
        UPDATE %I SET status = 'completed', output = coalesce($2, 'null'::jsonb), completed_at = clock_timestamp(),
                      cancel_reason = nullif($3, '')
        WHERE id = $1$sql$, 'cb_f_' || flow)
        USING run_id, output, reason;
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', canceled_at = clock_timestamp()
        WHERE flow_run_id = $1
          AND status IN ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'started', 'waiting_for_map_tasks')$sql$,
        'cb_s_' || flow)
        USING run_id;
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', done = true, running = false, canceled_at = clock_timestamp()
        WHERE flow_run_id = $1 AND NOT done$sql$, 'cb_m_' || flow)
        USING run_id;
    PERFORM pg_notify(cb_wake_channel(), 'fx|' || flow || '|' || run_id);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION cb_get_flow_run_steps(flow text, run_id bigint) RETURNS SETOF cb_step_run
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    RETURN QUERY EXECUTE format($sql$
        SELECT s.id, s.flow_run_id, s.step_name, s.position, s.status, s.priority, s.attempts,
               CASE WHEN s.status = 'completed' THEN cb_step_output($3, s.id, d.kind, s.output) ELSE s.output END,
               s.error_message, s.signal_input, s.created_at, s.visible_at, s.started_at, s.completed_at,
               s.failed_at, s.skipped_at, s.canceled_at
        FROM %I s JOIN cb_flow_steps d ON d.flow_name = $3 AND d.step_name = s.step_name
        WHERE s.flow_run_id = $1 ORDER BY s.position$sql$, 'cb_s_' || flow)
        USING run_id, NULL::text, flow;
END;
$$;

CREATE OR REPLACE FUNCTION cb_get_flow_step(flow text, run_id bigint, step text) RETURNS SETOF cb_step_run
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    RETURN QUERY EXECUTE format($sql$
        SELECT s.id, s.flow_run_id, s.step_name, s.position, s.status, s.priority, s.attempts,
               CASE WHEN s.status = 'completed' THEN cb_step_output($3, s.id, d.kind, s.output) ELSE s.output END,
               s.error_message, s.signal_input, s.created_at, s.visible_at, s.started_at, s.completed_at,
               s.failed_at, s.skipped_at, s.canceled_at
        FROM %I s JOIN cb_flow_steps d ON d.flow_name = $3 AND d.step_name = s.step_name
        WHERE s.flow_run_id = $1 AND s.step_name = $2$sql$, 'cb_s_' || flow)
        USING run_id, step, flow;
END;
$$;

-- Describes the first difference between two normalised definitions (see
-- version 4), including the fan-out fields.
CREATE OR REPLACE FUNCTION cb_flow_definition_difference(stored jsonb, given jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_key text;
    v_stored_names text[];
    v_given_names text[];
    v_stored_step jsonb;
    v_given_step jsonb;
BEGIN
    IF stored = given THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(s ->> 'name') INTO v_stored_names FROM jsonb_array_elements(stored -> 'steps') s;
    SELECT array_agg(s ->> 'name') INTO v_given_names FROM jsonb_array_elements(given -> 'steps') s;
    IF v_stored_names IS DISTINCT FROM v_given_names THEN
        RETURN format('the steps are [%s] in the database but [%s] here',
                      array_to_string(v_stored_names, ', '), array_to_string(v_given_names, ', '));
    END IF;

    FOREACH v_key IN ARRAY ARRAY['description', 'output_priority', 'retention_period'] LOOP
        IF stored -> v_key IS DISTINCT FROM given -> v_key THEN
            RETURN format('%s is %s in the database but %s here',
                          v_key, coalesce(stored ->> v_key, 'null'), coalesce(given ->> v_key, 'null'));
        END IF;
    END LOOP;

    FOR v_stored_step, v_given_step IN
        SELECT s.value, g.value
        FROM jsonb_array_elements(stored -> 'steps') WITH ORDINALITY AS s(value, ord)
        JOIN jsonb_array_elements(given -> 'steps') WITH ORDINALITY AS g(value, ord) USING (ord)
    LOOP
        FOREACH v_key IN ARRAY ARRAY['description', 'depends_on', 'condition', 'signal', 'kind',
                                    'map_input', 'map_source', 'reduce_source'] LOOP
            IF v_stored_step -> v_key IS DISTINCT FROM v_given_step -> v_key THEN
                RETURN format('step "%s" has %s %s in the database but %s here', v_given_step ->> 'name', v_key,
                              coalesce(v_stored_step ->> v_key, 'null'), coalesce(v_given_step ->> v_key, 'null'));
            END IF;
        END LOOP;
    END LOOP;
    RETURN 'the definitions differ';
END;
$$;

-- Records a failed step attempt (see version 4). A generator step that
-- will be retried loses the items of the failed attempt.
CREATE OR REPLACE FUNCTION cb_fail_step(flow text, id bigint, attempt integer, error_message text,
                             retry_delay integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record := cb_flow_lock_step(flow, id, attempt);
    v_message text := coalesce(nullif(error_message, ''), 'handler failed without an error message');
    v_step record;
BEGIN
    PERFORM cb_check_non_negative('retry_delay', retry_delay);
    IF v_lock.run_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_lock.run_status = 'canceling' THEN
        EXECUTE format('UPDATE %I SET status = ''canceled'', canceled_at = clock_timestamp() WHERE id = $1', 'cb_s_' || flow)
            USING id;
        PERFORM cb_flow_finish_cancel(flow, v_lock.run_id);
        RETURN 'canceled';
    END IF;
    IF v_lock.run_status <> 'started' THEN
        RETURN NULL;
    END IF;

    IF retry_delay IS NOT NULL THEN
        EXECUTE format($sql$
            UPDATE %I SET error_message = $2, running = false,
                          visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
            WHERE id = $1
            RETURNING step_name$sql$, 'cb_s_' || flow)
            INTO v_step USING id, v_message, retry_delay;
        -- A generator's retry yields from the start: the items of the failed
        -- attempt are discarded now, so none of them runs or fails the run
        -- meanwhile.
        IF (SELECT d.kind FROM cb_flow_steps d WHERE d.flow_name = flow AND d.step_name = v_step.step_name)
           = 'generator' THEN
            EXECUTE format('DELETE FROM %I WHERE step_run_id = $1', 'cb_m_' || flow) USING id;
            EXECUTE format($sql$
                UPDATE %I SET items_total = 0, items_remaining = 0, generator_done = false WHERE id = $1$sql$,
                'cb_s_' || flow)
                USING id;
        END IF;
        PERFORM cb_wake('s', flow || '.' || v_step.step_name,
                        clock_timestamp() + make_interval(secs => retry_delay / 1000.0));
        RETURN 'started';
    END IF;

    EXECUTE format($sql$
        UPDATE %I SET status = 'failed', error_message = $2, failed_at = clock_timestamp()
        WHERE id = $1
        RETURNING step_name, signal_input, attempts$sql$, 'cb_s_' || flow)
        INTO v_step USING id, v_message;
    PERFORM cb_flow_mark_failed(flow, v_lock.run_id, v_message, v_step.step_name,
        (SELECT input FROM cb_get_flow_run(flow, v_lock.run_id)), v_step.signal_input, v_step.attempts);
    RETURN 'failed';
END;
$$;

-- Runs a collection pass (see version 5); the items of expired flow runs
-- are finished with them.
CREATE OR REPLACE FUNCTION cb_gc() RETURNS cb_gc_report
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

        -- The items of an expired run are finished with it, so they leave
        -- the claim index instead of slowing every later claim.
        EXECUTE format($sql$
            WITH expired AS (
                UPDATE %I SET status = 'expired', expired_at = now()
                WHERE status IN ('started', 'canceling') AND expires_at <= now()
                RETURNING id
            ), items AS (
                UPDATE %I m SET status = 'canceled', done = true, running = false, canceled_at = now()
                WHERE m.flow_run_id IN (SELECT id FROM expired) AND NOT m.done
            )
            SELECT count(*) FROM expired$sql$, 'cb_f_' || v_name, 'cb_m_' || v_name)
            INTO v_count;
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

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_flows ORDER BY name LOOP
        PERFORM cb_flow_add_fanout_tables(v_name);
    END LOOP;
END;
$$;

-- migrate:down

DO $$
DECLARE
    v_name text;
BEGIN
    SELECT flow_name INTO v_name FROM cb_flow_steps WHERE kind <> 'normal' ORDER BY flow_name LIMIT 1;
    IF v_name IS NOT NULL THEN
        RAISE EXCEPTION 'catbird: flow "%" has map, generator or reducer steps, which version 5 cannot run; delete it before migrating down', v_name
            USING ERRCODE = 'CB002';
    END IF;
    FOR v_name IN SELECT name FROM cb_flows ORDER BY name LOOP
        EXECUTE format('DROP TABLE %I', 'cb_m_' || v_name);
        EXECUTE format('ALTER TABLE %I DROP COLUMN items_total, DROP COLUMN items_remaining, DROP COLUMN generator_done',
                       'cb_s_' || v_name);
    END LOOP;
END;
$$;
DROP FUNCTION cb_read_map_outputs(text, bigint, text, integer, integer);
DROP FUNCTION cb_complete_generator_step(text, bigint, integer);
DROP FUNCTION cb_spawn_generator_map_tasks(text, bigint, integer, jsonb);
DROP FUNCTION cb_start_generator_step(text, bigint, integer);
DROP FUNCTION cb_release_map_task(text, bigint, integer, integer);
DROP FUNCTION cb_fail_map_task(text, bigint, integer, text, integer);
DROP FUNCTION cb_flow_lock_map_task(text, bigint, integer);
DROP FUNCTION cb_complete_map_tasks(text, bigint[], integer[], jsonb[]);
DROP FUNCTION cb_hide_map_tasks(text, bigint[], integer);
DROP FUNCTION cb_claim_map_tasks(text, text, integer, integer);
DROP TYPE cb_claimed_map_task;
DROP FUNCTION cb_flow_finish_fanout(text, bigint, bigint);
DROP FUNCTION cb_flow_spawn_map(text, bigint, jsonb, bigint, text, boolean, text, timestamptz, integer);
DROP FUNCTION cb_step_output(text, bigint, text, jsonb);
DROP FUNCTION cb_flow_add_fanout_tables(text);

-- The version 5 definitions of the functions replaced above.

CREATE OR REPLACE FUNCTION cb_normalize_flow_steps(flow text, steps jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_step jsonb;
    v_dep jsonb;
    v_name text;
    v_dep_name text;
    v_names text[] := '{}';
    v_result jsonb := '[]';
    v_deps jsonb;
    v_dep_names text[];
    v_kind text;
    v_condition text;
    v_parsed jsonb;
    v_root text;
    v_key text;
BEGIN
    IF steps IS NULL OR jsonb_typeof(steps) <> 'array' THEN
        PERFORM cb_flow_definition_error(flow, 'steps must be a JSON array');
    END IF;
    IF jsonb_array_length(steps) = 0 THEN
        PERFORM cb_flow_definition_error(flow, 'a flow needs at least one step');
    END IF;

    -- Names first, so dependencies may refer to steps defined later.
    FOR v_step IN SELECT value FROM jsonb_array_elements(steps) LOOP
        IF jsonb_typeof(v_step) <> 'object' THEN
            PERFORM cb_flow_definition_error(flow, format('each step must be a JSON object, got %s', v_step));
        END IF;
        IF jsonb_typeof(v_step -> 'name') IS DISTINCT FROM 'string' THEN
            PERFORM cb_flow_definition_error(flow, format('each step needs a "name" string, got %s', v_step));
        END IF;
        v_name := v_step ->> 'name';
        PERFORM cb_check_name('step', v_name);
        IF v_name IN ('input', 'signal') THEN
            PERFORM cb_flow_definition_error(flow,
                format('step name "%s" is reserved (conditions use input.* and signal.*)', v_name));
        END IF;
        IF v_name = ANY(v_names) THEN
            PERFORM cb_flow_definition_error(flow, format('step "%s" is defined twice', v_name));
        END IF;
        v_names := v_names || v_name;
    END LOOP;

    FOR v_step IN SELECT value FROM jsonb_array_elements(steps) LOOP
        v_name := v_step ->> 'name';
        FOR v_key IN SELECT jsonb_object_keys(v_step) LOOP
            IF v_key NOT IN ('name', 'description', 'depends_on', 'condition', 'signal', 'kind') THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'step "%s" has an unknown field "%s" (expected name, description, depends_on, condition, signal, kind)',
                    v_name, v_key));
            END IF;
        END LOOP;

        v_kind := coalesce(v_step ->> 'kind', 'normal');
        IF v_kind <> 'normal' THEN
            PERFORM cb_flow_definition_error(flow, format(
                'step "%s" has kind "%s"; only "normal" steps are supported', v_name, v_kind));
        END IF;
        IF v_step ? 'signal' AND jsonb_typeof(v_step -> 'signal') <> 'boolean' THEN
            PERFORM cb_flow_definition_error(flow, format('step "%s": signal must be true or false', v_name));
        END IF;

        v_deps := '[]';
        v_dep_names := '{}';
        IF v_step ? 'depends_on' AND jsonb_typeof(v_step -> 'depends_on') <> 'null' THEN
            IF jsonb_typeof(v_step -> 'depends_on') <> 'array' THEN
                PERFORM cb_flow_definition_error(flow, format('step "%s": depends_on must be a JSON array', v_name));
            END IF;
            FOR v_dep IN SELECT value FROM jsonb_array_elements(v_step -> 'depends_on') LOOP
                IF jsonb_typeof(v_dep) = 'string' THEN
                    v_dep := jsonb_build_object('name', v_dep #>> '{}');
                ELSIF jsonb_typeof(v_dep) <> 'object' THEN
                    PERFORM cb_flow_definition_error(flow, format(
                        'step "%s": each dependency must be a step name or an object with "name", got %s', v_name, v_dep));
                END IF;
                v_dep_name := v_dep ->> 'name';
                IF v_dep_name IS NULL THEN
                    PERFORM cb_flow_definition_error(flow, format('step "%s": a dependency has no name', v_name));
                END IF;
                IF v_dep_name = v_name THEN
                    PERFORM cb_flow_definition_error(flow, format('step "%s" depends on itself', v_name));
                END IF;
                IF NOT v_dep_name = ANY(v_names) THEN
                    PERFORM cb_flow_definition_error(flow, format(
                        'step "%s" depends on "%s", which is not a step of the flow', v_name, v_dep_name));
                END IF;
                IF v_dep_name = ANY(v_dep_names) THEN
                    PERFORM cb_flow_definition_error(flow, format(
                        'step "%s" lists the dependency "%s" twice', v_name, v_dep_name));
                END IF;
                v_dep_names := v_dep_names || v_dep_name;
                v_deps := v_deps || jsonb_build_array(jsonb_build_object(
                    'name', v_dep_name,
                    'optional', coalesce((v_dep ->> 'optional')::boolean, false),
                    'ignore_output', coalesce((v_dep ->> 'ignore_output')::boolean, false)));
            END LOOP;
        END IF;

        v_condition := nullif(btrim(v_step ->> 'condition'), '');
        v_parsed := NULL;
        IF v_condition IS NOT NULL THEN
            BEGIN
                v_parsed := cb_parse_condition(v_condition);
            EXCEPTION WHEN SQLSTATE 'CB002' THEN
                PERFORM cb_flow_definition_error(flow, format('the condition of step "%s" is invalid: %s',
                    v_name, regexp_replace(SQLERRM, '^catbird: ', '')));
            END;
            v_root := v_parsed -> 'path' ->> 0;
            IF v_root = 'signal' AND NOT coalesce((v_step ->> 'signal')::boolean, false) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'the condition of step "%s" reads signal.*, but the step does not wait for a signal', v_name));
            ELSIF v_root <> 'input' AND v_root <> 'signal' AND NOT v_root = ANY(v_dep_names) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'the condition of step "%s" reads "%s", which is not one of its dependencies (%s)',
                    v_name, v_root, coalesce(nullif(array_to_string(v_dep_names, ', '), ''), 'none')));
            ELSIF v_root = ANY(v_dep_names) AND EXISTS (
                SELECT 1 FROM jsonb_array_elements(v_deps) d
                WHERE d ->> 'name' = v_root AND (d ->> 'ignore_output')::boolean
            ) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'the condition of step "%s" reads "%s", whose output the step ignores', v_name, v_root));
            END IF;
        END IF;

        v_result := v_result || jsonb_build_array(jsonb_build_object(
            'name', v_name,
            'description', nullif(v_step ->> 'description', ''),
            'depends_on', v_deps,
            'condition', v_condition,
            'signal', coalesce((v_step ->> 'signal')::boolean, false),
            'kind', v_kind));
    END LOOP;

    -- A step whose dependency has a condition must declare it optional: the
    -- dependency may be skipped, and the step then runs without its output.
    FOR v_step IN SELECT value FROM jsonb_array_elements(v_result) LOOP
        FOR v_dep IN SELECT value FROM jsonb_array_elements(v_step -> 'depends_on') LOOP
            IF NOT (v_dep ->> 'optional')::boolean AND NOT (v_dep ->> 'ignore_output')::boolean AND EXISTS (
                SELECT 1 FROM jsonb_array_elements(v_result) s
                WHERE s ->> 'name' = v_dep ->> 'name' AND s ->> 'condition' IS NOT NULL
            ) THEN
                PERFORM cb_flow_definition_error(flow, format(
                    'step "%s" depends on "%s", which has a condition and may be skipped; declare the dependency optional',
                    v_step ->> 'name', v_dep ->> 'name'));
            END IF;
        END LOOP;
    END LOOP;

    RETURN v_result;
END;
$$;

CREATE OR REPLACE FUNCTION cb_create_flow(
    name text,
    steps jsonb,
    description text DEFAULT NULL,
    output_priority text[] DEFAULT NULL,
    retention_period bigint DEFAULT NULL,
    has_on_fail boolean DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_flow text := cb_create_flow.name;
    v_steps jsonb;
    v_cycle text;
    v_terminal text[];
    v_priority text[];
    v_entry text;
    v_definition jsonb;
    v_stored jsonb;
    v_difference text;
    v_step jsonb;
    v_position integer := 0;
BEGIN
    PERFORM cb_check_name('flow', v_flow);
    PERFORM cb_check_period('retention_period', retention_period);
    v_steps := cb_normalize_flow_steps(v_flow, steps);

    v_cycle := cb_find_flow_cycle(v_steps);
    IF v_cycle IS NOT NULL THEN
        PERFORM cb_flow_definition_error(v_flow, format('the dependencies form a cycle: %s', v_cycle));
    END IF;

    SELECT array_agg(s ->> 'name' ORDER BY o) INTO v_terminal
    FROM jsonb_array_elements(v_steps) WITH ORDINALITY AS t(s, o)
    WHERE NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(v_steps) other, jsonb_array_elements(other -> 'depends_on') d
        WHERE d ->> 'name' = s ->> 'name');

    IF output_priority IS NULL THEN
        v_priority := v_terminal;
    ELSE
        IF cardinality(output_priority) = 0 THEN
            PERFORM cb_flow_definition_error(v_flow, 'output_priority is empty; omit it to use the final steps');
        END IF;
        FOREACH v_entry IN ARRAY output_priority LOOP
            IF v_entry IS NULL OR NOT EXISTS (SELECT 1 FROM jsonb_array_elements(v_steps) s WHERE s ->> 'name' = v_entry) THEN
                PERFORM cb_flow_definition_error(v_flow, format('output_priority names "%s", which is not a step', v_entry));
            END IF;
        END LOOP;
        IF (SELECT count(DISTINCT e) FROM unnest(output_priority) e) <> cardinality(output_priority) THEN
            PERFORM cb_flow_definition_error(v_flow, 'output_priority lists a step twice');
        END IF;
        FOREACH v_entry IN ARRAY v_terminal LOOP
            IF NOT v_entry = ANY(output_priority) THEN
                PERFORM cb_flow_definition_error(v_flow, format(
                    'output_priority must include every final step; "%s" is missing', v_entry));
            END IF;
        END LOOP;
        v_priority := output_priority;
    END IF;

    v_definition := jsonb_build_object(
        'description', nullif(description, ''),
        'output_priority', to_jsonb(v_priority),
        'retention_period', coalesce(retention_period, 0),
        'steps', v_steps);

    -- NOTE: serialises concurrent creators of one flow.
    PERFORM pg_advisory_xact_lock(hashtext('cb_flow:' || v_flow));
    SELECT f.definition INTO v_stored FROM cb_flows f WHERE f.name = v_flow;
    IF FOUND THEN
        v_difference := cb_flow_definition_difference(v_stored, v_definition);
        IF v_difference IS NOT NULL THEN
            RAISE EXCEPTION 'catbird: flow "%" already exists with a different definition: %; delete it first or use a new name',
                v_flow, v_difference
                USING ERRCODE = 'CB002';
        END IF;
        IF has_on_fail IS NOT NULL THEN
            UPDATE cb_flows f SET has_on_fail = cb_create_flow.has_on_fail WHERE f.name = v_flow;
        END IF;
        RETURN;
    END IF;

    INSERT INTO cb_flows (name, description, output_priority, retention_period, has_on_fail, definition)
    VALUES (v_flow, nullif(description, ''), v_priority, coalesce(retention_period, 0),
            coalesce(has_on_fail, false), v_definition);

    FOR v_step IN SELECT value FROM jsonb_array_elements(v_steps) LOOP
        v_position := v_position + 1;
        INSERT INTO cb_flow_steps (flow_name, step_name, position, description, kind, signal, condition,
                                   condition_parsed, depends_on, inputs, optional, dependents)
        SELECT v_flow, v_step ->> 'name', v_position, v_step ->> 'description', v_step ->> 'kind',
               (v_step ->> 'signal')::boolean, v_step ->> 'condition',
               CASE WHEN v_step ->> 'condition' IS NOT NULL THEN cb_parse_condition(v_step ->> 'condition') END,
               coalesce((SELECT array_agg(d ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_step -> 'depends_on') WITH ORDINALITY AS x(d, o)), '{}'),
               coalesce((SELECT array_agg(d ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_step -> 'depends_on') WITH ORDINALITY AS x(d, o)
                         WHERE NOT (d ->> 'ignore_output')::boolean), '{}'),
               coalesce((SELECT array_agg(d ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_step -> 'depends_on') WITH ORDINALITY AS x(d, o)
                         WHERE (d ->> 'optional')::boolean), '{}'),
               coalesce((SELECT array_agg(other ->> 'name' ORDER BY o)
                         FROM jsonb_array_elements(v_steps) WITH ORDINALITY AS x(other, o),
                              jsonb_array_elements(other -> 'depends_on') d
                         WHERE d ->> 'name' = v_step ->> 'name'), '{}');
    END LOOP;

    EXECUTE format($sql$
        CREATE TABLE %I (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            concurrency_key text,
            input jsonb NOT NULL,
            headers jsonb,
            priority integer NOT NULL DEFAULT 0,
            status text NOT NULL DEFAULT 'started' CHECK (status IN
                ('started', 'canceling', 'completed', 'failed', 'canceled', 'expired')),
            output jsonb,
            error_message text,
            cancel_reason text,
            failed_step_name text,
            failed_step_input jsonb,
            failed_step_signal jsonb,
            failed_step_attempts integer,
            remaining_steps integer NOT NULL,
            visible_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            started_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz,
            failed_at timestamptz,
            canceled_at timestamptz,
            cancel_requested_at timestamptz,
            expired_at timestamptz,
            on_fail_status text CHECK (on_fail_status IN ('queued', 'started', 'completed', 'failed')),
            on_fail_attempts integer NOT NULL DEFAULT 0,
            on_fail_error text,
            on_fail_visible_at timestamptz,
            CHECK (status <> 'failed' OR error_message <> '')
        )$sql$, 'cb_f_' || v_flow);
    EXECUTE format($sql$
        CREATE UNIQUE INDEX ON %I (concurrency_key)
        WHERE concurrency_key IS NOT NULL AND status = 'started'$sql$, 'cb_f_' || v_flow);
    EXECUTE format('CREATE INDEX ON %I (id) WHERE on_fail_visible_at IS NOT NULL', 'cb_f_' || v_flow);

    EXECUTE format($sql$
        CREATE TABLE %I (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            flow_run_id bigint NOT NULL REFERENCES %I (id) ON DELETE CASCADE,
            step_name text NOT NULL,
            position integer NOT NULL,
            status text NOT NULL CHECK (status IN
                ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'started',
                 'waiting_for_map_tasks', 'completed', 'failed', 'skipped', 'canceled')),
            remaining_dependencies integer NOT NULL,
            -- True from a claim until the attempt ends; a started step that
            -- is not running waits for a retry.
            running boolean NOT NULL DEFAULT false,
            signal_delivered boolean NOT NULL DEFAULT false,
            signal_input jsonb,
            priority integer NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            output jsonb,
            error_message text,
            created_at timestamptz NOT NULL DEFAULT now(),
            visible_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            completed_at timestamptz,
            failed_at timestamptz,
            skipped_at timestamptz,
            canceled_at timestamptz,
            UNIQUE (flow_run_id, step_name)
        )$sql$, 'cb_s_' || v_flow, 'cb_f_' || v_flow);
    -- NOTE: the claim index holds only claimable step runs.
    EXECUTE format($sql$
        CREATE INDEX ON %I (step_name, priority DESC, id) WHERE status IN ('queued', 'started')$sql$,
        'cb_s_' || v_flow);
END;
$$;

CREATE OR REPLACE FUNCTION cb_delete_flow(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM cb_check_name('flow', cb_delete_flow.name);
    PERFORM pg_advisory_xact_lock(hashtext('cb_flow:' || cb_delete_flow.name));
    DELETE FROM cb_flows f WHERE f.name = cb_delete_flow.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_s_' || cb_delete_flow.name);
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_f_' || cb_delete_flow.name);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION cb_step_context(flow text, run_id bigint, flow_input jsonb, inputs text[],
                                signal_delivered boolean, signal_input jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_outputs jsonb;
BEGIN
    EXECUTE format($sql$
        SELECT coalesce(jsonb_object_agg(step_name, output), '{}')
        FROM %I WHERE flow_run_id = $1 AND step_name = ANY($2) AND status = 'completed'$sql$, 'cb_s_' || flow)
        INTO v_outputs USING run_id, inputs;
    RETURN v_outputs
        || jsonb_build_object('input', flow_input)
        || CASE WHEN signal_delivered THEN jsonb_build_object('signal', signal_input) ELSE '{}' END;
END;
$$;

CREATE OR REPLACE FUNCTION cb_flow_advance(flow text, run_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_runs text := 'cb_f_' || flow;
    v_steps text := 'cb_s_' || flow;
    v_run record;
    v_step record;
    v_changed boolean;
    v_output jsonb;
    v_found boolean;
    v_candidate text;
    v_remaining integer;
BEGIN
    EXECUTE format('SELECT id, input, status, remaining_steps, visible_at FROM %I WHERE id = $1', v_runs)
        INTO v_run USING run_id;
    IF v_run.status <> 'started' THEN
        RETURN;
    END IF;

    LOOP
        v_changed := false;
        FOR v_step IN EXECUTE format($sql$
            SELECT s.id, s.step_name, s.status, s.signal_delivered, s.signal_input, s.visible_at,
                   d.signal, d.condition_parsed, d.inputs, d.dependents
            FROM %I s JOIN cb_flow_steps d ON d.flow_name = $2 AND d.step_name = s.step_name
            WHERE s.flow_run_id = $1 AND s.remaining_dependencies = 0
              AND s.status IN ('waiting_for_dependencies', 'waiting_for_signal')
            ORDER BY s.position$sql$, v_steps) USING run_id, flow
        LOOP
            IF v_step.signal AND NOT v_step.signal_delivered THEN
                IF v_step.status <> 'waiting_for_signal' THEN
                    EXECUTE format('UPDATE %I SET status = ''waiting_for_signal'' WHERE id = $1', v_steps)
                        USING v_step.id;
                END IF;
                CONTINUE;
            END IF;

            IF v_step.condition_parsed IS NOT NULL AND NOT cb_eval_condition(
                v_step.condition_parsed,
                cb_step_context(flow, run_id, v_run.input, v_step.inputs, v_step.signal_delivered, v_step.signal_input)
            ) THEN
                EXECUTE format($sql$
                    UPDATE %I SET status = 'skipped', skipped_at = clock_timestamp() WHERE id = $1$sql$, v_steps)
                    USING v_step.id;
                PERFORM cb_flow_resolve(flow, run_id, v_step.dependents);
                v_changed := true;
            ELSE
                EXECUTE format($sql$
                    UPDATE %I SET status = 'queued', visible_at = greatest(visible_at, clock_timestamp())
                    WHERE id = $1$sql$, v_steps)
                    USING v_step.id;
                PERFORM cb_wake('s', flow || '.' || v_step.step_name, v_step.visible_at);
            END IF;
        END LOOP;
        EXIT WHEN NOT v_changed;
    END LOOP;

    EXECUTE format('SELECT remaining_steps FROM %I WHERE id = $1', v_runs) INTO v_remaining USING run_id;
    IF v_remaining > 0 THEN
        RETURN;
    END IF;

    -- Every step is resolved: the output is that of the first completed step
    -- in the output priority.
    v_found := false;
    FOREACH v_candidate IN ARRAY (SELECT output_priority FROM cb_flows WHERE name = flow) LOOP
        v_output := NULL;
        -- NOTE: EXECUTE does not set FOUND; a completed step's output is
        -- never SQL NULL (JSON null is the jsonb value 'null').
        EXECUTE format('SELECT output FROM %I WHERE flow_run_id = $1 AND step_name = $2 AND status = ''completed''', v_steps)
            INTO v_output USING run_id, v_candidate;
        IF v_output IS NOT NULL THEN
            v_found := true;
            EXIT;
        END IF;
    END LOOP;

    IF v_found THEN
        EXECUTE format($sql$
            UPDATE %I SET status = 'completed', output = $2, completed_at = clock_timestamp() WHERE id = $1$sql$, v_runs)
            USING run_id, v_output;
    ELSE
        PERFORM cb_flow_mark_failed(flow, run_id, 'no output candidate produced output', NULL, NULL, NULL, NULL);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION cb_flow_mark_failed(flow text, run_id bigint, error_message text, step_name text,
                                    step_input jsonb, step_signal jsonb, step_attempts integer)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_has_on_fail boolean;
BEGIN
    SELECT f.has_on_fail INTO v_has_on_fail FROM cb_flows f WHERE f.name = flow;
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'failed', error_message = $2, failed_at = clock_timestamp(),
            failed_step_name = $3, failed_step_input = $4, failed_step_signal = $5, failed_step_attempts = $6,
            on_fail_status = CASE WHEN $7 THEN 'queued' END,
            on_fail_visible_at = CASE WHEN $7 THEN clock_timestamp() END
        WHERE id = $1 AND status = 'started'$sql$, 'cb_f_' || flow)
        USING run_id, error_message, step_name, step_input, step_signal, step_attempts, v_has_on_fail;
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'failed', failed_at = clock_timestamp(), error_message = coalesce(error_message, $2)
        WHERE flow_run_id = $1
          AND status IN ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'started', 'waiting_for_map_tasks')$sql$,
        'cb_s_' || flow)
        USING run_id, error_message;
    PERFORM pg_notify(cb_wake_channel(), 'fx|' || flow || '|' || run_id);
    IF v_has_on_fail THEN
        PERFORM cb_wake('ff', flow, NULL);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION cb_claim_steps(flow text, step text, quantity integer, hide_for integer)
RETURNS SETOF cb_claimed_step
LANGUAGE plpgsql AS $$
DECLARE
    v_runs text := cb_flow_table(flow);
    v_inputs text[];
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM cb_check_positive('quantity', quantity);
    PERFORM cb_check_positive('hide_for', hide_for);
    SELECT d.inputs INTO v_inputs FROM cb_flow_steps d WHERE d.flow_name = flow AND d.step_name = step;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'catbird: flow "%" has no step "%"', flow, step
            USING ERRCODE = 'CB001';
    END IF;

    -- NOTE: SKIP LOCKED is load-bearing, as for task claims.
    RETURN QUERY EXECUTE format($sql$
        WITH selected AS (
            SELECT s.id FROM %1$I s
            WHERE s.step_name = $1 AND s.status IN ('queued', 'started') AND s.visible_at <= $2
              AND EXISTS (SELECT 1 FROM %2$I r WHERE r.id = s.flow_run_id AND r.status = 'started'
                          AND (r.expires_at IS NULL OR r.expires_at > $2))
            ORDER BY s.priority DESC, s.id
            LIMIT $3
            FOR UPDATE OF s SKIP LOCKED
        ), claimed AS (
            UPDATE %1$I s
            SET status = 'started', started_at = $2, attempts = s.attempts + 1, running = true,
                visible_at = $2 + make_interval(secs => $4 / 1000.0)
            FROM selected x
            WHERE s.id = x.id
            RETURNING s.id, s.flow_run_id, s.attempts, s.priority, s.signal_input, s.started_at
        )
        SELECT c.id, c.flow_run_id, c.attempts, c.priority, r.input, c.signal_input,
               (SELECT coalesce(jsonb_object_agg(d.step_name, d.output), '{}')
                FROM %1$I d
                WHERE d.flow_run_id = c.flow_run_id AND d.step_name = ANY($5) AND d.status = 'completed'),
               c.started_at
        FROM claimed c JOIN %2$I r ON r.id = c.flow_run_id
        ORDER BY c.priority DESC, c.id$sql$, 'cb_s_' || flow, v_runs)
        USING step, v_now, quantity, hide_for, v_inputs;
END;
$$;

CREATE OR REPLACE FUNCTION cb_cancel_flow(name text, id bigint, reason text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_runs text := cb_flow_table(name);
    v_status text := cb_flow_lock_run(name, id);
BEGIN
    IF v_status IS NULL THEN
        RETURN false;
    END IF;
    IF v_status <> 'started' THEN
        RETURN true;
    END IF;

    EXECUTE format($sql$
        UPDATE %I SET status = 'canceling', cancel_reason = nullif($2, ''), cancel_requested_at = clock_timestamp()
        WHERE id = $1$sql$, v_runs)
        USING id, reason;
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', canceled_at = clock_timestamp()
        WHERE flow_run_id = $1
          AND status IN ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'waiting_for_map_tasks')$sql$,
        'cb_s_' || name)
        USING id;
    PERFORM pg_notify(cb_wake_channel(), 'fx|' || name || '|' || id);
    PERFORM cb_flow_finish_cancel(name, id);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION cb_complete_flow_early(flow text, run_id bigint, output jsonb, reason text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    PERFORM cb_flow_table(flow);
    v_status := cb_flow_lock_run(flow, run_id);
    IF v_status IS DISTINCT FROM 'started' THEN
        RETURN false;
    END IF;
    EXECUTE format($sql$
        UPDATE %I SET status = 'completed', output = coalesce($2, 'null'::jsonb), completed_at = clock_timestamp(),
                      cancel_reason = nullif($3, '')
        WHERE id = $1$sql$, 'cb_f_' || flow)
        USING run_id, output, reason;
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', canceled_at = clock_timestamp()
        WHERE flow_run_id = $1
          AND status IN ('waiting_for_dependencies', 'waiting_for_signal', 'queued', 'started', 'waiting_for_map_tasks')$sql$,
        'cb_s_' || flow)
        USING run_id;
    PERFORM pg_notify(cb_wake_channel(), 'fx|' || flow || '|' || run_id);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION cb_get_flow_run_steps(flow text, run_id bigint) RETURNS SETOF cb_step_run
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    RETURN QUERY EXECUTE format($sql$
        SELECT id, flow_run_id, step_name, position, status, priority, attempts, output, error_message,
               signal_input, created_at, visible_at, started_at, completed_at, failed_at, skipped_at, canceled_at
        FROM %I WHERE flow_run_id = $1 ORDER BY position$sql$, 'cb_s_' || flow)
        USING run_id;
END;
$$;

CREATE OR REPLACE FUNCTION cb_get_flow_step(flow text, run_id bigint, step text) RETURNS SETOF cb_step_run
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_flow_table(flow);
    RETURN QUERY EXECUTE format($sql$
        SELECT id, flow_run_id, step_name, position, status, priority, attempts, output, error_message,
               signal_input, created_at, visible_at, started_at, completed_at, failed_at, skipped_at, canceled_at
        FROM %I WHERE flow_run_id = $1 AND step_name = $2$sql$, 'cb_s_' || flow)
        USING run_id, step;
END;
$$;

CREATE OR REPLACE FUNCTION cb_gc() RETURNS cb_gc_report
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

CREATE OR REPLACE FUNCTION cb_fail_step(flow text, id bigint, attempt integer, error_message text,
                             retry_delay integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record := cb_flow_lock_step(flow, id, attempt);
    v_message text := coalesce(nullif(error_message, ''), 'handler failed without an error message');
    v_step record;
BEGIN
    PERFORM cb_check_non_negative('retry_delay', retry_delay);
    IF v_lock.run_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_lock.run_status = 'canceling' THEN
        EXECUTE format('UPDATE %I SET status = ''canceled'', canceled_at = clock_timestamp() WHERE id = $1', 'cb_s_' || flow)
            USING id;
        PERFORM cb_flow_finish_cancel(flow, v_lock.run_id);
        RETURN 'canceled';
    END IF;
    IF v_lock.run_status <> 'started' THEN
        RETURN NULL;
    END IF;

    IF retry_delay IS NOT NULL THEN
        EXECUTE format($sql$
            UPDATE %I SET error_message = $2, running = false,
                          visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
            WHERE id = $1
            RETURNING step_name$sql$, 'cb_s_' || flow)
            INTO v_step USING id, v_message, retry_delay;
        PERFORM cb_wake('s', flow || '.' || v_step.step_name,
                        clock_timestamp() + make_interval(secs => retry_delay / 1000.0));
        RETURN 'started';
    END IF;

    EXECUTE format($sql$
        UPDATE %I SET status = 'failed', error_message = $2, failed_at = clock_timestamp()
        WHERE id = $1
        RETURNING step_name, signal_input, attempts$sql$, 'cb_s_' || flow)
        INTO v_step USING id, v_message;
    PERFORM cb_flow_mark_failed(flow, v_lock.run_id, v_message, v_step.step_name,
        (SELECT input FROM cb_get_flow_run(flow, v_lock.run_id)), v_step.signal_input, v_step.attempts);
    RETURN 'failed';
END;
$$;

CREATE OR REPLACE FUNCTION cb_flow_definition_difference(stored jsonb, given jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_key text;
    v_stored_names text[];
    v_given_names text[];
    v_stored_step jsonb;
    v_given_step jsonb;
BEGIN
    IF stored = given THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(s ->> 'name') INTO v_stored_names FROM jsonb_array_elements(stored -> 'steps') s;
    SELECT array_agg(s ->> 'name') INTO v_given_names FROM jsonb_array_elements(given -> 'steps') s;
    IF v_stored_names IS DISTINCT FROM v_given_names THEN
        RETURN format('the steps are [%s] in the database but [%s] here',
                      array_to_string(v_stored_names, ', '), array_to_string(v_given_names, ', '));
    END IF;

    FOREACH v_key IN ARRAY ARRAY['description', 'output_priority', 'retention_period'] LOOP
        IF stored -> v_key IS DISTINCT FROM given -> v_key THEN
            RETURN format('%s is %s in the database but %s here',
                          v_key, coalesce(stored ->> v_key, 'null'), coalesce(given ->> v_key, 'null'));
        END IF;
    END LOOP;

    FOR v_stored_step, v_given_step IN
        SELECT s.value, g.value
        FROM jsonb_array_elements(stored -> 'steps') WITH ORDINALITY AS s(value, ord)
        JOIN jsonb_array_elements(given -> 'steps') WITH ORDINALITY AS g(value, ord) USING (ord)
    LOOP
        FOREACH v_key IN ARRAY ARRAY['description', 'depends_on', 'condition', 'signal', 'kind'] LOOP
            IF v_stored_step -> v_key IS DISTINCT FROM v_given_step -> v_key THEN
                RETURN format('step "%s" has %s %s in the database but %s here', v_given_step ->> 'name', v_key,
                              coalesce(v_stored_step ->> v_key, 'null'), coalesce(v_given_step ->> v_key, 'null'));
            END IF;
        END LOOP;
    END LOOP;
    RETURN 'the definitions differ';
END;
$$;

ALTER TABLE cb_flow_steps DROP COLUMN map_input, DROP COLUMN map_source, DROP COLUMN reduce_source;
