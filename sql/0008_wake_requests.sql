-- Version 8: wake-ups only where a worker waits for them.
--
-- A notification makes every notifying transaction of the server queue
-- for one lock at commit, through its WAL flush, so commits that notify
-- cannot be flushed together. Measured with pgbench on 2 cores, a send that
-- notified ran 4,600 calls/s from 8 clients and 12,100 without the
-- notification.
--
-- A loop that found no work and is about to wait calls cb_request_wake,
-- which stores a row in cb_wake_requests. cb_wake notifies only when such a
-- row exists, and deletes it: one notification per idle period, however many
-- sends, runs or steps follow, and none while every worker is busy or none
-- listens. A worker that hears the notification requests again when it next
-- runs out of work. Work for later still notifies every time, because a
-- worker learns its visibility time only from the notification.
--
-- A transaction that sent work without notifying may commit long after, when
-- a worker has gone idle. It holds an advisory lock in share mode until then,
-- and cb_request_wake reports it to the worker, which polls until it ends.
--
-- Rows are hints, as notifications are: a request left by a worker that
-- went away costs one notification, and the table is unlogged because a
-- crash that empties it only makes workers fall back to polling.

-- migrate:up

CREATE UNLOGGED TABLE cb_wake_requests (
    kind text NOT NULL,
    name text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- The second half of the advisory lock key of `kind` work of `name` in this
-- schema. The first half is 1667397495 ('cbww' in ASCII). Keys of two
-- integers never collide with the single bigint keys of other code. A sender that
-- found no request holds the lock in share mode until its transaction ends,
-- and cb_request_wake tries it exclusively. Two names with one hash only
-- cost a worker a few extra polls.
CREATE FUNCTION cb_wake_lock_key(kind text, name text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT hashtext(current_schema() || '|' || kind || '|' || name)
$$;

-- Asks that the next cb_wake for `kind` work of `name` notifies, and returns
-- whether an open transaction sent such work without a notification. `kind`
-- is one of q (queue), t (task runs), tf (task on-fail work), s (step runs
-- of '<flow>.<step>'), i (map items of '<flow>.<step>') and ff (flow on-fail
-- work). Idempotent. Work that committed before the request may have sent no
-- notification, so a caller looks for work once more after this call. When
-- the result is true, that work becomes visible when its transaction
-- commits, which sends no notification, so the caller keeps polling and
-- calls again until the result is false. The result is also true while another request
-- or a consuming send holds the lock, which only costs polls. Call it as a
-- statement of its own: the lock it takes makes every send of this work
-- wait until its transaction ends.
CREATE FUNCTION cb_request_wake(kind text, name text) RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_pending boolean;
BEGIN
    IF kind IS NULL OR kind NOT IN ('q', 't', 'tf', 's', 'i', 'ff') THEN
        RAISE EXCEPTION 'catbird: invalid wake-up kind "%": must be one of q, t, tf, s, i, ff',
            coalesce(kind, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    IF name IS NULL OR name = '' OR length(name) > 117 THEN
        RAISE EXCEPTION 'catbird: invalid wake-up name "%": must be 1 to 117 characters',
            coalesce(name, 'NULL')
            USING ERRCODE = 'CB002';
    END IF;
    -- NOTE: held until this transaction commits, the lock makes a sender
    -- that comes later wait for the request, so that it finds the request
    -- and notifies. Failing to take it means a sender with unannounced work
    -- is still open.
    v_pending := NOT pg_try_advisory_xact_lock(1667397495, cb_wake_lock_key(kind, name));
    -- NOTE: a visible request is enough, even one that a send is consuming:
    -- that send notifies when it commits. Inserting regardless would wait
    -- for the consuming transaction. The insert can still wait for a send
    -- that consumes a request committed after this lookup; that send
    -- notifies as well.
    PERFORM FROM cb_wake_requests r WHERE r.kind = kind AND r.name = name;
    IF NOT FOUND THEN
        INSERT INTO cb_wake_requests AS r (kind, name) VALUES (kind, name)
        ON CONFLICT ON CONSTRAINT cb_wake_requests_pkey DO NOTHING;
    END IF;
    RETURN v_pending;
END;
$$;

-- Sends one wake-up hint. Work visible now notifies only when a worker
-- requested it, and consumes the request, so later calls stay silent until
-- the worker requests again. In read committed, the transaction holds a
-- share lock on the work's key until it ends. A worker that stores a
-- request meanwhile finds the lock taken and keeps polling. A request that another transaction is
-- consuming still counts: that transaction may roll back, and skipping it
-- without notifying could leave this transaction's work unannounced. Work
-- for later always notifies and leaves the request alone: a worker cannot
-- find it by claiming, so it relies on the hint to set a timer. NOTIFY folds
-- identical payloads within a transaction, so a batch that shares one
-- visibility time costs one notification.
CREATE OR REPLACE FUNCTION cb_wake(kind text, name text, visible_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    IF visible_at > now() THEN
        PERFORM pg_notify(cb_wake_channel(),
                          kind || '|' || name || '|' || extract(epoch FROM visible_at)::text);
        RETURN;
    END IF;
    -- NOTE: a snapshot older than this statement (repeatable read or
    -- serializable) misses newer requests and fails to lock a request that
    -- another transaction consumed, so such a transaction always notifies.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM pg_notify(cb_wake_channel(), kind || '|' || name || '|');
        RETURN;
    END IF;
    -- NOTE: this transaction may commit long after this statement. A worker
    -- that stores a request meanwhile finds this lock taken and keeps
    -- polling until it is released. A request stored before this point is
    -- found below, because the lock comes before the lookup.
    PERFORM pg_advisory_xact_lock_shared(1667397495, cb_wake_lock_key(kind, name));
    PERFORM FROM cb_wake_requests r WHERE r.kind = kind AND r.name = name;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- NOTE: SKIP LOCKED keeps this transaction from waiting for another
    -- one that consumes the same request, which may hold it until a long
    -- transaction of its caller ends.
    DELETE FROM cb_wake_requests r
    WHERE (r.kind, r.name) = (
        SELECT l.kind, l.name FROM cb_wake_requests l
        WHERE l.kind = kind AND l.name = name
        FOR UPDATE SKIP LOCKED
    );
    PERFORM pg_notify(cb_wake_channel(), kind || '|' || name || '|');
END;
$$;

-- migrate:down

CREATE OR REPLACE FUNCTION cb_wake(kind text, name text, visible_at timestamptz) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(
        cb_wake_channel(),
        kind || '|' || name || '|' ||
            CASE WHEN visible_at IS NULL OR visible_at <= now() THEN ''
                 ELSE extract(epoch FROM visible_at)::text END
    )
$$;
DROP FUNCTION cb_request_wake(text, text);
DROP FUNCTION cb_wake_lock_key(text, text);
DROP TABLE cb_wake_requests;
