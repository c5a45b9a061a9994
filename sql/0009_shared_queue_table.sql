-- Version 9: all queues share one message table.
--
-- Until version 8 every queue had its own table, so every queue function
-- built its statements with format() and EXECUTE, and PostgreSQL planned
-- them on each call. With one table for all queues the functions hold static
-- SQL, which PL/pgSQL plans once per session, whatever the number of queues.
-- Measured with pgbench on 2 cores (8 clients, one send, read and delete
-- per message), a spike of this layout ran about 2,930 messages/s against
-- about 2,150 for the dynamic statements.
--
-- Reads stay apart: the read index starts with the queue id, so a busy
-- queue's dead index entries sit in its own key range and other queues'
-- reads never step over them. Message ids come from one sequence, so they
-- still grow with every send to a queue. The migration keeps the ids of
-- stored messages (the key is queue id and message id) and starts the
-- sequence above the largest one.
--
-- Deleting a queue deletes its rows. Every message function takes the
-- queue's advisory lock in share mode until its transaction ends, and
-- cb_delete_queue takes it exclusively. So a queue's deletion waits for the
-- open transactions that used the queue, as DROP TABLE did, and no message
-- outlives its queue.

-- migrate:up

ALTER TABLE cb_queues ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY;
ALTER TABLE cb_queues ADD CONSTRAINT cb_queues_id_key UNIQUE (id);

CREATE SEQUENCE cb_message_ids;

