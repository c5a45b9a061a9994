-- TEMPORARY stand-in, replaced by the conditions branch at merge.
-- migrate:up
CREATE FUNCTION cb_parse_condition(expression text) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('path', jsonb_build_array(split_part(split_part(btrim(expression), ' ', 1), '.', 1)))
$$;
CREATE FUNCTION cb_eval_condition(condition jsonb, context jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT true
$$;
-- migrate:down
DROP FUNCTION cb_eval_condition(jsonb, jsonb);
DROP FUNCTION cb_parse_condition(text);
