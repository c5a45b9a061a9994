-- Version 9: per-queue functions with static SQL.
--
-- Until this version, cb_send, cb_read and cb_delete built their statement
-- for the queue's table with format() and ran it with EXECUTE. PostgreSQL
-- parses, analyses and plans such a statement on every call, and for one
-- message per call that cost as much as the statement itself.
--
-- cb_create_queue now also creates five functions for the queue, whose SQL
-- names the queue's table directly. PL/pgSQL prepares their statements once
-- per session and then reuses the plans:
--
--   cbqs_<queue>   send one message        cbqr_<queue>   read
--   cbqm_<queue>   send many messages      cbqd_<queue>   delete one
--                                          cbqx_<queue>   delete many
--
-- The 5-character prefix keeps the names within 63 bytes, like the table's.
-- cb_send, cb_read and cb_delete keep their signatures and behaviour: they
-- check the queue, then call its function with a one-line EXECUTE, which is
-- much cheaper to plan than the statement it replaces. Clients that know the
-- queue call its functions directly. Measured with pgbench (8 clients, 2
-- cores) on one send, read and delete per message: 2,205 messages/s through
-- the old functions, 2,454 through the new cb_* functions, 2,926 through the
-- queue's own functions, and 3,588 for plain statements on a bare table.
--
-- The statements of each function are those of the version 1 function it
-- replaces. cb_delete_queue drops the functions with the table.

-- migrate:up