-- The columns after queue_id are those of cb_message, in its order.
CREATE TABLE cb_messages (
    queue_id integer NOT NULL,
    id bigint NOT NULL DEFAULT nextval('cb_message_ids'),
    concurrency_key text,
    topic text,
    body jsonb NOT NULL,
    headers jsonb,
    priority integer NOT NULL DEFAULT 0,
    deliveries integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    visible_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (queue_id, id)
) WITH (
    -- Room for the HOT updates of reads, and vacuum after 1 % of the rows
    -- changed (at least 1,000) rather than 20 %: acknowledged messages are
    -- deleted, so a busy queue makes dead rows quickly.
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER SEQUENCE cb_message_ids OWNED BY cb_messages.id;

-- The read order. It leaves visible_at and deliveries out, so the update a
-- read makes is a HOT update that adds no index entry.
CREATE INDEX cb_messages_read_idx ON cb_messages (queue_id, priority DESC, id);
CREATE UNIQUE INDEX cb_messages_key_idx ON cb_messages (queue_id, concurrency_key)
    WHERE concurrency_key IS NOT NULL;
-- NOTE: no index on expires_at. Garbage collection reads the whole table
-- once per pass, as version 8 read every queue table. With such an index,
-- plans made from statistics in which no message expired looked keyed
-- sends up through it and stepped over other queues' expired messages.

DO $$
DECLARE
    v_queue record;
    v_max bigint := 0;
    v_table_max bigint;
BEGIN
    FOR v_queue IN SELECT name, id FROM cb_queues ORDER BY name LOOP
        EXECUTE format($sql$
            INSERT INTO cb_messages (queue_id, id, concurrency_key, topic, body, headers,
                                     priority, deliveries, created_at, visible_at, expires_at)
            SELECT $1, id, concurrency_key, topic, body, headers,
                   priority, deliveries, created_at, visible_at, expires_at
            FROM %I$sql$, 'cb_q_' || v_queue.name)
            USING v_queue.id;
        -- NOTE: the identity sequence, not the stored rows, records the last
        -- id a queue handed out, so a deleted message's id is never reused.
        EXECUTE format('SELECT last_value FROM %s', pg_get_serial_sequence('cb_q_' || v_queue.name, 'id'))
            INTO v_table_max;
        v_max := greatest(v_max, v_table_max);
        EXECUTE format('DROP TABLE %I', 'cb_q_' || v_queue.name);
    END LOOP;
    PERFORM setval('cb_message_ids', v_max + 1, false);
END;
$$;

DROP FUNCTION cb_queue_table(text);

-- Raises the error of an operation on a queue that the caller found missing:
-- CB002 for an invalid name, CB001 for a valid one.
CREATE FUNCTION cb_queue_missing(queue text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_check_name('queue', queue);
    RAISE EXCEPTION 'catbird: queue "%" is not defined', queue
        USING ERRCODE = 'CB001';
END;
$$;

-- The second half of the advisory lock key of a queue. The first half is
-- the oid of this installation's cb_queues table, found the way the
-- functions find their tables. So the key does not depend on which schema
-- comes first on the caller's search_path, and two installations in one
-- database never share a key. Two names with one hash only make a deletion
-- wait for the other queue's open transactions.
CREATE FUNCTION cb_queue_lock_key(queue text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtext(queue)
$$;

-- Takes the queue's advisory lock in share mode until the transaction ends
-- and returns the queue's id. Raises CB001 for a queue that does not exist
-- and CB002 for an invalid name.
CREATE FUNCTION cb_use_queue(queue text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_id integer;
BEGIN
    PERFORM pg_advisory_xact_lock_shared('cb_queues'::regclass::oid::integer, cb_queue_lock_key(queue));
    SELECT q.id INTO v_id FROM cb_queues q WHERE q.name = queue;
    IF NOT FOUND THEN
        PERFORM cb_queue_missing(queue);
    END IF;
    -- NOTE: read committed looks the queue up after the lock, with a fresh
    -- snapshot. An older snapshot can still show a queue whose deletion
    -- committed, and a send through it would store a message for a queue
    -- that is gone. Locking the row raises a serialization failure then.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM 1 FROM cb_queues q WHERE q.id = v_id FOR KEY SHARE;
    END IF;
    RETURN v_id;
END;
$$;

CREATE OR REPLACE FUNCTION cb_create_queue(
    name text,
    expires_at timestamptz DEFAULT NULL,
    description text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM cb_check_name('queue', cb_create_queue.name);
    IF cb_create_queue.expires_at IS NOT NULL AND cb_create_queue.expires_at <= now() THEN
        RAISE EXCEPTION 'catbird: queue "%" expires_at % must be later than the creation time',
            cb_create_queue.name, cb_create_queue.expires_at
            USING ERRCODE = 'CB002';
    END IF;
    -- NOTE: share mode waits for a deletion of the name in progress, but not
    -- for transactions that use the queue. The unique name orders
    -- concurrent creators.
    PERFORM pg_advisory_xact_lock_shared('cb_queues'::regclass::oid::integer, cb_queue_lock_key(cb_create_queue.name));
    INSERT INTO cb_queues (name, description, expires_at)
    VALUES (cb_create_queue.name, nullif(cb_create_queue.description, ''), cb_create_queue.expires_at)
    ON CONFLICT (name) DO NOTHING;
END;
$$;

CREATE OR REPLACE FUNCTION cb_delete_queue(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id integer;
BEGIN
    PERFORM cb_check_name('queue', cb_delete_queue.name);
    -- NOTE: waits for the open transactions that used the queue, so their
    -- messages are committed and deleted below, not left behind.
    PERFORM pg_advisory_xact_lock('cb_queues'::regclass::oid::integer, cb_queue_lock_key(cb_delete_queue.name));
    DELETE FROM cb_queues q WHERE q.name = cb_delete_queue.name RETURNING q.id INTO v_id;
    IF v_id IS NULL THEN
        RETURN false;
    END IF;
    DELETE FROM cb_messages m WHERE m.queue_id = v_id;
    RETURN true;
END;
$$;

-- NOTE: the message functions run with sequential scans off. PL/pgSQL
-- keeps a generic plan per statement for the session, and one made while
-- the table was nearly empty would scan the whole table for every id.
-- cb_read also runs with bitmap scans off. A long queue of hidden messages
-- makes a bitmap scan and a sort look cheaper than the read index. But a
-- bitmap scan visits every index entry of the queue on every read and never
-- marks those of deleted messages dead. Reads of a busy queue slowed down
-- threefold within 30 seconds that way. An index scan in read order marks
-- them on the way, and later reads skip them.

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
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
    v_key text := nullif(cb_send.concurrency_key, '');
    v_headers jsonb := cb_send.headers;
    v_id bigint;
BEGIN
    v_queue_id := cb_use_queue(cb_send.queue);
    IF v_headers IS NOT NULL THEN
        v_headers := cb_check_headers(v_headers);
    END IF;
    IF cb_send.body IS NULL THEN
        RAISE EXCEPTION 'catbird: message body must not be SQL NULL (use the JSON value null)'
            USING ERRCODE = 'CB002';
    END IF;

    IF v_key IS NULL THEN
        INSERT INTO cb_messages (queue_id, topic, body, headers, priority, visible_at, expires_at)
        VALUES (v_queue_id, nullif(cb_send.topic, ''), cb_send.body, v_headers,
                coalesce(cb_send.priority, 0), coalesce(cb_send.visible_at, now()), cb_send.expires_at)
        RETURNING id INTO v_id;
        PERFORM cb_wake('q', cb_send.queue, cb_send.visible_at);
        RETURN v_id;
    END IF;

    LOOP
        DELETE FROM cb_messages m
        WHERE m.queue_id = v_queue_id AND m.concurrency_key = v_key AND m.expires_at <= now();

        -- NOTE: ON CONFLICT DO NOTHING is the deduplication. With a
        -- concurrent sender of the same key it waits for that transaction.
        INSERT INTO cb_messages (queue_id, concurrency_key, topic, body, headers, priority, visible_at, expires_at)
        VALUES (v_queue_id, v_key, nullif(cb_send.topic, ''), cb_send.body, v_headers,
                coalesce(cb_send.priority, 0), coalesce(cb_send.visible_at, now()), cb_send.expires_at)
        ON CONFLICT (queue_id, concurrency_key) WHERE concurrency_key IS NOT NULL DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NOT NULL THEN
            PERFORM cb_wake('q', cb_send.queue, cb_send.visible_at);
            RETURN v_id;
        END IF;

        SELECT m.id INTO v_id FROM cb_messages m
        WHERE m.queue_id = v_queue_id AND m.concurrency_key = v_key;
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
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
    v_count integer := coalesce(cardinality(cb_send.bodies), 0);
    v_inserted integer;
    v_expired tid[];
BEGIN
    v_queue_id := cb_use_queue(cb_send.queue);
    IF cb_send.concurrency_keys IS NOT NULL AND cardinality(cb_send.concurrency_keys) <> v_count THEN
        RAISE EXCEPTION 'catbird: concurrency_keys length must match bodies length (% keys, % bodies)',
            cardinality(cb_send.concurrency_keys), v_count
            USING ERRCODE = 'CB002';
    END IF;
    IF cb_send.headers IS NOT NULL AND cardinality(cb_send.headers) <> v_count THEN
        RAISE EXCEPTION 'catbird: headers length must match bodies length (% headers, % bodies)',
            cardinality(cb_send.headers), v_count
            USING ERRCODE = 'CB002';
    END IF;
    IF v_count = 0 THEN
        RETURN;
    END IF;
    IF array_position(cb_send.bodies, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'catbird: message body % must not be SQL NULL (use the JSON value null)',
            array_position(cb_send.bodies, NULL)
            USING ERRCODE = 'CB002';
    END IF;
    IF cb_send.headers IS NOT NULL AND EXISTS (
        SELECT 1 FROM unnest(cb_send.headers) h(value)
        WHERE h.value IS NOT NULL AND jsonb_typeof(h.value) NOT IN ('object', 'null')
    ) THEN
        RAISE EXCEPTION 'catbird: headers must be JSON objects'
            USING ERRCODE = 'CB002';
    END IF;

    IF cb_send.concurrency_keys IS NOT NULL THEN
        -- NOTE: expired holders are locked in key order, the order of the
        -- inserts below, so two batches that replace the same holders wait
        -- for each other in one direction only. The lookup is planned for
        -- the keys of each call. The delete is a statement of its own, so
        -- its snapshot includes the locked versions.
        EXECUTE $sql$
            SELECT ARRAY(
                SELECT e.ctid FROM cb_messages e
                WHERE e.queue_id = $1 AND e.concurrency_key = ANY($2) AND e.expires_at <= now()
                ORDER BY e.concurrency_key
                FOR UPDATE)$sql$
            INTO v_expired
            USING v_queue_id, cb_send.concurrency_keys;
        IF cardinality(v_expired) > 0 THEN
            DELETE FROM cb_messages m WHERE m.ctid = ANY(v_expired);
        END IF;
    END IF;

    -- NOTE: ids are drawn in body order, but rows are inserted in key order,
    -- and repeated keys in body order so the first body wins. Two concurrent
    -- batches that share keys then wait for each other's uncommitted keys in
    -- one direction only. Inserting in body order could deadlock, because
    -- each batch could hold a key that the other one waits for.
    RETURN QUERY
    WITH input AS (
        SELECT b.ord, b.body, nullif(k.key, '') AS key,
               CASE WHEN jsonb_typeof(h.header) = 'object' THEN h.header END AS header
        FROM unnest(cb_send.bodies) WITH ORDINALITY AS b(body, ord)
        LEFT JOIN unnest(cb_send.concurrency_keys) WITH ORDINALITY AS k(key, ord) USING (ord)
        LEFT JOIN unnest(cb_send.headers) WITH ORDINALITY AS h(header, ord) USING (ord)
    ), numbered AS (
        -- PostgreSQL computes select-list expressions that the sort does
        -- not use after sorting, so nextval runs in body order.
        SELECT nextval('cb_message_ids') AS new_id, input.*
        FROM input
        ORDER BY input.ord
    ), inserted AS (
        INSERT INTO cb_messages (queue_id, id, concurrency_key, topic, body, headers, priority, visible_at, expires_at)
        SELECT v_queue_id, n.new_id, n.key, nullif(cb_send.topic, ''), n.body, n.header,
               coalesce(cb_send.priority, 0), coalesce(cb_send.visible_at, now()), cb_send.expires_at
        FROM numbered n
        ORDER BY n.key NULLS LAST, n.ord
        ON CONFLICT (queue_id, concurrency_key) WHERE concurrency_key IS NOT NULL DO NOTHING
        RETURNING cb_messages.id
    )
    SELECT i.id FROM inserted i ORDER BY i.id;

    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted > 0 THEN
        PERFORM cb_wake('q', cb_send.queue, cb_send.visible_at);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION cb_read(queue text, quantity integer, hide_for integer)
RETURNS SETOF cb_message
LANGUAGE plpgsql SET enable_seqscan = off SET enable_bitmapscan = off AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
    v_now timestamptz := clock_timestamp();
    v_rows tid[];
BEGIN
    v_queue_id := cb_use_queue(cb_read.queue);
    IF cb_read.quantity IS NULL OR cb_read.quantity <= 0 THEN
        RAISE EXCEPTION 'catbird: quantity must be greater than 0, got %', coalesce(cb_read.quantity::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    IF cb_read.hide_for IS NULL OR cb_read.hide_for <= 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must be greater than 0 milliseconds, got %', coalesce(cb_read.hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;

    -- NOTE: SKIP LOCKED is load-bearing: two readers never block each other
    -- and never receive the same message.
    v_rows := ARRAY(
        SELECT m.ctid FROM cb_messages m
        WHERE m.queue_id = v_queue_id
          AND m.visible_at <= v_now AND (m.expires_at IS NULL OR m.expires_at > v_now)
        ORDER BY m.priority DESC, m.id
        LIMIT cb_read.quantity
        FOR UPDATE SKIP LOCKED);
    IF cardinality(v_rows) = 0 THEN
        RETURN;
    END IF;

    -- NOTE: the update finds the locked rows by their physical address,
    -- which nothing else can change while the lock is held. A join by id
    -- could look messages up by queue alone: a generic plan made while the
    -- table was small then read the whole queue for each message. It is a
    -- statement of its own, so its snapshot includes the version that was
    -- locked, even one that a transaction committed after the first
    -- statement began.
    RETURN QUERY
    WITH updated AS (
        UPDATE cb_messages m
        SET deliveries = m.deliveries + 1,
            visible_at = v_now + make_interval(secs => cb_read.hide_for / 1000.0)
        WHERE m.ctid = ANY(v_rows)
        RETURNING m.id, m.concurrency_key, m.topic, m.body, m.headers, m.priority,
                  m.deliveries, m.created_at, m.visible_at, m.expires_at
    )
    SELECT * FROM updated u ORDER BY u.priority DESC, u.id;
END;
$$;

CREATE OR REPLACE FUNCTION cb_hide(queue text, id bigint, hide_for integer) RETURNS boolean
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
BEGIN
    v_queue_id := cb_use_queue(cb_hide.queue);
    IF cb_hide.hide_for IS NULL OR cb_hide.hide_for < 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must not be negative, got % milliseconds', coalesce(cb_hide.hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    UPDATE cb_messages m
    SET visible_at = clock_timestamp() + make_interval(secs => cb_hide.hide_for / 1000.0)
    WHERE m.queue_id = v_queue_id AND m.id = cb_hide.id;
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION cb_hide(queue text, ids bigint[], hide_for integer) RETURNS SETOF bigint
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
BEGIN
    v_queue_id := cb_use_queue(cb_hide.queue);
    IF cb_hide.hide_for IS NULL OR cb_hide.hide_for < 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must not be negative, got % milliseconds', coalesce(cb_hide.hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    RETURN QUERY
    WITH updated AS (
        UPDATE cb_messages m
        SET visible_at = clock_timestamp() + make_interval(secs => cb_hide.hide_for / 1000.0)
        WHERE m.queue_id = v_queue_id AND m.id = ANY(cb_hide.ids)
        RETURNING m.id
    )
    SELECT u.id FROM updated u ORDER BY u.id;
END;
$$;

CREATE OR REPLACE FUNCTION cb_delete(queue text, id bigint) RETURNS boolean
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
BEGIN
    v_queue_id := cb_use_queue(cb_delete.queue);
    DELETE FROM cb_messages m WHERE m.queue_id = v_queue_id AND m.id = cb_delete.id;
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION cb_delete(queue text, ids bigint[]) RETURNS SETOF bigint
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
BEGIN
    v_queue_id := cb_use_queue(cb_delete.queue);
    RETURN QUERY
    WITH deleted AS (
        DELETE FROM cb_messages m
        WHERE m.queue_id = v_queue_id AND m.id = ANY(cb_delete.ids)
        RETURNING m.id
    )
    SELECT d.id FROM deleted d ORDER BY d.id;
END;
$$;

CREATE OR REPLACE FUNCTION cb_renew_message(queue text, id bigint, deliveries integer, hide_for integer)
RETURNS boolean
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    v_queue_id integer;
BEGIN
    v_queue_id := cb_use_queue(cb_renew_message.queue);
    IF cb_renew_message.hide_for IS NULL OR cb_renew_message.hide_for <= 0 THEN
        RAISE EXCEPTION 'catbird: hide_for must be greater than 0 milliseconds, got %',
            coalesce(cb_renew_message.hide_for::text, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    UPDATE cb_messages m
    SET visible_at = clock_timestamp() + make_interval(secs => cb_renew_message.hide_for / 1000.0)
    WHERE m.queue_id = v_queue_id AND m.id = cb_renew_message.id
      AND m.deliveries = cb_renew_message.deliveries;
    RETURN FOUND;
END;
$$;

-- Deletes the expired messages of every queue, and the messages left
-- behind by a deleted queue, and returns how many. A deletion in repeatable
-- read or serializable waits for the queue's open senders but cannot see
-- what they commit, so their messages outlive the queue until this pass. A
-- message that another transaction has locked is left for the next pass,
-- so two passes at once never wait for each other.
CREATE FUNCTION cb_delete_expired_messages() RETURNS integer
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    v_rows tid[];
    v_count integer;
BEGIN
    v_rows := ARRAY(
        SELECT e.ctid FROM cb_messages e
        WHERE e.expires_at <= now()
           OR NOT EXISTS (SELECT 1 FROM cb_queues q WHERE q.id = e.queue_id)
        FOR UPDATE OF e SKIP LOCKED);
    IF cardinality(v_rows) = 0 THEN
        RETURN 0;
    END IF;
    -- NOTE: planned for each pass with the rows found, so a large pass finds
    -- them by address. A plan made once on a small table compared every row
    -- of the table with every address.
    DELETE FROM cb_messages m WHERE m.ctid = ANY(v_rows);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- Runs a collection pass (see version 5); expired messages of every queue
-- go in one statement.
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

    v_report.expired_messages_deleted := cb_delete_expired_messages();

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

-- migrate:down

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

CREATE OR REPLACE FUNCTION cb_hide(queue text, id bigint, hide_for integer) RETURNS boolean
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

CREATE OR REPLACE FUNCTION cb_hide(queue text, ids bigint[], hide_for integer) RETURNS SETOF bigint
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

CREATE OR REPLACE FUNCTION cb_renew_message(queue text, id bigint, deliveries integer, hide_for integer)
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

DO $$
DECLARE
    v_queue record;
    v_table text;
    v_last bigint;
BEGIN
    SELECT last_value INTO v_last FROM cb_message_ids;
    FOR v_queue IN SELECT name, id FROM cb_queues ORDER BY name LOOP
        v_table := 'cb_q_' || v_queue.name;
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
        EXECUTE format('CREATE INDEX ON %I (priority DESC, id)', v_table);
        EXECUTE format('CREATE UNIQUE INDEX ON %I (concurrency_key) WHERE concurrency_key IS NOT NULL', v_table);
        EXECUTE format($sql$
            INSERT INTO %I (id, concurrency_key, topic, body, headers, priority, deliveries,
                            created_at, visible_at, expires_at)
            OVERRIDING SYSTEM VALUE
            SELECT id, concurrency_key, topic, body, headers, priority, deliveries,
                   created_at, visible_at, expires_at
            FROM cb_messages WHERE queue_id = $1$sql$, v_table)
            USING v_queue.id;
        -- NOTE: every queue continues above the last shared id, so its ids
        -- keep growing.
        PERFORM setval(pg_get_serial_sequence(v_table, 'id'), v_last, true);
    END LOOP;
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

DROP FUNCTION cb_delete_expired_messages();
DROP FUNCTION cb_queue_lock_key(text);
DROP FUNCTION cb_use_queue(text);
DROP FUNCTION cb_queue_missing(text);
DROP TABLE cb_messages;
ALTER TABLE cb_queues DROP COLUMN id;
