-- Version 3: task definitions, task runs, on-fail processing and workers.
--
-- Every task owns one table, cb_t_<name>, with one row per run. A run is
-- claimable while its status is queued or started; the claim index covers
-- only those rows, so finished history never lies in front of a claim. A
-- claimed run carries a lease in visible_at: a worker that dies leaves its
-- runs to be claimed again once the lease has passed.
--
-- Completion and failure take the attempt number the claim returned, so a
-- result from an attempt that lost its lease (and was claimed again) never
-- overwrites the run.
--
-- Wake-up payloads on cb_wake_channel(): 't|<task>|<epoch>' new or retried
-- runs, 'tf|<task>|' on-fail work, 'tx|<task>|<run id>' a run was canceled.

-- migrate:up

CREATE TABLE cb_tasks (
    name text PRIMARY KEY,
    description text,
    condition text,
    condition_parsed jsonb,
    retention_period bigint NOT NULL DEFAULT 0 CHECK (retention_period >= 0),
    has_on_fail boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One task run, as cb_get_task_run and cb_list_task_runs return it.
CREATE TYPE cb_task_run AS (
    id bigint,
    concurrency_key text,
    input jsonb,
    headers jsonb,
    priority integer,
    status text,
    attempts integer,
    output jsonb,
    error_message text,
    cancel_reason text,
    visible_at timestamptz,
    expires_at timestamptz,
    created_at timestamptz,
    started_at timestamptz,
    completed_at timestamptz,
    failed_at timestamptz,
    skipped_at timestamptz,
    canceled_at timestamptz,
    cancel_requested_at timestamptz,
    expired_at timestamptz,
    on_fail_status text,
    on_fail_attempts integer,
    on_fail_error text
);

-- A claimed run, as cb_claim_tasks returns it.
CREATE TYPE cb_claimed_task AS (
    id bigint,
    input jsonb,
    headers jsonb,
    priority integer,
    concurrency_key text,
    attempts integer,
    started_at timestamptz
);

-- A failed run awaiting its on-fail handler, as cb_claim_task_on_fail
-- returns it.
CREATE TYPE cb_claimed_task_on_fail AS (
    id bigint,
    input jsonb,
    error_message text,
    attempts integer,
    on_fail_attempts integer,
    started_at timestamptz,
    failed_at timestamptz,
    concurrency_key text
);

-- Returns the table of an existing task with its parsed condition, or raises
-- CB002 for an invalid name and CB001 for a task that does not exist.
CREATE FUNCTION cb_task_table(task text, OUT table_name text, OUT condition_parsed jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_check_name('task', task);
    SELECT t.condition_parsed INTO condition_parsed FROM cb_tasks t WHERE t.name = task;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'catbird: task "%" is not defined', task
            USING ERRCODE = 'CB001';
    END IF;
    table_name := 'cb_t_' || task;
END;
$$;

-- Raises CB002 unless `value` (milliseconds) is absent or not negative.
CREATE FUNCTION cb_check_non_negative(what text, value bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value < 0 THEN
        RAISE EXCEPTION 'catbird: % must not be negative, got % milliseconds', what, value
            USING ERRCODE = 'CB002';
    END IF;
END;
$$;

-- Raises CB002 unless `value` (milliseconds) is at most 100 years: longer
-- periods are meaningless and overflow timestamp arithmetic.
CREATE FUNCTION cb_check_period(what text, value bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM cb_check_non_negative(what, value);
    IF value > 3155760000000 THEN
        RAISE EXCEPTION 'catbird: % must be at most 100 years (3155760000000 milliseconds), got %', what, value
            USING ERRCODE = 'CB002';
    END IF;
END;
$$;

-- Raises CB002 unless `value` (milliseconds) is greater than 0.
CREATE FUNCTION cb_check_positive(what text, value bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR value <= 0 THEN
        RAISE EXCEPTION 'catbird: % must be greater than 0, got %', what, coalesce(value::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
END;
$$;

-- Creates a task definition, or replaces the description, condition,
-- retention period and on-fail flag of an existing one. Its runs are kept.
-- `retention_period` is in milliseconds; 0 or NULL keeps finished runs
-- forever. `has_on_fail` tells whether some worker runs an on-fail handler
-- for the task: only then do failed runs queue on-fail work.
CREATE FUNCTION cb_create_task(
    name text,
    description text DEFAULT NULL,
    condition text DEFAULT NULL,
    retention_period bigint DEFAULT NULL,
    has_on_fail boolean DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_name text := cb_create_task.name;
    v_table text := 'cb_t_' || cb_create_task.name;
    v_condition text := nullif(btrim(cb_create_task.condition), '');
    v_parsed jsonb;
BEGIN
    PERFORM cb_check_name('task', v_name);
    IF v_name = 'input' THEN
        RAISE EXCEPTION 'catbird: invalid task name "input": is reserved'
            USING ERRCODE = 'CB002';
    END IF;
    PERFORM cb_check_period('retention_period', cb_create_task.retention_period);
    IF v_condition IS NOT NULL THEN
        v_parsed := cb_parse_condition(v_condition);
        IF v_parsed -> 'path' ->> 0 IS DISTINCT FROM 'input' THEN
            RAISE EXCEPTION 'catbird: invalid condition "%" of task "%": a task condition can only read input.*',
                v_condition, v_name
                USING ERRCODE = 'CB002';
        END IF;
    END IF;

    -- NOTE: serialises concurrent creators of one task, so exactly one of
    -- them creates the table.
    PERFORM pg_advisory_xact_lock(hashtext('cb_task:' || v_name));
    PERFORM 1 FROM cb_tasks t WHERE t.name = v_name;
    IF FOUND THEN
        UPDATE cb_tasks t
        SET description = nullif(cb_create_task.description, ''),
            condition = v_condition,
            condition_parsed = v_parsed,
            retention_period = coalesce(cb_create_task.retention_period, 0),
            has_on_fail = coalesce(cb_create_task.has_on_fail, t.has_on_fail)
        WHERE t.name = v_name;
        RETURN;
    END IF;

    INSERT INTO cb_tasks (name, description, condition, condition_parsed, retention_period, has_on_fail)
    VALUES (v_name, nullif(cb_create_task.description, ''), v_condition, v_parsed,
            coalesce(cb_create_task.retention_period, 0), coalesce(cb_create_task.has_on_fail, false));

    EXECUTE format($sql$
        CREATE TABLE %I (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            concurrency_key text,
            input jsonb NOT NULL,
            headers jsonb,
            priority integer NOT NULL DEFAULT 0,
            status text NOT NULL DEFAULT 'queued' CHECK (status IN
                ('queued', 'started', 'completed', 'failed', 'skipped', 'canceled', 'canceling', 'expired')),
            attempts integer NOT NULL DEFAULT 0,
            output jsonb,
            error_message text,
            cancel_reason text,
            visible_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz,
            failed_at timestamptz,
            skipped_at timestamptz,
            canceled_at timestamptz,
            cancel_requested_at timestamptz,
            expired_at timestamptz,
            on_fail_status text CHECK (on_fail_status IN ('queued', 'started', 'completed', 'failed')),
            on_fail_attempts integer NOT NULL DEFAULT 0,
            on_fail_error text,
            on_fail_visible_at timestamptz,
            CHECK (status <> 'failed' OR error_message <> '')
        )$sql$, v_table);
    -- NOTE: the claim index holds only claimable runs; finished runs leave it.
    EXECUTE format('CREATE INDEX ON %I (priority DESC, id) WHERE status IN (''queued'', ''started'')', v_table);
    EXECUTE format($sql$
        CREATE UNIQUE INDEX ON %I (concurrency_key)
        WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'started')$sql$, v_table);
    EXECUTE format('CREATE INDEX ON %I (id) WHERE on_fail_visible_at IS NOT NULL', v_table);
END;
$$;

-- Deletes a task definition with all its runs. Returns whether it existed.
CREATE FUNCTION cb_delete_task(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM cb_check_name('task', cb_delete_task.name);
    PERFORM pg_advisory_xact_lock(hashtext('cb_task:' || cb_delete_task.name));
    DELETE FROM cb_tasks t WHERE t.name = cb_delete_task.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_t_' || cb_delete_task.name);
    RETURN true;
END;
$$;

-- Creates a run and returns its id. When the task's condition is false for
-- the input, the run is created skipped and never runs. While a queued or
-- started run of the task holds the concurrency key, nothing is created and
-- that run's id is returned.
CREATE FUNCTION cb_run_task(
    name text,
    input jsonb,
    concurrency_key text DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    visible_at timestamptz DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    priority integer DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_key text := nullif(concurrency_key, '');
    v_headers jsonb := cb_check_headers(headers);
    v_status text := 'queued';
    v_id bigint;
BEGIN
    IF input IS NULL THEN
        RAISE EXCEPTION 'catbird: task input must not be SQL NULL (use the JSON value null)'
            USING ERRCODE = 'CB002';
    END IF;

    LOOP
        -- A duplicate of an active run is answered before the condition is
        -- looked at: the existing run stands for the request.
        IF v_key IS NOT NULL THEN
            EXECUTE format('SELECT id FROM %I WHERE concurrency_key = $1 AND status IN (''queued'', ''started'')',
                           v_task.table_name)
                INTO v_id USING v_key;
            IF v_id IS NOT NULL THEN
                RETURN v_id;
            END IF;
        END IF;

        IF v_task.condition_parsed IS NOT NULL
           AND NOT cb_eval_condition(v_task.condition_parsed, jsonb_build_object('input', input)) THEN
            v_status := 'skipped';
        END IF;

        -- NOTE: ON CONFLICT is the deduplication against a concurrent caller
        -- with the same key; on conflict the loop looks the winner up.
        EXECUTE format($sql$
            INSERT INTO %I (concurrency_key, input, headers, priority, status, visible_at, expires_at, skipped_at)
            VALUES ($1, $2, $3, coalesce($4, 0), $5, coalesce($6, now()), $7,
                    CASE WHEN $5 = 'skipped' THEN now() END)
            ON CONFLICT (concurrency_key) WHERE concurrency_key IS NOT NULL AND status IN ('queued', 'started')
            DO NOTHING
            RETURNING id$sql$, v_task.table_name)
            INTO v_id
            USING v_key, input, v_headers, priority, v_status, visible_at, expires_at;
        IF v_id IS NOT NULL THEN
            IF v_status = 'queued' THEN
                PERFORM cb_wake('t', name, visible_at);
            END IF;
            RETURN v_id;
        END IF;
    END LOOP;
END;
$$;

-- Creates one run per input, in input order, and returns one id per input in
-- that order: the new run's, or for a duplicate concurrency key the id of the
-- run that holds the key (an earlier input of the same call included).
-- Options other than keys and headers apply to every run.
CREATE FUNCTION cb_run_task(
    name text,
    inputs jsonb[],
    concurrency_keys text[] DEFAULT NULL,
    headers jsonb[] DEFAULT NULL,
    visible_at timestamptz DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    priority integer DEFAULT NULL
) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_count integer := coalesce(cardinality(inputs), 0);
    v_index integer;
BEGIN
    IF concurrency_keys IS NOT NULL AND cardinality(concurrency_keys) <> v_count THEN
        RAISE EXCEPTION 'catbird: concurrency_keys length must match inputs length (% keys, % inputs)',
            cardinality(concurrency_keys), v_count
            USING ERRCODE = 'CB002';
    END IF;
    IF headers IS NOT NULL AND cardinality(headers) <> v_count THEN
        RAISE EXCEPTION 'catbird: headers length must match inputs length (% headers, % inputs)',
            cardinality(headers), v_count
            USING ERRCODE = 'CB002';
    END IF;
    IF v_count = 0 THEN
        RETURN;
    END IF;
    IF array_position(inputs, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'catbird: task input % must not be SQL NULL (use the JSON value null)',
            array_position(inputs, NULL)
            USING ERRCODE = 'CB002';
    END IF;
    IF headers IS NOT NULL AND EXISTS (
        SELECT 1 FROM unnest(headers) h
        WHERE h IS NOT NULL AND jsonb_typeof(h) NOT IN ('object', 'null')
    ) THEN
        RAISE EXCEPTION 'catbird: headers must be JSON objects'
            USING ERRCODE = 'CB002';
    END IF;

    -- Keyed batches go one run at a time, which keeps the deduplication
    -- rules of the single form exactly.
    IF concurrency_keys IS NOT NULL AND EXISTS (SELECT 1 FROM unnest(concurrency_keys) k WHERE k <> '') THEN
        FOR v_index IN 1 .. v_count LOOP
            RETURN NEXT cb_run_task(name => name, input => inputs[v_index],
                                    concurrency_key => concurrency_keys[v_index],
                                    headers => headers[v_index], visible_at => visible_at,
                                    expires_at => expires_at, priority => priority);
        END LOOP;
        RETURN;
    END IF;

    -- NOTE: identity values follow the ordinality order of the insert, so
    -- sorting the new ids gives input order.
    RETURN QUERY EXECUTE format($sql$
        WITH inserted AS (
            INSERT INTO %I (input, headers, priority, status, visible_at, expires_at, skipped_at)
            SELECT i.input,
                   CASE WHEN jsonb_typeof(h.headers) = 'object' THEN h.headers END,
                   coalesce($3, 0),
                   CASE WHEN $6::jsonb IS NULL
                          OR cb_eval_condition($6, jsonb_build_object('input', i.input))
                        THEN 'queued' ELSE 'skipped' END,
                   coalesce($4, now()), $5,
                   CASE WHEN $6::jsonb IS NOT NULL
                         AND NOT cb_eval_condition($6, jsonb_build_object('input', i.input))
                        THEN now() END
            FROM unnest($1) WITH ORDINALITY AS i(input, ord)
            LEFT JOIN unnest($2) WITH ORDINALITY AS h(headers, ord) USING (ord)
            ORDER BY ord
            RETURNING id
        )
        SELECT id FROM inserted ORDER BY id$sql$, v_task.table_name)
        USING inputs, headers, priority, visible_at, expires_at, v_task.condition_parsed;

    PERFORM cb_wake('t', name, visible_at);
END;
$$;

-- Claims up to `quantity` runs of a task: queued or started, visible and not
-- expired, highest priority first and oldest first within a priority. Each
-- claimed run becomes started with its attempt count raised and is hidden for
-- `hide_for` milliseconds (the lease). Rows locked by another claimer are
-- skipped.
CREATE FUNCTION cb_claim_tasks(name text, quantity integer, hide_for integer)
RETURNS SETOF cb_claimed_task
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM cb_check_positive('quantity', quantity);
    PERFORM cb_check_positive('hide_for', hide_for);

    -- NOTE: SKIP LOCKED is load-bearing: concurrent claimers never wait for
    -- each other and never take the same run.
    RETURN QUERY EXECUTE format($sql$
        WITH selected AS (
            SELECT id FROM %1$I
            WHERE status IN ('queued', 'started')
              AND visible_at <= $1
              AND (expires_at IS NULL OR expires_at > $1)
            ORDER BY priority DESC, id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE %1$I r
            SET status = 'started',
                started_at = $1,
                attempts = r.attempts + 1,
                visible_at = $1 + make_interval(secs => $3 / 1000.0)
            FROM selected s
            WHERE r.id = s.id
            RETURNING r.id, r.input, r.headers, r.priority, r.concurrency_key, r.attempts, r.started_at
        )
        SELECT * FROM claimed ORDER BY priority DESC, id$sql$, v_task.table_name)
        USING v_now, quantity, hide_for;
END;
$$;

-- Extends the lease of started runs to now + `hide_for` milliseconds.
-- Returns the ids whose lease was extended, ascending.
CREATE FUNCTION cb_hide_tasks(name text, ids bigint[], hide_for integer)
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

-- Gives back a claim without running it (a circuit breaker refused the
-- call): the attempt is not counted and the run becomes claimable after
-- `delay` milliseconds. Returns whether the claim was still held.
CREATE FUNCTION cb_release_task(name text, id bigint, attempt integer, delay integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_count integer;
BEGIN
    PERFORM cb_check_non_negative('delay', delay);
    EXECUTE format($sql$
        UPDATE %I
        SET attempts = attempts - 1,
            status = CASE WHEN attempts = 1 THEN 'queued' ELSE status END,
            visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
        WHERE id = $1 AND status = 'started' AND attempts = $2$sql$, v_task.table_name)
        USING id, attempt, coalesce(delay, 0);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM cb_wake('t', name, clock_timestamp() + make_interval(secs => coalesce(delay, 0) / 1000.0));
    END IF;
    RETURN v_count > 0;
END;
$$;

-- Completes attempt `attempt` of a run with `output`. Returns false, changing
-- nothing, when the run is no longer started with that attempt: it was
-- canceled, expired, or claimed again after the attempt lost its lease.
CREATE FUNCTION cb_complete_task(name text, id bigint, attempt integer, output jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_count integer;
BEGIN
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'completed', output = coalesce($3, 'null'::jsonb), completed_at = clock_timestamp()
        WHERE id = $1 AND status = 'started' AND attempts = $2$sql$, v_task.table_name)
        USING id, attempt, output;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END;
$$;

-- Records a failed attempt. With `retry_delay` (milliseconds) the run stays
-- started and becomes claimable again after the delay; without it the run
-- fails for good, and on-fail work is queued when the task has an on-fail
-- handler. Returns the run's new status ('started' or 'failed'), or NULL,
-- changing nothing, when the run is no longer started with that attempt.
CREATE FUNCTION cb_fail_task(
    name text,
    id bigint,
    attempt integer,
    error_message text,
    retry_delay integer DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_has_on_fail boolean;
    v_message text := coalesce(nullif(error_message, ''), 'handler failed without an error message');
    v_status text;
BEGIN
    PERFORM cb_check_non_negative('retry_delay', retry_delay);

    IF retry_delay IS NOT NULL THEN
        EXECUTE format($sql$
            UPDATE %I
            SET error_message = $3,
                visible_at = clock_timestamp() + make_interval(secs => $4 / 1000.0)
            WHERE id = $1 AND status = 'started' AND attempts = $2
            RETURNING status$sql$, v_task.table_name)
            INTO v_status
            USING id, attempt, v_message, retry_delay;
        IF v_status IS NOT NULL THEN
            PERFORM cb_wake('t', name, clock_timestamp() + make_interval(secs => retry_delay / 1000.0));
        END IF;
        RETURN v_status;
    END IF;

    SELECT t.has_on_fail INTO v_has_on_fail FROM cb_tasks t WHERE t.name = cb_fail_task.name;
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'failed',
            error_message = $3,
            failed_at = clock_timestamp(),
            on_fail_status = CASE WHEN $4 THEN 'queued' END,
            on_fail_visible_at = CASE WHEN $4 THEN clock_timestamp() END
        WHERE id = $1 AND status = 'started' AND attempts = $2
        RETURNING status$sql$, v_task.table_name)
        INTO v_status
        USING id, attempt, v_message, v_has_on_fail;
    IF v_status IS NOT NULL AND v_has_on_fail THEN
        PERFORM cb_wake('tf', name, NULL);
    END IF;
    RETURN v_status;
END;
$$;

-- Cancels a queued or started run: it becomes canceled at once, and a worker
-- running it is told to stop. A run that already finished is left exactly as
-- it is. Returns whether the run exists.
CREATE FUNCTION cb_cancel_task(name text, id bigint, reason text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_status text;
    v_exists boolean;
BEGIN
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'canceled',
            cancel_reason = nullif($2, ''),
            cancel_requested_at = clock_timestamp(),
            canceled_at = clock_timestamp()
        WHERE id = $1 AND status IN ('queued', 'started')
        RETURNING status$sql$, v_task.table_name)
        INTO v_status
        USING id, reason;
    IF v_status IS NOT NULL THEN
        PERFORM pg_notify(cb_wake_channel(), 'tx|' || name || '|' || id);
        RETURN true;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE id = $1)', v_task.table_name)
        INTO v_exists USING id;
    RETURN v_exists;
END;
$$;

-- Claims up to `quantity` failed runs whose on-fail work is due, oldest
-- first, and leases them for `hide_for` milliseconds. Each claim raises the
-- on-fail attempt count.
CREATE FUNCTION cb_claim_task_on_fail(name text, quantity integer, hide_for integer)
RETURNS SETOF cb_claimed_task_on_fail
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM cb_check_positive('quantity', quantity);
    PERFORM cb_check_positive('hide_for', hide_for);
    RETURN QUERY EXECUTE format($sql$
        WITH selected AS (
            SELECT id FROM %1$I
            WHERE on_fail_visible_at IS NOT NULL AND on_fail_visible_at <= $1 AND status = 'failed'
            ORDER BY id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE %1$I r
            SET on_fail_status = 'started',
                on_fail_attempts = r.on_fail_attempts + 1,
                on_fail_visible_at = $1 + make_interval(secs => $3 / 1000.0)
            FROM selected s
            WHERE r.id = s.id
            RETURNING r.id, r.input, r.error_message, r.attempts, r.on_fail_attempts,
                      r.started_at, r.failed_at, r.concurrency_key
        )
        SELECT * FROM claimed ORDER BY id$sql$, v_task.table_name)
        USING v_now, quantity, hide_for;
END;
$$;

-- Records a successful on-fail attempt. Returns false when that attempt no
-- longer holds the run's on-fail work.
CREATE FUNCTION cb_complete_task_on_fail(name text, id bigint, on_fail_attempt integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_count integer;
BEGIN
    EXECUTE format($sql$
        UPDATE %I
        SET on_fail_status = 'completed', on_fail_visible_at = NULL, on_fail_error = NULL
        WHERE id = $1 AND on_fail_status = 'started' AND on_fail_attempts = $2$sql$, v_task.table_name)
        USING id, on_fail_attempt;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END;
$$;

-- Records a failed on-fail attempt. With `retry_delay` (milliseconds) it is
-- tried again after the delay; without it the on-fail work is given up.
-- Returns false when that attempt no longer holds the run's on-fail work.
CREATE FUNCTION cb_fail_task_on_fail(
    name text,
    id bigint,
    on_fail_attempt integer,
    error_message text,
    retry_delay integer DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_count integer;
BEGIN
    PERFORM cb_check_non_negative('retry_delay', retry_delay);
    EXECUTE format($sql$
        UPDATE %I
        SET on_fail_status = 'failed',
            on_fail_error = $3,
            on_fail_visible_at = CASE WHEN $4::integer IS NULL THEN NULL
                                      ELSE clock_timestamp() + make_interval(secs => $4 / 1000.0) END
        WHERE id = $1 AND on_fail_status = 'started' AND on_fail_attempts = $2$sql$, v_task.table_name)
        USING id, on_fail_attempt, coalesce(nullif(error_message, ''), 'on-fail handler failed without an error message'),
              retry_delay;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 AND retry_delay IS NOT NULL THEN
        PERFORM cb_wake('tf', name, clock_timestamp() + make_interval(secs => retry_delay / 1000.0));
    END IF;
    RETURN v_count > 0;
END;
$$;

-- Returns one run, or no row when the id does not exist.
CREATE FUNCTION cb_get_task_run(name text, id bigint) RETURNS SETOF cb_task_run
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
BEGIN
    RETURN QUERY EXECUTE format($sql$
        SELECT id, concurrency_key, input, headers, priority, status, attempts, output, error_message,
               cancel_reason, visible_at, expires_at, created_at, started_at, completed_at, failed_at,
               skipped_at, canceled_at, cancel_requested_at, expired_at, on_fail_status,
               on_fail_attempts, on_fail_error
        FROM %I WHERE id = $1$sql$, v_task.table_name)
        USING id;
END;
$$;

-- Returns the `quantity` most recently created runs, newest first.
CREATE FUNCTION cb_list_task_runs(name text, quantity integer DEFAULT 20) RETURNS SETOF cb_task_run
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
BEGIN
    PERFORM cb_check_positive('quantity', quantity);
    RETURN QUERY EXECUTE format($sql$
        SELECT id, concurrency_key, input, headers, priority, status, attempts, output, error_message,
               cancel_reason, visible_at, expires_at, created_at, started_at, completed_at, failed_at,
               skipped_at, canceled_at, cancel_requested_at, expired_at, on_fail_status,
               on_fail_attempts, on_fail_error
        FROM %I ORDER BY id DESC LIMIT $1$sql$, v_task.table_name)
        USING quantity;
END;
$$;

-- Waits until a run has finished, checking every `poll_interval`
-- milliseconds for at most `poll_for` milliseconds. Returns the finished run,
-- or no row when the wait ran out. Raises CB003 for a run id that does not
-- exist.
CREATE FUNCTION cb_wait_task_output(
    name text,
    id bigint,
    poll_for integer DEFAULT 5000,
    poll_interval integer DEFAULT NULL
) RETURNS SETOF cb_task_run
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_deadline timestamptz;
    v_run cb_task_run;
BEGIN
    PERFORM cb_check_positive('poll_for', poll_for);
    -- Without an interval: 200 ms, or half of a shorter wait.
    poll_interval := coalesce(poll_interval, least(200, greatest(poll_for / 2, 1)));
    PERFORM cb_check_positive('poll_interval', poll_interval);
    IF poll_interval >= poll_for AND poll_for > 1 THEN
        RAISE EXCEPTION 'catbird: poll_interval (% ms) must be less than poll_for (% ms)', poll_interval, poll_for
            USING ERRCODE = 'CB002';
    END IF;

    v_deadline := clock_timestamp() + make_interval(secs => poll_for / 1000.0);
    LOOP
        SELECT * INTO v_run FROM cb_get_task_run(name, id);
        IF v_run.id IS NULL THEN
            RAISE EXCEPTION 'catbird: task run % of task "%" not found', id, name
                USING ERRCODE = 'CB003';
        END IF;
        IF v_run.status IN ('completed', 'failed', 'skipped', 'canceled', 'expired') THEN
            RETURN NEXT v_run;
            RETURN;
        END IF;
        IF clock_timestamp() >= v_deadline THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(least(poll_interval / 1000.0, extract(epoch FROM v_deadline - clock_timestamp())));
    END LOOP;
END;
$$;

-- Workers ---------------------------------------------------------------

CREATE TABLE cb_workers (
    id uuid PRIMARY KEY,
    task_handlers text[] NOT NULL DEFAULT '{}',
    step_handlers jsonb NOT NULL DEFAULT '[]',
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Registers a worker with the tasks it has handlers for, or refreshes the
-- registration of a worker id seen before.
CREATE FUNCTION cb_worker_started(id uuid, task_handlers text[] DEFAULT '{}', step_handlers jsonb DEFAULT '[]')
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO cb_workers (id, task_handlers, step_handlers)
    VALUES (id, coalesce(task_handlers, '{}'), coalesce(step_handlers, '[]'))
    ON CONFLICT ON CONSTRAINT cb_workers_pkey DO UPDATE
    SET task_handlers = excluded.task_handlers,
        step_handlers = excluded.step_handlers,
        last_heartbeat_at = now()
$$;

-- Records a worker's heartbeat. Returns false when the worker is not
-- registered (for instance removed as stale after an outage): it should
-- register again.
CREATE FUNCTION cb_worker_heartbeat(id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE cb_workers w SET last_heartbeat_at = now() WHERE w.id = cb_worker_heartbeat.id;
    RETURN FOUND;
END;
$$;

-- Removes a worker's registration when it stops.
CREATE FUNCTION cb_worker_stopped(id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM cb_workers w WHERE w.id = cb_worker_stopped.id;
    RETURN FOUND;
END;
$$;

CREATE VIEW cb_worker_info AS
SELECT id,
       ARRAY(SELECT unnest(task_handlers) ORDER BY 1) AS task_handlers,
       step_handlers,
       started_at,
       last_heartbeat_at
FROM cb_workers
ORDER BY last_heartbeat_at DESC;

-- migrate:down

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_tasks LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_t_' || v_name);
    END LOOP;
END;
$$;
DROP VIEW cb_worker_info;
DROP FUNCTION cb_worker_stopped(uuid);
DROP FUNCTION cb_worker_heartbeat(uuid);
DROP FUNCTION cb_worker_started(uuid, text[], jsonb);
DROP TABLE cb_workers;
DROP FUNCTION cb_wait_task_output(text, bigint, integer, integer);
DROP FUNCTION cb_list_task_runs(text, integer);
DROP FUNCTION cb_get_task_run(text, bigint);
DROP FUNCTION cb_fail_task_on_fail(text, bigint, integer, text, integer);
DROP FUNCTION cb_complete_task_on_fail(text, bigint, integer);
DROP FUNCTION cb_claim_task_on_fail(text, integer, integer);
DROP FUNCTION cb_cancel_task(text, bigint, text);
DROP FUNCTION cb_fail_task(text, bigint, integer, text, integer);
DROP FUNCTION cb_complete_task(text, bigint, integer, jsonb);
DROP FUNCTION cb_release_task(text, bigint, integer, integer);
DROP FUNCTION cb_hide_tasks(text, bigint[], integer);
DROP FUNCTION cb_claim_tasks(text, integer, integer);
DROP FUNCTION cb_run_task(text, jsonb[], text[], jsonb[], timestamptz, timestamptz, integer);
DROP FUNCTION cb_run_task(text, jsonb, text, jsonb, timestamptz, timestamptz, integer);
DROP FUNCTION cb_delete_task(text);
DROP FUNCTION cb_create_task(text, text, text, bigint, boolean);
DROP FUNCTION cb_check_positive(text, bigint);
DROP FUNCTION cb_check_period(text, bigint);
DROP FUNCTION cb_check_non_negative(text, bigint);
DROP FUNCTION cb_task_table(text);
DROP TYPE cb_claimed_task_on_fail;
DROP TYPE cb_claimed_task;
DROP TYPE cb_task_run;
DROP TABLE cb_tasks;
