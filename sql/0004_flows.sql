-- Version 4: flows, DAG workflows of steps.
--
-- A flow definition lives in cb_flows with one cb_flow_steps row per step.
-- Each flow owns two tables: cb_f_<name> with one row per flow run, and
-- cb_s_<name> with one row per step of every run. Every transition of a run
-- (a step completing, failing, being skipped or canceled, a signal, an early
-- completion, a cancel request) first locks the run's row, so transitions of
-- one run are serialised and never race; transitions of different runs never
-- wait for each other.
--
-- Wake-up payloads on cb_wake_channel(): 's|<flow>.<step>|<epoch>' step runs
-- became claimable, 'ff|<flow>|' on-fail work, 'fx|<flow>|<run id>' the run
-- stopped (failed, canceled or completed early): running steps should stop.

-- migrate:up

CREATE TABLE cb_flows (
    name text PRIMARY KEY,
    description text,
    output_priority text[] NOT NULL,
    retention_period bigint NOT NULL DEFAULT 0 CHECK (retention_period >= 0),
    has_on_fail boolean NOT NULL DEFAULT false,
    -- The normalised definition, compared when the flow is created again.
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cb_flow_steps (
    flow_name text NOT NULL REFERENCES cb_flows (name) ON DELETE CASCADE,
    step_name text NOT NULL,
    position integer NOT NULL,
    description text,
    kind text NOT NULL DEFAULT 'normal',
    signal boolean NOT NULL DEFAULT false,
    condition text,
    condition_parsed jsonb,
    -- Every dependency, in declaration order.
    depends_on text[] NOT NULL DEFAULT '{}',
    -- Dependencies whose output the step receives (depends_on minus the
    -- ignored ones), in declaration order.
    inputs text[] NOT NULL DEFAULT '{}',
    -- Dependencies declared optional: the step runs when they were skipped.
    optional text[] NOT NULL DEFAULT '{}',
    -- The steps that depend on this one.
    dependents text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (flow_name, step_name)
);

-- One flow run, as cb_get_flow_run and cb_list_flow_runs return it.
CREATE TYPE cb_flow_run AS (
    id bigint,
    concurrency_key text,
    input jsonb,
    headers jsonb,
    priority integer,
    status text,
    output jsonb,
    error_message text,
    cancel_reason text,
    failed_step_name text,
    failed_step_input jsonb,
    failed_step_signal jsonb,
    failed_step_attempts integer,
    visible_at timestamptz,
    expires_at timestamptz,
    started_at timestamptz,
    completed_at timestamptz,
    failed_at timestamptz,
    canceled_at timestamptz,
    cancel_requested_at timestamptz,
    expired_at timestamptz,
    on_fail_status text,
    on_fail_attempts integer,
    on_fail_error text
);

-- One step of one flow run.
CREATE TYPE cb_step_run AS (
    id bigint,
    flow_run_id bigint,
    step_name text,
    position integer,
    status text,
    priority integer,
    attempts integer,
    output jsonb,
    error_message text,
    signal_input jsonb,
    created_at timestamptz,
    visible_at timestamptz,
    started_at timestamptz,
    completed_at timestamptz,
    failed_at timestamptz,
    skipped_at timestamptz,
    canceled_at timestamptz
);

-- A claimed step run, as cb_claim_steps returns it. `dependencies` maps each
-- completed dependency whose output the step receives to that output.
CREATE TYPE cb_claimed_step AS (
    id bigint,
    flow_run_id bigint,
    attempts integer,
    priority integer,
    input jsonb,
    signal_input jsonb,
    dependencies jsonb,
    started_at timestamptz
);

-- A failed flow run awaiting its on-fail handler.
CREATE TYPE cb_claimed_flow_on_fail AS (
    id bigint,
    input jsonb,
    error_message text,
    failed_step_name text,
    failed_step_input jsonb,
    failed_step_signal jsonb,
    failed_step_attempts integer,
    on_fail_attempts integer,
    started_at timestamptz,
    failed_at timestamptz,
    concurrency_key text
);

-- Returns the run table of an existing flow, or raises CB002 for an invalid
-- name and CB001 for a flow that does not exist.
CREATE FUNCTION cb_flow_table(flow text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_check_name('flow', flow);
    PERFORM 1 FROM cb_flows f WHERE f.name = flow;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'catbird: flow "%" is not defined', flow
            USING ERRCODE = 'CB001';
    END IF;
    RETURN 'cb_f_' || flow;
END;
$$;

-- Raises CB002 with `message` about flow `flow`.
CREATE FUNCTION cb_flow_definition_error(flow text, message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'catbird: invalid flow "%": %', flow, message
        USING ERRCODE = 'CB002';
END;
$$;

-- Validates a step list in the shape
--   [{"name": "validate"},
--    {"name": "charge", "depends_on": ["validate" | {"name": "validate",
--     "optional": bool, "ignore_output": bool}], "condition": "validate.ok",
--     "signal": bool, "description": "..."}]
-- and returns it normalised: every step with name, description, depends_on
-- (objects with name, optional, ignore_output), condition, signal and kind,
-- in definition order. Raises CB002 naming the flow and step for every
-- definition error.
CREATE FUNCTION cb_normalize_flow_steps(flow text, steps jsonb) RETURNS jsonb
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

-- Returns one dependency cycle of normalised steps as 'a -> b -> a', or NULL
-- when the graph has none.
CREATE FUNCTION cb_find_flow_cycle(steps jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_remaining text[];
    v_removed boolean;
    v_name text;
    v_path text[];
    v_next text;
BEGIN
    SELECT array_agg(s ->> 'name') INTO v_remaining FROM jsonb_array_elements(steps) s;

    -- Kahn's algorithm: repeatedly drop steps whose dependencies are all
    -- dropped. What remains lies on a cycle or depends on one.
    LOOP
        v_removed := false;
        FOR v_name IN
            SELECT s ->> 'name' FROM jsonb_array_elements(steps) s
            WHERE s ->> 'name' = ANY(v_remaining)
              AND NOT EXISTS (
                  SELECT 1 FROM jsonb_array_elements(s -> 'depends_on') d
                  WHERE d ->> 'name' = ANY(v_remaining))
        LOOP
            v_remaining := array_remove(v_remaining, v_name);
            v_removed := true;
        END LOOP;
        EXIT WHEN NOT v_removed;
    END LOOP;
    IF cardinality(v_remaining) = 0 THEN
        RETURN NULL;
    END IF;

    -- Walk dependencies inside the remainder until a step repeats.
    v_name := v_remaining[1];
    v_path := ARRAY[v_name];
    LOOP
        SELECT d ->> 'name' INTO v_next
        FROM jsonb_array_elements(steps) s, jsonb_array_elements(s -> 'depends_on') d
        WHERE s ->> 'name' = v_name AND d ->> 'name' = ANY(v_remaining)
        LIMIT 1;
        IF v_next = ANY(v_path) THEN
            v_path := v_path[array_position(v_path, v_next):] || v_next;
            RETURN array_to_string(v_path, ' -> ');
        END IF;
        v_path := v_path || v_next;
        v_name := v_next;
    END LOOP;
END;
$$;

-- Describes the first difference between two normalised definitions, or
-- returns NULL when they are equal.
CREATE FUNCTION cb_flow_definition_difference(stored jsonb, given jsonb) RETURNS text
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

-- Creates a flow from its step list (see cb_normalize_flow_steps). Creating
-- a flow again with the same definition is a no-op; a different definition
-- raises CB002 saying what differs (delete the flow first to replace it).
-- `output_priority` lists the steps whose output becomes the flow's output,
-- first completed first; by default the steps no other step depends on, in
-- definition order. `retention_period` is in milliseconds.
CREATE FUNCTION cb_create_flow(
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

-- Deletes a flow with all its runs. Returns whether it existed.
CREATE FUNCTION cb_delete_flow(name text) RETURNS boolean
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

-- The condition context of a step run: the flow input, the outputs of the
-- completed dependencies the step reads, and its signal input if delivered.
CREATE FUNCTION cb_step_context(flow text, run_id bigint, flow_input jsonb, inputs text[],
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

-- Moves the steps of a run whose dependencies are all resolved forward:
-- waiting for a signal, skipped (condition false) or queued. Skips resolve
-- further steps, so it repeats until nothing changes; then, when every step
-- is resolved, it completes the run. The caller holds the run's row lock.
CREATE FUNCTION cb_flow_advance(flow text, run_id bigint) RETURNS void
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

-- Counts one step of a run as resolved (completed or skipped): its
-- dependents wait for one dependency less, and the run for one step less.
CREATE FUNCTION cb_flow_resolve(flow text, run_id bigint, dependents text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(dependents) > 0 THEN
        EXECUTE format($sql$
            UPDATE %I SET remaining_dependencies = remaining_dependencies - 1
            WHERE flow_run_id = $1 AND step_name = ANY($2)$sql$, 'cb_s_' || flow)
            USING run_id, dependents;
    END IF;
    EXECUTE format('UPDATE %I SET remaining_steps = remaining_steps - 1 WHERE id = $1', 'cb_f_' || flow)
        USING run_id;
END;
$$;

-- Fails a started run: records the failed step, fails every unfinished step,
-- queues on-fail work when the flow has an on-fail handler, and tells
-- running steps to stop. The caller holds the run's row lock.
CREATE FUNCTION cb_flow_mark_failed(flow text, run_id bigint, error_message text, step_name text,
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

-- Locks a run's row and returns its status; NULL when the run does not
-- exist.
CREATE FUNCTION cb_flow_lock_run(flow text, run_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    EXECUTE format('SELECT status FROM %I WHERE id = $1 FOR UPDATE', 'cb_f_' || flow) INTO v_status USING run_id;
    RETURN v_status;
END;
$$;

-- Creates a flow run and returns its id. The steps without dependencies
-- become claimable at `visible_at` (default now). While a started run of
-- the flow holds the concurrency key, nothing is created and that run's id
-- is returned.
CREATE FUNCTION cb_run_flow(
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
    v_runs text := cb_flow_table(name);
    v_key text := nullif(concurrency_key, '');
    v_headers jsonb := cb_check_headers(headers);
    v_visible timestamptz := coalesce(visible_at, now());
    v_id bigint;
BEGIN
    IF input IS NULL THEN
        RAISE EXCEPTION 'catbird: flow input must not be SQL NULL (use the JSON value null)'
            USING ERRCODE = 'CB002';
    END IF;

    LOOP
        IF v_key IS NOT NULL THEN
            EXECUTE format('SELECT id FROM %I WHERE concurrency_key = $1 AND status = ''started''', v_runs)
                INTO v_id USING v_key;
            IF v_id IS NOT NULL THEN
                RETURN v_id;
            END IF;
        END IF;

        -- NOTE: ON CONFLICT is the deduplication against a concurrent caller.
        EXECUTE format($sql$
            INSERT INTO %I (concurrency_key, input, headers, priority, visible_at, expires_at, remaining_steps)
            VALUES ($1, $2, $3, coalesce($4, 0), $5, $6,
                    (SELECT count(*) FROM cb_flow_steps WHERE flow_name = $7))
            ON CONFLICT (concurrency_key) WHERE concurrency_key IS NOT NULL AND status = 'started' DO NOTHING
            RETURNING id$sql$, v_runs)
            INTO v_id
            USING v_key, input, v_headers, priority, v_visible, expires_at, name;
        EXIT WHEN v_id IS NOT NULL;
    END LOOP;

    EXECUTE format($sql$
        INSERT INTO %I (flow_run_id, step_name, position, status, remaining_dependencies, priority, visible_at)
        SELECT $1, d.step_name, d.position, 'waiting_for_dependencies', cardinality(d.depends_on), coalesce($2, 0), $3
        FROM cb_flow_steps d WHERE d.flow_name = $4
        ORDER BY d.position$sql$, 'cb_s_' || name)
        USING v_id, priority, v_visible, name;

    PERFORM cb_flow_advance(name, v_id);
    RETURN v_id;
END;
$$;

-- Claims up to `quantity` runs of one step: queued or started, visible, of
-- flow runs that are started and not expired; highest priority first, then
-- oldest. Each claimed step run becomes started with its attempt count
-- raised and is leased for `hide_for` milliseconds.
CREATE FUNCTION cb_claim_steps(flow text, step text, quantity integer, hide_for integer)
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

-- Extends the lease of started step runs. Returns the ids extended.
CREATE FUNCTION cb_hide_steps(flow text, ids bigint[], hide_for integer) RETURNS SETOF bigint
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

-- Returns the run id of a step run held by `attempt`, locking the run's row
-- first so every transition of one run is serialised. NULL when the attempt
-- no longer holds the step run.
CREATE FUNCTION cb_flow_lock_step(flow text, id bigint, attempt integer, OUT run_id bigint, OUT run_status text)
LANGUAGE plpgsql AS $$
DECLARE
    v_held boolean;
BEGIN
    PERFORM cb_flow_table(flow);
    EXECUTE format('SELECT flow_run_id FROM %I WHERE id = $1', 'cb_s_' || flow) INTO run_id USING id;
    IF run_id IS NULL THEN
        RETURN;
    END IF;
    run_status := cb_flow_lock_run(flow, run_id);
    EXECUTE format('SELECT status = ''started'' AND attempts = $2 FROM %I WHERE id = $1 FOR UPDATE', 'cb_s_' || flow)
        INTO v_held USING id, attempt;
    IF NOT coalesce(v_held, false) THEN
        run_id := NULL;
        run_status := NULL;
    END IF;
END;
$$;

-- Moves a canceling run to canceled when none of its steps is running any
-- more. The caller holds the run's row lock. Returns whether it did.
CREATE FUNCTION cb_flow_finish_cancel(flow text, run_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_running boolean;
    v_count integer;
BEGIN
    -- A started step that is not running waits for a retry: nothing will
    -- finish it, so it is canceled here.
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', running = false, canceled_at = clock_timestamp()
        WHERE flow_run_id = $1 AND status = 'started' AND NOT running$sql$, 'cb_s_' || flow)
        USING run_id;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE flow_run_id = $1 AND status = ''started'')', 'cb_s_' || flow)
        INTO v_running USING run_id;
    IF v_running THEN
        RETURN false;
    END IF;
    EXECUTE format($sql$
        UPDATE %I SET status = 'canceled', canceled_at = clock_timestamp()
        WHERE id = $1 AND status = 'canceling'$sql$, 'cb_f_' || flow)
        USING run_id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END;
$$;

-- Completes attempt `attempt` of a step run with `output`, and in the same
-- transaction resolves its dependents, queues the steps that became ready
-- and completes the run when every step is resolved. While the run is being
-- canceled the step ends canceled instead and nothing else moves. Returns
-- false, changing nothing, when the attempt no longer holds the step run.
CREATE FUNCTION cb_complete_step(flow text, id bigint, attempt integer, output jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record := cb_flow_lock_step(flow, id, attempt);
    v_step_name text;
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
        UPDATE %I SET status = 'completed', output = coalesce($2, 'null'::jsonb), completed_at = clock_timestamp()
        WHERE id = $1
        RETURNING step_name$sql$, 'cb_s_' || flow)
        INTO v_step_name USING id, output;
    PERFORM cb_flow_resolve(flow, v_lock.run_id,
        (SELECT d.dependents FROM cb_flow_steps d WHERE d.flow_name = flow AND d.step_name = v_step_name));
    PERFORM cb_flow_advance(flow, v_lock.run_id);
    RETURN true;
END;
$$;

-- Records a failed attempt of a step run. With `retry_delay` (milliseconds)
-- the step stays started and is claimable again after the delay; without it
-- the step fails for good and so does its run (see cb_flow_mark_failed).
-- Returns the step's new status, or NULL when the attempt no longer holds the
-- step run.
CREATE FUNCTION cb_fail_step(flow text, id bigint, attempt integer, error_message text,
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

-- Gives a step claim back without counting the attempt; claimable again
-- after `delay` milliseconds. In a canceling run nothing claims it again,
-- so the step is canceled instead and the run's cancellation finishes when
-- nothing else runs. Returns whether the attempt still held it.
CREATE FUNCTION cb_release_step(flow text, id bigint, attempt integer, delay integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record;
    v_step text;
BEGIN
    PERFORM cb_check_non_negative('delay', delay);
    v_lock := cb_flow_lock_step(flow, id, attempt);
    IF v_lock.run_id IS NULL THEN
        RETURN false;
    END IF;
    IF v_lock.run_status = 'canceling' THEN
        EXECUTE format('UPDATE %I SET status = ''canceled'', canceled_at = clock_timestamp() WHERE id = $1', 'cb_s_' || flow)
            USING id;
        PERFORM cb_flow_finish_cancel(flow, v_lock.run_id);
        RETURN true;
    END IF;
    EXECUTE format($sql$
        UPDATE %I
        SET attempts = attempts - 1,
            status = CASE WHEN attempts = 1 THEN 'queued' ELSE status END,
            running = false,
            visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
        WHERE id = $1 AND status = 'started' AND attempts = $2
        RETURNING step_name$sql$, 'cb_s_' || flow)
        INTO v_step USING id, attempt, coalesce(delay, 0);
    IF v_step IS NULL THEN
        RETURN false;
    END IF;
    PERFORM cb_wake('s', flow || '.' || v_step, clock_timestamp() + make_interval(secs => coalesce(delay, 0) / 1000.0));
    RETURN true;
END;
$$;

-- Marks a step run canceled after its handler observed that its run was
-- canceled or stopped, and finishes a pending cancellation of the run when
-- nothing else runs. Returns whether the attempt still held the step run.
CREATE FUNCTION cb_cancel_step_run(flow text, id bigint, attempt integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_lock record := cb_flow_lock_step(flow, id, attempt);
BEGIN
    IF v_lock.run_id IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('UPDATE %I SET status = ''canceled'', canceled_at = clock_timestamp() WHERE id = $1', 'cb_s_' || flow)
        USING id;
    IF v_lock.run_status = 'canceling' THEN
        PERFORM cb_flow_finish_cancel(flow, v_lock.run_id);
    END IF;
    RETURN true;
END;
$$;

-- Requests cancellation of a started run: the run becomes canceling, every
-- step that is not running becomes canceled, running steps are told to stop,
-- and the run becomes canceled at once when nothing runs. A run that is
-- canceling or finished is left as it is. Returns whether the run exists.
CREATE FUNCTION cb_cancel_flow(name text, id bigint, reason text DEFAULT NULL) RETURNS boolean
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

-- Completes a started run early with `output`, from one of its step
-- handlers: every unfinished step is canceled and running steps are told to
-- stop. The first terminal transition of a run wins: returns false, changing
-- nothing, when the run already left started.
CREATE FUNCTION cb_complete_flow_early(flow text, run_id bigint, output jsonb, reason text DEFAULT NULL)
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

-- Delivers a signal input to a step that waits for one. Returns false,
-- changing nothing, unless the run is started and the step exists, waits for
-- a signal, has not received one, and has not started. A step whose
-- dependencies are done starts right away.
CREATE FUNCTION cb_signal_flow(flow text, run_id bigint, step text, input jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_count integer;
BEGIN
    PERFORM cb_flow_table(flow);
    v_status := cb_flow_lock_run(flow, run_id);
    IF v_status IS DISTINCT FROM 'started' THEN
        RETURN false;
    END IF;
    EXECUTE format($sql$
        UPDATE %I s SET signal_delivered = true, signal_input = coalesce($3, 'null'::jsonb)
        FROM cb_flow_steps d
        WHERE s.flow_run_id = $1 AND s.step_name = $2 AND d.flow_name = $4 AND d.step_name = s.step_name
          AND d.signal AND NOT s.signal_delivered
          AND s.status IN ('waiting_for_dependencies', 'waiting_for_signal')$sql$, 'cb_s_' || flow)
        USING run_id, step, input, flow;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count = 0 THEN
        RETURN false;
    END IF;
    PERFORM cb_flow_advance(flow, run_id);
    RETURN true;
END;
$$;

-- Returns one flow run, or no row when the id does not exist.
CREATE FUNCTION cb_get_flow_run(flow text, id bigint) RETURNS SETOF cb_flow_run
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE format($sql$
        SELECT id, concurrency_key, input, headers, priority, status, output, error_message, cancel_reason,
               failed_step_name, failed_step_input, failed_step_signal, failed_step_attempts, visible_at,
               expires_at, started_at, completed_at, failed_at, canceled_at, cancel_requested_at, expired_at,
               on_fail_status, on_fail_attempts, on_fail_error
        FROM %I WHERE id = $1$sql$, cb_flow_table(flow))
        USING id;
END;
$$;

-- Returns the `quantity` most recent runs of a flow, newest first.
CREATE FUNCTION cb_list_flow_runs(flow text, quantity integer DEFAULT 20) RETURNS SETOF cb_flow_run
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM cb_check_positive('quantity', quantity);
    RETURN QUERY EXECUTE format($sql$
        SELECT id, concurrency_key, input, headers, priority, status, output, error_message, cancel_reason,
               failed_step_name, failed_step_input, failed_step_signal, failed_step_attempts, visible_at,
               expires_at, started_at, completed_at, failed_at, canceled_at, cancel_requested_at, expired_at,
               on_fail_status, on_fail_attempts, on_fail_error
        FROM %I ORDER BY id DESC LIMIT $1$sql$, cb_flow_table(flow))
        USING quantity;
END;
$$;

-- Returns every step run of a flow run, in definition order.
CREATE FUNCTION cb_get_flow_run_steps(flow text, run_id bigint) RETURNS SETOF cb_step_run
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

-- Returns one step of a flow run, or no row when it does not exist.
CREATE FUNCTION cb_get_flow_step(flow text, run_id bigint, step text) RETURNS SETOF cb_step_run
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

-- Waits until a flow run has finished (completed, failed, canceled or
-- expired), checking every `poll_interval` milliseconds for at most
-- `poll_for`. Returns the run, or no row when the wait ran out. Raises CB003
-- for an unknown run id.
CREATE FUNCTION cb_wait_flow_output(flow text, id bigint, poll_for integer DEFAULT 5000,
                                    poll_interval integer DEFAULT NULL)
RETURNS SETOF cb_flow_run
LANGUAGE plpgsql AS $$
DECLARE
    v_deadline timestamptz;
    v_run cb_flow_run;
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
        SELECT * INTO v_run FROM cb_get_flow_run(flow, id);
        IF v_run.id IS NULL THEN
            RAISE EXCEPTION 'catbird: flow run % of flow "%" not found', id, flow
                USING ERRCODE = 'CB003';
        END IF;
        IF v_run.status IN ('completed', 'failed', 'canceled', 'expired') THEN
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

-- Claims failed flow runs whose on-fail work is due, oldest first.
CREATE FUNCTION cb_claim_flow_on_fail(flow text, quantity integer, hide_for integer)
RETURNS SETOF cb_claimed_flow_on_fail
LANGUAGE plpgsql AS $$
DECLARE
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
            SET on_fail_status = 'started', on_fail_attempts = r.on_fail_attempts + 1,
                on_fail_visible_at = $1 + make_interval(secs => $3 / 1000.0)
            FROM selected s
            WHERE r.id = s.id
            RETURNING r.id, r.input, r.error_message, r.failed_step_name, r.failed_step_input,
                      r.failed_step_signal, r.failed_step_attempts, r.on_fail_attempts, r.started_at,
                      r.failed_at, r.concurrency_key
        )
        SELECT * FROM claimed ORDER BY id$sql$, cb_flow_table(flow))
        USING v_now, quantity, hide_for;
END;
$$;

-- Records a successful flow on-fail attempt.
CREATE FUNCTION cb_complete_flow_on_fail(flow text, id bigint, on_fail_attempt integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    EXECUTE format($sql$
        UPDATE %I SET on_fail_status = 'completed', on_fail_visible_at = NULL, on_fail_error = NULL
        WHERE id = $1 AND on_fail_status = 'started' AND on_fail_attempts = $2$sql$, cb_flow_table(flow))
        USING id, on_fail_attempt;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count > 0;
END;
$$;

-- Records a failed flow on-fail attempt; retried after `retry_delay`
-- milliseconds, or given up without it.
CREATE FUNCTION cb_fail_flow_on_fail(flow text, id bigint, on_fail_attempt integer, error_message text,
                                     retry_delay integer DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM cb_check_non_negative('retry_delay', retry_delay);
    EXECUTE format($sql$
        UPDATE %I
        SET on_fail_status = 'failed', on_fail_error = $3,
            on_fail_visible_at = CASE WHEN $4::integer IS NULL THEN NULL
                                      ELSE clock_timestamp() + make_interval(secs => $4 / 1000.0) END
        WHERE id = $1 AND on_fail_status = 'started' AND on_fail_attempts = $2$sql$, cb_flow_table(flow))
        USING id, on_fail_attempt,
              coalesce(nullif(error_message, ''), 'on-fail handler failed without an error message'), retry_delay;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 AND retry_delay IS NOT NULL THEN
        PERFORM cb_wake('ff', flow, clock_timestamp() + make_interval(secs => retry_delay / 1000.0));
    END IF;
    RETURN v_count > 0;
END;
$$;

-- migrate:down

DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT name FROM cb_flows LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_s_' || v_name);
        EXECUTE format('DROP TABLE IF EXISTS %I', 'cb_f_' || v_name);
    END LOOP;
END;
$$;
DROP FUNCTION cb_fail_flow_on_fail(text, bigint, integer, text, integer);
DROP FUNCTION cb_complete_flow_on_fail(text, bigint, integer);
DROP FUNCTION cb_claim_flow_on_fail(text, integer, integer);
DROP FUNCTION cb_wait_flow_output(text, bigint, integer, integer);
DROP FUNCTION cb_get_flow_step(text, bigint, text);
DROP FUNCTION cb_get_flow_run_steps(text, bigint);
DROP FUNCTION cb_list_flow_runs(text, integer);
DROP FUNCTION cb_get_flow_run(text, bigint);
DROP FUNCTION cb_signal_flow(text, bigint, text, jsonb);
DROP FUNCTION cb_complete_flow_early(text, bigint, jsonb, text);
DROP FUNCTION cb_cancel_flow(text, bigint, text);
DROP FUNCTION cb_cancel_step_run(text, bigint, integer);
DROP FUNCTION cb_release_step(text, bigint, integer, integer);
DROP FUNCTION cb_fail_step(text, bigint, integer, text, integer);
DROP FUNCTION cb_complete_step(text, bigint, integer, jsonb);
DROP FUNCTION cb_flow_finish_cancel(text, bigint);
DROP FUNCTION cb_flow_lock_step(text, bigint, integer);
DROP FUNCTION cb_hide_steps(text, bigint[], integer);
DROP FUNCTION cb_claim_steps(text, text, integer, integer);
DROP FUNCTION cb_run_flow(text, jsonb, text, jsonb, timestamptz, timestamptz, integer);
DROP FUNCTION cb_flow_lock_run(text, bigint);
DROP FUNCTION cb_flow_mark_failed(text, bigint, text, text, jsonb, jsonb, integer);
DROP FUNCTION cb_flow_resolve(text, bigint, text[]);
DROP FUNCTION cb_flow_advance(text, bigint);
DROP FUNCTION cb_step_context(text, bigint, jsonb, text[], boolean, jsonb);
DROP FUNCTION cb_delete_flow(text);
DROP FUNCTION cb_create_flow(text, jsonb, text, text[], bigint, boolean);
DROP FUNCTION cb_flow_definition_difference(jsonb, jsonb);
DROP FUNCTION cb_find_flow_cycle(jsonb);
DROP FUNCTION cb_normalize_flow_steps(text, jsonb);
DROP FUNCTION cb_flow_definition_error(text, text);
DROP FUNCTION cb_flow_table(text);
DROP TYPE cb_claimed_flow_on_fail;
DROP TYPE cb_claimed_step;
DROP TYPE cb_step_run;
DROP TYPE cb_flow_run;
DROP TABLE cb_flow_steps;
DROP TABLE cb_flows;
