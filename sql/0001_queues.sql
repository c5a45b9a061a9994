-- Version 1: name validation, wake-up notifications and queues.
--
-- Every queue owns one table, cb_q_<name>, holding only the messages that are
-- still stored (acknowledged messages are deleted). Per-queue tables keep a
-- busy queue's dead rows away from every other queue's read path, and the
-- 5-character prefix plus the 58-character name limit fits PostgreSQL's
-- 63-byte identifiers.
--
-- Error codes raised by these functions (SQLSTATE):
--   CB001  the named queue, task or flow is not defined
--   CB002  an argument is invalid (names, durations, headers, lengths)

-- migrate:up

-- Raises CB002 unless `name` is 1 to 58 characters of a-z, 0-9 and _.
-- `kind` ("queue", "task", ...) only appears in the error message.
CREATE FUNCTION cb_check_name(kind text, name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF name IS NULL OR name = '' THEN
        RAISE EXCEPTION 'catbird: invalid % name "": must not be empty', kind
            USING ERRCODE = 'CB002';
    END IF;
    IF length(name) > 58 THEN
        RAISE EXCEPTION 'catbird: invalid % name "%": too long, maximum 58 characters', kind, name
            USING ERRCODE = 'CB002';
    END IF;
    IF name !~ '^[a-z0-9_]+$' THEN
        RAISE EXCEPTION 'catbird: invalid % name "%": may only contain a-z, 0-9 and _', kind, name
            USING ERRCODE = 'CB002';
    END IF;
END;
$$;

-- The channel that carries every wake-up of this installation. One channel per
-- schema keeps two installations in one database apart, and lets a worker
-- hold a single LISTEN. Payload: '<kind>|<name>|<visible-at epoch seconds>',
-- the last part empty when the work is visible now.
CREATE FUNCTION cb_wake_channel() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT left('cb_wake_' || current_schema(), 63)
$$;

-- Sends one wake-up hint. Hints only shorten waits; correctness never
-- depends on them. NOTIFY folds identical payloads within a transaction, so a
-- batch that shares one visibility time costs one notification.
CREATE FUNCTION cb_wake(kind text, name text, visible_at timestamptz) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(
        cb_wake_channel(),
        kind || '|' || name || '|' ||
            CASE WHEN visible_at IS NULL OR visible_at <= now() THEN ''
                 ELSE extract(epoch FROM visible_at)::text END
    )
$$;

-- Raises CB002 unless `headers` is absent, JSON null or a JSON object.
CREATE FUNCTION cb_check_headers(headers jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF headers IS NULL OR jsonb_typeof(headers) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION 'catbird: headers must be a JSON object, got a JSON %', jsonb_typeof(headers)
            USING ERRCODE = 'CB002';
    END IF;
    RETURN headers;
END;
$$;

CREATE TABLE cb_queues (
    name text PRIMARY KEY,
    description text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    CONSTRAINT cb_queues_expires_after_creation CHECK (expires_at IS NULL OR expires_at > created_at)
);

-- The shape of a message as every read function returns it. The per-queue
-- tables have these columns in this order.
CREATE TYPE cb_message AS (
    id bigint,
    concurrency_key text,
    topic text,
    body jsonb,
    headers jsonb,
    priority integer,
    deliveries integer,
    created_at timestamptz,
    visible_at timestamptz,
    expires_at timestamptz
);

-- Returns the table name of an existing queue, or raises CB002 for an invalid
-- name and CB001 for a queue that does not exist.
CREATE FUNCTION cb_queue_table(queue text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_check_name('queue', queue);
    PERFORM 1 FROM cb_queues q WHERE q.name = queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'catbird: queue "%" is not defined', queue
            USING ERRCODE = 'CB001';
    END IF;
    RETURN 'cb_q_' || queue;
END;
$$;

-- Creates a queue. Creating a queue that exists is a no-op that keeps the
-- existing description and expiry.
CREATE FUNCTION cb_create_queue(
    name text,
    expires_at timestamptz DEFAULT NULL,
    description text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_table text := 'cb_q_' || cb_create_queue.name;
BEGIN
    PERFORM cb_check_name('queue', cb_create_queue.name);
    IF cb_create_queue.expires_at IS NOT NULL AND cb_create_queue.expires_at <= now() THEN
        RAISE EXCEPTION 'catbird: queue "%" expires_at % must be later than the creation time',
            cb_create_queue.name, cb_create_queue.expires_at
            USING ERRCODE = 'CB002';
    END IF;

    -- NOTE: serialises concurrent creators of one name, so exactly one of
    -- them creates the table and the others see the row and return.
    PERFORM pg_advisory_xact_lock(hashtext('cb_queue:' || cb_create_queue.name));
    PERFORM 1 FROM cb_queues q WHERE q.name = cb_create_queue.name;
    IF FOUND THEN
        RETURN;
    END IF;

    INSERT INTO cb_queues (name, description, expires_at)
    VALUES (cb_create_queue.name, nullif(cb_create_queue.description, ''), cb_create_queue.expires_at);

    EXECUTE format($sql$
        CREATE TABLE %I (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            concurrency_key text,
            topic text,
            body jsonb NOT NULL,
            headers jsonb,
            priority integer NOT NULL DEFAULT 0,
            deliveries integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            visible_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz
        )$sql$, v_table);
    -- The read order index leaves visible_at and deliveries out, so the update
    -- a read makes is a HOT update that adds no index entries.
    EXECUTE format('CREATE INDEX ON %I (priority DESC, id)', v_table);
    EXECUTE format('CREATE UNIQUE INDEX ON %I (concurrency_key) WHERE concurrency_key IS NOT NULL', v_table);
END;
$$;

-- Deletes a queue with all its messages. Returns whether it existed.
CREATE FUNCTION cb_delete_queue(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM cb_check_name('queue', cb_delete_queue.name);
    PERFORM pg_advisory_xact_lock(hashtext('cb_queue:' || cb_delete_queue.name));
    DELETE FROM cb_queues q WHERE q.name = cb_delete_queue.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_q_' || cb_delete_queue.name);
    RETURN true;
END;
$$;

-- Sends one message and returns its id. When another stored, unexpired
-- message of the queue holds the same concurrency key, nothing changes and
-- the id of that message is returned. An expired holder gives up its key.
CREATE FUNCTION cb_send(
    queue text,
    body jsonb,
    topic text DEFAULT NULL,
    concurrency_key text DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    visible_at timestamptz DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    priority integer DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
    v_key text := nullif(concurrency_key, '');
    v_headers jsonb := cb_check_headers(headers);
    v_id bigint;
BEGIN
    IF body IS NULL THEN
        RAISE EXCEPTION 'catbird: message body must not be SQL NULL (use the JSON value null)'
            USING ERRCODE = 'CB002';
    END IF;

    LOOP
        IF v_key IS NOT NULL THEN
            EXECUTE format('DELETE FROM %I WHERE concurrency_key = $1 AND expires_at <= now()', v_table)
                USING v_key;
        END IF;

        -- NOTE: ON CONFLICT DO NOTHING is the deduplication; with a
        -- concurrent sender of the same key it waits for that transaction.
        EXECUTE format($sql$
            INSERT INTO %I (concurrency_key, topic, body, headers, priority, visible_at, expires_at)
            VALUES ($1, $2, $3, $4, coalesce($5, 0), coalesce($6, now()), $7)
            ON CONFLICT (concurrency_key) WHERE concurrency_key IS NOT NULL DO NOTHING
            RETURNING id$sql$, v_table)
            INTO v_id
            USING v_key, nullif(topic, ''), body, v_headers, priority, visible_at, expires_at;
        IF v_id IS NOT NULL THEN
            PERFORM cb_wake('q', queue, visible_at);
            RETURN v_id;
        END IF;

        EXECUTE format('SELECT id FROM %I WHERE concurrency_key = $1', v_table)
            INTO v_id USING v_key;
        IF v_id IS NOT NULL THEN
            RETURN v_id;
        END IF;
        -- The holder was deleted between the insert and the lookup: try again.
    END LOOP;
END;
$$;

-- Sends one message per body, in body order, and returns the ids inserted in
-- ascending order. A body whose key is held by a stored message, or repeats a
-- key used earlier in the batch, is skipped.
CREATE FUNCTION cb_send(
    queue text,
    bodies jsonb[],
    topic text DEFAULT NULL,
    concurrency_keys text[] DEFAULT NULL,
    headers jsonb[] DEFAULT NULL,
    visible_at timestamptz DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    priority integer DEFAULT NULL
) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
    v_count integer := coalesce(cardinality(bodies), 0);
    v_inserted integer;
BEGIN
    IF concurrency_keys IS NOT NULL AND cardinality(concurrency_keys) <> v_count THEN
        RAISE EXCEPTION 'catbird: concurrency_keys length must match bodies length (% keys, % bodies)',
            cardinality(concurrency_keys), v_count
            USING ERRCODE = 'CB002';
    END IF;
    IF headers IS NOT NULL AND cardinality(headers) <> v_count THEN
        RAISE EXCEPTION 'catbird: headers length must match bodies length (% headers, % bodies)',
            cardinality(headers), v_count
            USING ERRCODE = 'CB002';
    END IF;
    IF v_count = 0 THEN
        RETURN;
    END IF;
    IF array_position(bodies, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'catbird: message body % must not be SQL NULL (use the JSON value null)',
            array_position(bodies, NULL)
            USING ERRCODE = 'CB002';
    END IF;
    IF headers IS NOT NULL AND EXISTS (
        SELECT 1 FROM unnest(headers) h
        WHERE h IS NOT NULL AND jsonb_typeof(h) NOT IN ('object', 'null')
    ) THEN
        RAISE EXCEPTION 'catbird: headers must be JSON objects'
            USING ERRCODE = 'CB002';
    END IF;

    IF concurrency_keys IS NOT NULL THEN
        EXECUTE format('DELETE FROM %I WHERE concurrency_key = ANY($1) AND expires_at <= now()', v_table)
            USING concurrency_keys;
    END IF;

    -- NOTE: ids are drawn in body order, but rows are inserted in key order,
    -- and repeated keys in body order so the first body wins. Two concurrent
    -- batches that share keys then wait for each other's uncommitted keys in
    -- one direction only. Inserting in body order could deadlock, because
    -- each batch could hold a key that the other one waits for.
    RETURN QUERY EXECUTE format($sql$
        WITH input AS (
            SELECT b.ord, b.body, nullif(k.key, '') AS key,
                   CASE WHEN jsonb_typeof(h.headers) = 'object' THEN h.headers END AS headers
            FROM unnest($1) WITH ORDINALITY AS b(body, ord)
            LEFT JOIN unnest($3) WITH ORDINALITY AS k(key, ord) USING (ord)
            LEFT JOIN unnest($4) WITH ORDINALITY AS h(headers, ord) USING (ord)
        ), numbered AS (
            -- PostgreSQL computes select-list expressions that the sort does
            -- not use after sorting, so nextval runs in body order.
            SELECT nextval(%2$L::regclass) AS id, input.*
            FROM input
            ORDER BY ord
        ), inserted AS (
            INSERT INTO %1$I (id, concurrency_key, topic, body, headers, priority, visible_at, expires_at)
            OVERRIDING SYSTEM VALUE
            SELECT id, key, $2, body, headers, coalesce($5, 0), coalesce($6, now()), $7
            FROM numbered
            ORDER BY key NULLS LAST, ord
            ON CONFLICT (concurrency_key) WHERE concurrency_key IS NOT NULL DO NOTHING
            RETURNING id
        )
        SELECT id FROM inserted ORDER BY id$sql$, v_table, pg_get_serial_sequence(v_table, 'id'))
        USING bodies, nullif(topic, ''), concurrency_keys, headers, priority, visible_at, expires_at;

    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted > 0 THEN
        PERFORM cb_wake('q', queue, visible_at);
    END IF;
END;
$$;

-- Reads up to `quantity` visible, unexpired messages, highest priority first
-- and oldest first within a priority, and hides them for `hide_for`
-- milliseconds. Rows locked by a concurrent reader are skipped, never waited
-- for. Each returned message shows its increased delivery count and new
-- visibility time.
CREATE FUNCTION cb_read(queue text, quantity integer, hide_for integer)
RETURNS SETOF cb_message
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
    v_now timestamptz := clock_timestamp();
BEGIN
    IF quantity IS NULL OR quantity <= 0 THEN
        RAISE EXCEPTION 'catbird: quantity must be greater than 0, got %', coalesce(quantity::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    IF hide_for IS NULL OR hide_for <= 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must be greater than 0 milliseconds, got %', coalesce(hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;

    -- NOTE: SKIP LOCKED is load-bearing: two readers never block each other
    -- and never receive the same message.
    RETURN QUERY EXECUTE format($sql$
        WITH selected AS (
            SELECT id FROM %1$I
            WHERE visible_at <= $1 AND (expires_at IS NULL OR expires_at > $1)
            ORDER BY priority DESC, id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ), updated AS (
            UPDATE %1$I m
            SET deliveries = m.deliveries + 1,
                visible_at = $1 + make_interval(secs => $3 / 1000.0)
            FROM selected s
            WHERE m.id = s.id
            RETURNING m.*
        )
        SELECT * FROM updated ORDER BY priority DESC, id$sql$, v_table)
        USING v_now, quantity, hide_for;
END;
$$;

-- Repeats cb_read every `poll_interval` milliseconds until it returns at least
-- one message or `poll_for` milliseconds have passed.
CREATE FUNCTION cb_read_poll(
    queue text,
    quantity integer,
    hide_for integer,
    poll_for integer DEFAULT 5000,
    poll_interval integer DEFAULT 200
) RETURNS SETOF cb_message
LANGUAGE plpgsql AS $$
DECLARE
    v_deadline timestamptz;
    v_found boolean;
    v_message cb_message;
BEGIN
    IF poll_for IS NULL OR poll_for <= 0 THEN
        RAISE EXCEPTION 'catbird: poll_for must be greater than 0 milliseconds, got %', coalesce(poll_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    IF poll_interval IS NULL OR poll_interval <= 0 THEN
        RAISE EXCEPTION 'catbird: poll_interval must be greater than 0 milliseconds, got %', coalesce(poll_interval::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    IF poll_interval >= poll_for THEN
        RAISE EXCEPTION 'catbird: poll_interval (% ms) must be less than poll_for (% ms)', poll_interval, poll_for
            USING ERRCODE = 'CB002';
    END IF;

    v_deadline := clock_timestamp() + make_interval(secs => poll_for / 1000.0);
    LOOP
        v_found := false;
        FOR v_message IN SELECT * FROM cb_read(queue, quantity, hide_for) LOOP
            v_found := true;
            RETURN NEXT v_message;
        END LOOP;
        IF v_found OR clock_timestamp() >= v_deadline THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(least(poll_interval / 1000.0,
                               extract(epoch FROM v_deadline - clock_timestamp())));
    END LOOP;
END;
$$;

-- Sets a message's visibility to now + `hide_for` milliseconds, whatever it
-- was. 0 makes the message visible at once. Returns whether it exists.
CREATE FUNCTION cb_hide(queue text, id bigint, hide_for integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
    v_count integer;
BEGIN
    IF hide_for IS NULL OR hide_for < 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must not be negative, got % milliseconds', coalesce(hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    EXECUTE format('UPDATE %I SET visible_at = clock_timestamp() + make_interval(secs => $2 / 1000.0) WHERE id = $1', v_table)
        USING id, hide_for;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END;
$$;

-- cb_hide for many messages; returns the ids that exist, ascending.
CREATE FUNCTION cb_hide(queue text, ids bigint[], hide_for integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
BEGIN
    IF hide_for IS NULL OR hide_for < 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must not be negative, got % milliseconds', coalesce(hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    RETURN QUERY EXECUTE format($sql$
        WITH updated AS (
            UPDATE %I SET visible_at = clock_timestamp() + make_interval(secs => $2 / 1000.0)
            WHERE id = ANY($1)
            RETURNING id
        )
        SELECT id FROM updated ORDER BY id$sql$, v_table)
        USING ids, hide_for;
END;
$$;

-- Deletes (acknowledges) one message. Returns whether it existed.
CREATE FUNCTION cb_delete(queue text, id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
    v_count integer;
BEGIN
    EXECUTE format('DELETE FROM %I WHERE id = $1', v_table) USING id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END;
$$;

-- cb_delete for many messages; returns the ids deleted, ascending.
CREATE FUNCTION cb_delete(queue text, ids bigint[]) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
BEGIN
    RETURN QUERY EXECUTE format($sql$
        WITH deleted AS (DELETE FROM %I WHERE id = ANY($1) RETURNING id)
        SELECT id FROM deleted ORDER BY id$sql$, v_table)
        USING ids;
END;
$$;

-- Extends the lease of a message that the caller read, but only while the
-- caller still holds it: a message whose delivery count moved on was read
-- again by someone else after the caller's lease ran out. Used by readers
-- whose handlers outlive hide_for. Returns whether the lease was extended.
CREATE FUNCTION cb_renew_message(queue text, id bigint, deliveries integer, hide_for integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := cb_queue_table(queue);
    v_count integer;
BEGIN
    IF hide_for IS NULL OR hide_for <= 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must be greater than 0 milliseconds, got %', coalesce(hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    EXECUTE format($sql$
        UPDATE %I SET visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
        WHERE id = $1 AND deliveries = $2$sql$, v_table)
        USING id, deliveries, hide_for;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END;
$$;

-- migrate:down

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_queues LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_q_' || v_name);
    END LOOP;
END;
$$;
DROP FUNCTION cb_renew_message(text, bigint, integer, integer);
DROP FUNCTION cb_delete(text, bigint[]);
DROP FUNCTION cb_delete(text, bigint);
DROP FUNCTION cb_hide(text, bigint[], integer);
DROP FUNCTION cb_hide(text, bigint, integer);
DROP FUNCTION cb_read_poll(text, integer, integer, integer, integer);
DROP FUNCTION cb_read(text, integer, integer);
DROP FUNCTION cb_send(text, jsonb[], text, text[], jsonb[], timestamptz, timestamptz, integer);
DROP FUNCTION cb_send(text, jsonb, text, text, jsonb, timestamptz, timestamptz, integer);
DROP FUNCTION cb_delete_queue(text);
DROP FUNCTION cb_create_queue(text, timestamptz, text);
DROP FUNCTION cb_queue_table(text);
DROP TYPE cb_message;
DROP TABLE cb_queues;
DROP FUNCTION cb_check_headers(jsonb);
DROP FUNCTION cb_wake(text, text, timestamptz);
DROP FUNCTION cb_wake_channel();
DROP FUNCTION cb_check_name(text, text);
