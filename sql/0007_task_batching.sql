-- Version 7: batched completion and failure of task runs, completion
-- wake-ups for waiters, and storage settings that keep task tables fast
-- under claim/complete churn.
--
-- A worker buffers the results of its handlers for as long as its previous
-- write takes and records them with one cb_complete_tasks and one
-- cb_fail_tasks call: one commit for many runs. Each result is fenced by the
-- attempt number of its claim, exactly as in the single-run functions.
--
-- A caller that waits for a run registers in cb_task_waiters. Completion and
-- failure notify cb_wake_channel() with 'td|<task>|<id>,<id>...' once per
-- statement, and only when a finished run had a waiter, so runs nobody waits
-- for cost no notification.
--
-- cb_cancel_task now stamps the request and the cancellation with one
-- clock reading.

-- migrate:up

-- Callers waiting for a run to finish. Rows are hints: a row left behind
-- by a waiter that went away costs at most one notification, and the table
-- is unlogged because a crash that empties it only makes waiters fall back
-- to polling.
CREATE UNLOGGED TABLE cb_task_waiters (
    task text NOT NULL,
    run_id bigint NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, run_id)
);

-- Registers a waiter for a run, so its completion or failure notifies
-- 'td|<task>|<run id>'. Idempotent. When the run has started, it then takes
-- a share lock on it, which waits for a completion of the run already in
-- progress: the caller's next read sees that completion, and any later
-- completion sees this waiter. Without it, a completion whose waiter check
-- ran just before the registration committed could finish unseen by both
-- sides. A queued run is not locked: claims skip locked rows, so a waiter
-- that locked a queued run made the worker's claim come back empty, and
-- the worker then slept until its next poll. Locking only started runs
-- leaves a window of a few microseconds (a claim that commits after this
-- read, with a handler fast enough to complete before this registration
-- commits), which the caller's periodic re-read covers.
CREATE FUNCTION cb_wait_task_run(task text, run_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    INSERT INTO cb_task_waiters AS w (task, run_id) VALUES (task, run_id)
    ON CONFLICT ON CONSTRAINT cb_task_waiters_pkey DO UPDATE SET registered_at = excluded.registered_at;
    EXECUTE format('SELECT 1 FROM %I WHERE id = $1 AND status = ''started'' FOR SHARE',
                   (cb_task_table(task)).table_name)
        USING run_id;
END;
$$;

-- Removes the waiters of finished runs among `run_ids` and, when there were
-- any, sends one 'td|<task>|<id>,...' notification for them. The id list is
-- left out when it would not fit a notification payload; a listener then
-- re-checks every run of the task it waits for.
CREATE FUNCTION cb_notify_task_waiters(task text, run_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_ids text;
BEGIN
    IF cardinality(run_ids) = 0 THEN
        RETURN;
    END IF;
    WITH removed AS (
        DELETE FROM cb_task_waiters w
        WHERE w.task = task AND w.run_id = ANY(run_ids)
        RETURNING w.run_id
    )
    SELECT string_agg(DISTINCT run_id::text, ',') INTO v_ids FROM removed;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    IF length(v_ids) > 7000 THEN
        v_ids := '';
    END IF;
    PERFORM pg_notify(cb_wake_channel(), 'td|' || task || '|' || v_ids);
END;
$$;

-- Applies the storage settings of task tables. Claims and completions
-- change `status`, which the partial indexes read, so those updates are
-- never HOT and leave one dead row version per change; vacuuming after 1 %
-- of the table (at least 1,000 rows) changed, instead of the stock 20 %,
-- keeps dead entries from piling up in the claim index of a table that also
-- holds a long history. The fill factor leaves room on each page for the
-- HOT updates that lease renewals and retries make.
CREATE FUNCTION cb_tune_task_table(table_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($sql$
        ALTER TABLE %I SET (
            fillfactor = 90,
            autovacuum_vacuum_scale_factor = 0.01,
            autovacuum_vacuum_threshold = 1000,
            autovacuum_vacuum_insert_scale_factor = 0.01,
            autovacuum_analyze_scale_factor = 0.02
        )$sql$, table_name);
END;
$$;

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_tasks LOOP
        PERFORM cb_tune_task_table('cb_t_' || v_name);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION cb_create_task(
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
    PERFORM cb_tune_task_table(v_table);
END;
$$;

-- Returns how many milliseconds remain until the next queued or started,
-- unexpired run of a task becomes visible: 0 when one is visible now, NULL
-- when there is none. An idle worker sets its next poll by it, so runs that
-- become claimable without a notification (the lease of a worker that died
-- runs out, a retry scheduled before the worker listened) are claimed on
-- time without frequent polling.
CREATE FUNCTION cb_next_task_visible_in(name text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_at timestamptz;
BEGIN
    EXECUTE format($sql$
        SELECT min(visible_at) FROM %I
        WHERE status IN ('queued', 'started') AND (expires_at IS NULL OR expires_at > now())$sql$,
        v_task.table_name)
        INTO v_at;
    IF v_at IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN greatest(ceil(extract(epoch FROM v_at - clock_timestamp()) * 1000), 0)::bigint;
END;
$$;

-- Returns which of `ids` are runs still started, ascending. A worker asks
-- before it starts runs that waited for an execution slot, to skip the ones
-- canceled meanwhile, with one statement for many runs.
CREATE FUNCTION cb_started_task_runs(name text, ids bigint[]) RETURNS SETOF bigint
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT id FROM %I WHERE id = ANY($1) AND status = ''started'' ORDER BY id', v_task.table_name)
        USING ids;
END;
$$;

-- Completes many attempts at once: run ids[i] with attempt attempts[i] gets
-- outputs[i] (SQL NULL is stored as JSON null). Returns the ids that were
-- completed, ascending; an id whose run is no longer started with that
-- attempt (canceled, expired, or claimed again after the attempt lost its
-- lease) is left unchanged and not returned. Rows are locked in id order,
-- so concurrent batches over the same runs cannot deadlock.
CREATE FUNCTION cb_complete_tasks(name text, ids bigint[], attempts integer[], outputs jsonb[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_done bigint[];
BEGIN
    IF cardinality(attempts) IS DISTINCT FROM cardinality(ids)
       OR cardinality(outputs) IS DISTINCT FROM cardinality(ids) THEN
        RAISE EXCEPTION 'catbird: ids, attempts and outputs must have the same length (% ids, % attempts, % outputs)',
            coalesce(cardinality(ids), 0), coalesce(cardinality(attempts), 0), coalesce(cardinality(outputs), 0)
            USING ERRCODE = 'CB002';
    END IF;
    IF coalesce(cardinality(ids), 0) = 0 THEN
        RETURN;
    END IF;

    EXECUTE format($sql$
        WITH input AS (
            SELECT DISTINCT ON (id) id, attempt, output
            FROM unnest($1::bigint[], $2::integer[], $3::jsonb[]) AS i(id, attempt, output)
            ORDER BY id
        ), locked AS (
            SELECT r.id FROM %1$I r JOIN input i ON i.id = r.id
            WHERE r.status = 'started' AND r.attempts = i.attempt
            ORDER BY r.id
            FOR UPDATE OF r
        ), completed AS (
            UPDATE %1$I r
            SET status = 'completed', output = coalesce(i.output, 'null'::jsonb), completed_at = clock_timestamp()
            FROM locked l JOIN input i ON i.id = l.id
            WHERE r.id = l.id AND r.status = 'started' AND r.attempts = i.attempt
            RETURNING r.id
        )
        SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM completed$sql$, v_task.table_name)
        INTO v_done
        USING ids, attempts, outputs;

    PERFORM cb_notify_task_waiters(name, v_done);
    RETURN QUERY SELECT unnest(v_done);
END;
$$;

-- Records many failed attempts at once. For run ids[i] with attempt
-- attempts[i]: with retry_delays[i] (milliseconds) the run stays started
-- and becomes claimable again after the delay; with NULL it fails for good
-- with error_messages[i], and on-fail work is queued when the task has an
-- on-fail handler. Returns (id, status) for each run that changed, status
-- 'started' or 'failed', ascending by id. Sends at most one wake-up for
-- retries (at the earliest retry time), one for on-fail work and one for
-- waiters.
CREATE FUNCTION cb_fail_tasks(
    name text,
    ids bigint[],
    attempts integer[],
    error_messages text[],
    retry_delays integer[]
) RETURNS TABLE (id bigint, status text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_has_on_fail boolean;
    v_now timestamptz := clock_timestamp();
    v_ids bigint[];
    v_statuses text[];
    v_first_retry timestamptz;
BEGIN
    IF cardinality(attempts) IS DISTINCT FROM cardinality(ids)
       OR cardinality(error_messages) IS DISTINCT FROM cardinality(ids)
       OR cardinality(retry_delays) IS DISTINCT FROM cardinality(ids) THEN
        RAISE EXCEPTION 'catbird: ids, attempts, error_messages and retry_delays must have the same length (% ids, % attempts, % error_messages, % retry_delays)',
            coalesce(cardinality(ids), 0), coalesce(cardinality(attempts), 0),
            coalesce(cardinality(error_messages), 0), coalesce(cardinality(retry_delays), 0)
            USING ERRCODE = 'CB002';
    END IF;
    IF coalesce(cardinality(ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(retry_delays) d WHERE d < 0) THEN
        RAISE EXCEPTION 'catbird: retry_delays must not be negative'
            USING ERRCODE = 'CB002';
    END IF;

    SELECT t.has_on_fail INTO v_has_on_fail FROM cb_tasks t WHERE t.name = cb_fail_tasks.name;
    EXECUTE format($sql$
        WITH input AS (
            SELECT DISTINCT ON (id) id, attempt,
                   coalesce(nullif(message, ''), 'handler failed without an error message') AS message,
                   delay
            FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::integer[]) AS i(id, attempt, message, delay)
            ORDER BY id
        ), locked AS (
            SELECT r.id FROM %1$I r JOIN input i ON i.id = r.id
            WHERE r.status = 'started' AND r.attempts = i.attempt
            ORDER BY r.id
            FOR UPDATE OF r
        ), changed AS (
            UPDATE %1$I r
            SET status = CASE WHEN i.delay IS NULL THEN 'failed' ELSE r.status END,
                error_message = i.message,
                visible_at = CASE WHEN i.delay IS NULL THEN r.visible_at
                                  ELSE $5 + make_interval(secs => i.delay / 1000.0) END,
                failed_at = CASE WHEN i.delay IS NULL THEN $5 END,
                on_fail_status = CASE WHEN i.delay IS NULL AND $6 THEN 'queued' END,
                on_fail_visible_at = CASE WHEN i.delay IS NULL AND $6 THEN $5 END
            FROM locked l JOIN input i ON i.id = l.id
            WHERE r.id = l.id AND r.status = 'started' AND r.attempts = i.attempt
            RETURNING r.id, r.status, i.delay
        )
        SELECT coalesce(array_agg(id ORDER BY id), '{}'),
               coalesce(array_agg(status ORDER BY id), '{}'),
               min($5 + make_interval(secs => delay / 1000.0))
        FROM changed$sql$, v_task.table_name)
        INTO v_ids, v_statuses, v_first_retry
        USING ids, attempts, error_messages, retry_delays, v_now, coalesce(v_has_on_fail, false);

    IF v_first_retry IS NOT NULL THEN
        PERFORM cb_wake('t', name, v_first_retry);
    END IF;
    IF v_has_on_fail AND 'failed' = ANY(v_statuses) THEN
        PERFORM cb_wake('tf', name, NULL);
    END IF;
    PERFORM cb_notify_task_waiters(
        name, ARRAY(SELECT u.id FROM unnest(v_ids, v_statuses) AS u(id, status) WHERE u.status = 'failed'));
    RETURN QUERY SELECT u.id, u.status FROM unnest(v_ids, v_statuses) AS u(id, status);
END;
$$;

-- Cancels a queued or started run: it becomes canceled at once, and a worker
-- running it is told to stop. A run that already finished is left exactly as
-- it is. Returns whether the run exists. Version 7 gives the request and
-- the cancellation one timestamp: two clock readings could put the request
-- a microsecond after the cancellation.
CREATE OR REPLACE FUNCTION cb_cancel_task(name text, id bigint, reason text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_task record := cb_task_table(name);
    v_status text;
    v_exists boolean;
    v_now timestamptz;
BEGIN
    -- Lock first, then read the clock: a claim that started the run while
    -- this call waited for the row must not end up after the cancellation.
    EXECUTE format('SELECT 1 FROM %I WHERE id = $1 AND status IN (''queued'', ''started'') FOR UPDATE',
                   v_task.table_name)
        USING id;
    v_now := clock_timestamp();
    EXECUTE format($sql$
        UPDATE %I
        SET status = 'canceled',
            cancel_reason = nullif($2, ''),
            cancel_requested_at = $3,
            canceled_at = $3
        WHERE id = $1 AND status IN ('queued', 'started')
        RETURNING status$sql$, v_task.table_name)
        INTO v_status
        USING id, reason, v_now;
    IF v_status IS NOT NULL THEN
        PERFORM pg_notify(cb_wake_channel(), 'tx|' || name || '|' || id);
        RETURN true;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE id = $1)', v_task.table_name)
        INTO v_exists USING id;
    RETURN v_exists;
END;
$$;

-- migrate:down

DROP FUNCTION cb_fail_tasks(text, bigint[], integer[], text[], integer[]);
DROP FUNCTION cb_complete_tasks(text, bigint[], integer[], jsonb[]);
DROP FUNCTION cb_next_task_visible_in(text);
DROP FUNCTION cb_started_task_runs(text, bigint[]);
CREATE OR REPLACE FUNCTION cb_create_task(
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

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_tasks LOOP
        EXECUTE format($sql$
            ALTER TABLE %I RESET (
                fillfactor,
                autovacuum_vacuum_scale_factor,
                autovacuum_vacuum_threshold,
                autovacuum_vacuum_insert_scale_factor,
                autovacuum_analyze_scale_factor
            )$sql$, 'cb_t_' || v_name);
    END LOOP;
END;
$$;
DROP FUNCTION cb_tune_task_table(text);
DROP FUNCTION cb_notify_task_waiters(text, bigint[]);
DROP FUNCTION cb_wait_task_run(text, bigint);
DROP TABLE cb_task_waiters;

-- The version 3 body of cb_cancel_task.
-- Cancels a queued or started run: it becomes canceled at once, and a worker
-- running it is told to stop. A run that already finished is left exactly as
-- it is. Returns whether the run exists.
CREATE OR REPLACE FUNCTION cb_cancel_task(name text, id bigint, reason text DEFAULT NULL)
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