-- Raises CB002 unless the arguments of a batch send agree: as many keys and
-- headers as bodies, no SQL NULL body, headers that are JSON objects or null.
CREATE FUNCTION cb_check_send_batch(bodies jsonb[], concurrency_keys text[], headers jsonb[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_count integer := coalesce(cardinality(bodies), 0);
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
END;
$$;

-- Raises CB002 unless a read asks for at least one message and a lease of
-- at least one millisecond.
CREATE FUNCTION cb_check_read(quantity integer, hide_for integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF quantity IS NULL OR quantity <= 0 THEN
        RAISE EXCEPTION 'catbird: quantity must be greater than 0, got %', coalesce(quantity::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    IF hide_for IS NULL OR hide_for <= 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must be greater than 0 milliseconds, got %', coalesce(hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
END;
$$;

-- The name of one of a queue's functions: op is s (send one), m (send
-- many), r (read), d (delete one) or x (delete many).
CREATE FUNCTION cb_queue_function(op text, queue text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'cbq' || op || '_' || queue
$$;

-- Creates or replaces the five functions of an existing queue. In the
-- generated functions a name shared by a parameter and a column means the
-- column, and the parameters are used by position ($1, $2, ...).
--
-- NOTE: a session keeps the plans of these statements, and PostgreSQL
-- switches to a generic plan after five calls. A generic plan made while
-- the table was nearly empty scanned the whole table to update or delete
-- rows by id, and every call then read all the dead rows that churn leaves
-- behind: batches of 100 fell from 320 to 70 calls per second within a
-- minute. With sequential scans off, the plans take the indexes, which is
-- right for every statement here at any table size.
CREATE FUNCTION cb_create_queue_functions(queue text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_table text := 'cb_q_' || queue;
BEGIN
    EXECUTE format($gen$
        CREATE OR REPLACE FUNCTION %1$I(
            body jsonb,
            topic text DEFAULT NULL,
            concurrency_key text DEFAULT NULL,
            headers jsonb DEFAULT NULL,
            visible_at timestamptz DEFAULT NULL,
            expires_at timestamptz DEFAULT NULL,
            priority integer DEFAULT NULL
        ) RETURNS bigint
        LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
        #variable_conflict use_column
        DECLARE
            v_key text := nullif($3, '');
            v_headers jsonb := cb_check_headers($4);
            v_id bigint;
        BEGIN
            IF $1 IS NULL THEN
                RAISE EXCEPTION 'catbird: message body must not be SQL NULL (use the JSON value null)'
                    USING ERRCODE = 'CB002';
            END IF;
            LOOP
                IF v_key IS NOT NULL THEN
                    DELETE FROM %2$I m WHERE m.concurrency_key = v_key AND m.expires_at <= now();
                END IF;
                INSERT INTO %2$I AS m (concurrency_key, topic, body, headers, priority, visible_at, expires_at)
                VALUES (v_key, nullif($2, ''), $1, v_headers, coalesce($7, 0), coalesce($5, now()), $6)
                ON CONFLICT (concurrency_key) WHERE concurrency_key IS NOT NULL DO NOTHING
                RETURNING m.id INTO v_id;
                IF v_id IS NOT NULL THEN
                    PERFORM cb_wake('q', %3$L, $5);
                    RETURN v_id;
                END IF;
                SELECT m.id INTO v_id FROM %2$I m WHERE m.concurrency_key = v_key;
                IF v_id IS NOT NULL THEN
                    RETURN v_id;
                END IF;
            END LOOP;
        END;
        $fn$ $gen$, cb_queue_function('s', queue), v_table, queue);

    EXECUTE format($gen$
        CREATE OR REPLACE FUNCTION %1$I(
            bodies jsonb[],
            topic text DEFAULT NULL,
            concurrency_keys text[] DEFAULT NULL,
            headers jsonb[] DEFAULT NULL,
            visible_at timestamptz DEFAULT NULL,
            expires_at timestamptz DEFAULT NULL,
            priority integer DEFAULT NULL
        ) RETURNS SETOF bigint
        LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
        #variable_conflict use_column
        DECLARE
            v_inserted integer;
        BEGIN
            PERFORM cb_check_send_batch($1, $3, $4);
            IF coalesce(cardinality($1), 0) = 0 THEN
                RETURN;
            END IF;
            IF $3 IS NOT NULL THEN
                DELETE FROM %2$I m WHERE m.concurrency_key = ANY($3) AND m.expires_at <= now();
            END IF;
            RETURN QUERY
                WITH input AS (
                    SELECT b.ord, b.body, nullif(k.key, '') AS key,
                           CASE WHEN jsonb_typeof(h.headers) = 'object' THEN h.headers END AS headers
                    FROM unnest($1) WITH ORDINALITY AS b(body, ord)
                    LEFT JOIN unnest($3) WITH ORDINALITY AS k(key, ord) USING (ord)
                    LEFT JOIN unnest($4) WITH ORDINALITY AS h(headers, ord) USING (ord)
                ), numbered AS (
                    SELECT nextval(%4$L::regclass) AS id, input.*
                    FROM input
                    ORDER BY ord
                ), inserted AS (
                    INSERT INTO %2$I AS m (id, concurrency_key, topic, body, headers, priority, visible_at, expires_at)
                    OVERRIDING SYSTEM VALUE
                    SELECT n.id, n.key, nullif($2, ''), n.body, n.headers, coalesce($7, 0), coalesce($5, now()), $6
                    FROM numbered n
                    ORDER BY n.key NULLS LAST, n.ord
                    ON CONFLICT (concurrency_key) WHERE concurrency_key IS NOT NULL DO NOTHING
                    RETURNING m.id
                )
                SELECT i.id FROM inserted i ORDER BY i.id;
            GET DIAGNOSTICS v_inserted = ROW_COUNT;
            IF v_inserted > 0 THEN
                PERFORM cb_wake('q', %3$L, $5);
            END IF;
        END;
        $fn$ $gen$, cb_queue_function('m', queue), v_table, queue,
        pg_get_serial_sequence(v_table, 'id'));

    EXECUTE format($gen$
        CREATE OR REPLACE FUNCTION %1$I(quantity integer, hide_for integer)
        RETURNS SETOF cb_message
        LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
        #variable_conflict use_column
        DECLARE
            v_now timestamptz := clock_timestamp();
        BEGIN
            PERFORM cb_check_read($1, $2);
            RETURN QUERY
                WITH selected AS (
                    SELECT m.id FROM %2$I m
                    WHERE m.visible_at <= v_now AND (m.expires_at IS NULL OR m.expires_at > v_now)
                    ORDER BY m.priority DESC, m.id
                    LIMIT $1
                    FOR UPDATE SKIP LOCKED
                ), updated AS (
                    UPDATE %2$I m
                    SET deliveries = m.deliveries + 1,
                        visible_at = v_now + make_interval(secs => $2 / 1000.0)
                    FROM selected s
                    WHERE m.id = s.id
                    RETURNING m.*
                )
                SELECT * FROM updated u ORDER BY u.priority DESC, u.id;
        END;
        $fn$ $gen$, cb_queue_function('r', queue), v_table);

    EXECUTE format($gen$
        CREATE OR REPLACE FUNCTION %1$I(id bigint) RETURNS boolean
        LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
        #variable_conflict use_column
        BEGIN
            DELETE FROM %2$I m WHERE m.id = $1;
            RETURN FOUND;
        END;
        $fn$ $gen$, cb_queue_function('d', queue), v_table);

    EXECUTE format($gen$
        CREATE OR REPLACE FUNCTION %1$I(ids bigint[]) RETURNS SETOF bigint
        LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
        #variable_conflict use_column
        BEGIN
            RETURN QUERY
                WITH deleted AS (DELETE FROM %2$I m WHERE m.id = ANY($1) RETURNING m.id)
                SELECT d.id FROM deleted d ORDER BY d.id;
        END;
        $fn$ $gen$, cb_queue_function('x', queue), v_table);
END;
$$;

-- Drops the five functions of a queue, those that exist.
CREATE FUNCTION cb_drop_queue_functions(queue text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_op text;
BEGIN
    FOREACH v_op IN ARRAY ARRAY['s', 'm', 'r', 'd', 'x'] LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS %I', cb_queue_function(v_op, queue));
    END LOOP;
END;
$$;

-- Creates a queue. Creating a queue that exists is a no-op that keeps the
-- existing description and expiry.
CREATE OR REPLACE FUNCTION cb_create_queue(
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
    PERFORM cb_create_queue_functions(cb_create_queue.name);
END;
$$;

-- Deletes a queue with all its messages and its functions. Returns whether
-- it existed.
CREATE OR REPLACE FUNCTION cb_delete_queue(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM cb_check_name('queue', cb_delete_queue.name);
    PERFORM pg_advisory_xact_lock(hashtext('cb_queue:' || cb_delete_queue.name));
    DELETE FROM cb_queues q WHERE q.name = cb_delete_queue.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM cb_drop_queue_functions(cb_delete_queue.name);
    EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_q_' || cb_delete_queue.name);
    RETURN true;
END;
$$;

-- Sends one message through the queue's cbqs_ function.
CREATE OR REPLACE FUNCTION cb_send(
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
    v_id bigint;
BEGIN
    PERFORM cb_queue_table(queue);
    EXECUTE format('SELECT %I($1, $2, $3, $4, $5, $6, $7)', cb_queue_function('s', queue))
        INTO v_id
        USING body, topic, concurrency_key, headers, visible_at, expires_at, priority;
    RETURN v_id;
END;
$$;

-- Sends many messages through the queue's cbqm_ function.
CREATE OR REPLACE FUNCTION cb_send(
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
BEGIN
    PERFORM cb_queue_table(queue);
    RETURN QUERY EXECUTE format('SELECT * FROM %I($1, $2, $3, $4, $5, $6, $7)', cb_queue_function('m', queue))
        USING bodies, topic, concurrency_keys, headers, visible_at, expires_at, priority;
END;
$$;

-- Reads through the queue's cbqr_ function.
CREATE OR REPLACE FUNCTION cb_read(queue text, quantity integer, hide_for integer)
RETURNS SETOF cb_message
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_queue_table(queue);
    RETURN QUERY EXECUTE format('SELECT * FROM %I($1, $2)', cb_queue_function('r', queue))
        USING quantity, hide_for;
END;
$$;

-- Deletes one message through the queue's cbqd_ function.
CREATE OR REPLACE FUNCTION cb_delete(queue text, id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_found boolean;
BEGIN
    PERFORM cb_queue_table(queue);
    EXECUTE format('SELECT %I($1)', cb_queue_function('d', queue))
        INTO v_found
        USING id;
    RETURN v_found;
END;
$$;

-- Deletes many messages through the queue's cbqx_ function.
CREATE OR REPLACE FUNCTION cb_delete(queue text, ids bigint[]) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_queue_table(queue);
    RETURN QUERY EXECUTE format('SELECT * FROM %I($1)', cb_queue_function('x', queue))
        USING ids;
END;
$$;

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_queues LOOP
        PERFORM cb_create_queue_functions(v_name);
    END LOOP;
END;
$$;

-- migrate:down

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_queues LOOP
        PERFORM cb_drop_queue_functions(v_name);
    END LOOP;
END;
$$;

-- The version 1 definitions, which build their statements with format().
CREATE OR REPLACE FUNCTION cb_create_queue(
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

CREATE OR REPLACE FUNCTION cb_delete_queue(name text) RETURNS boolean
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

CREATE OR REPLACE FUNCTION cb_send(
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

CREATE OR REPLACE FUNCTION cb_send(
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

CREATE OR REPLACE FUNCTION cb_read(queue text, quantity integer, hide_for integer)
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

CREATE OR REPLACE FUNCTION cb_delete(queue text, id bigint) RETURNS boolean
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

CREATE OR REPLACE FUNCTION cb_delete(queue text, ids bigint[]) RETURNS SETOF bigint
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

DROP FUNCTION cb_drop_queue_functions(text);
DROP FUNCTION cb_create_queue_functions(text);
DROP FUNCTION cb_queue_function(text, text);
DROP FUNCTION cb_check_read(integer, integer);
DROP FUNCTION cb_check_send_batch(jsonb[], text[], jsonb[]);
