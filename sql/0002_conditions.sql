-- Version 2: the condition language that guards tasks and flow steps.
--
-- A condition is one comparison, optionally negated, of a value in a JSON
-- context with a literal: `input.score gte 80`, `not validate.valid`,
-- `status in ["a", "b"]`. cb_parse_condition turns the expression into the
-- JSON form catbird stores, {"not": .., "path": [..], "op": .., "value": ..},
-- once, when a task or flow is defined; cb_eval_condition evaluates that form
-- when a run or step becomes ready. The Rust crate catbird-core parses and
-- evaluates the same language (module `condition`), and catbird's
-- integration tests check that both give the same JSON, the same error
-- messages and the same results.
--
-- Numbers follow serde_json, which the Rust side uses: a number written as an
-- integer that fits 64 bits stays exact, any other number becomes the nearest
-- double (stored as its shortest decimal text). A number too large for a
-- double is rejected, and one too small to represent becomes 0.
--
-- Error codes raised by these functions (SQLSTATE):
--   CB002  a condition expression is invalid

-- migrate:up

-- Returns the string and number tokens of JSON text `literal`, in document
-- order, and raises CB002 when arrays and objects nest deeper than 32
-- levels. Brackets inside strings do not count; a number token starts with
-- "-" or a digit and runs over digits, signs, points and exponent letters.
-- The scan does not validate the text, and returns the same result as the
-- Rust scan on invalid text too.
CREATE FUNCTION cb_condition_scan(literal text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_chars text[] := string_to_array(literal, NULL);
    v_char text;
    v_depth integer := 0;
    v_start integer;
    v_in_string boolean := false;
    v_in_number boolean := false;
    v_escaped boolean := false;
    v_tokens text[] := '{}';
BEGIN
    FOR i IN 1 .. coalesce(cardinality(v_chars), 0) LOOP
        v_char := v_chars[i];
        IF v_in_string THEN
            IF v_escaped THEN
                v_escaped := false;
            ELSIF v_char = '\' THEN
                v_escaped := true;
            ELSIF v_char = '"' THEN
                v_tokens := v_tokens || array_to_string(v_chars[v_start:i], '');
                v_in_string := false;
            END IF;
            CONTINUE;
        END IF;
        IF v_in_number THEN
            IF strpos('0123456789+-.eE', v_char) > 0 THEN
                CONTINUE;
            END IF;
            v_tokens := v_tokens || array_to_string(v_chars[v_start:i - 1], '');
            v_in_number := false;
        END IF;
        IF v_char = '"' THEN
            v_in_string := true;
            v_start := i;
        ELSIF strpos('0123456789-', v_char) > 0 THEN
            v_in_number := true;
            v_start := i;
        ELSIF v_char = '[' OR v_char = '{' THEN
            v_depth := v_depth + 1;
            IF v_depth > 32 THEN
                RAISE EXCEPTION 'value is nested deeper than 32 levels' USING ERRCODE = 'CB002';
            END IF;
        ELSIF v_char = ']' OR v_char = '}' THEN
            v_depth := greatest(v_depth - 1, 0);
        END IF;
    END LOOP;
    IF v_in_number THEN
        v_tokens := v_tokens || array_to_string(v_chars[v_start:], '');
    END IF;
    RETURN v_tokens;
END;
$$;

-- Returns the decimal serde_json writes for a double (Rust's ryu algorithm):
-- the shortest decimal that reads back as the same double, the nearest one
-- among equally short ones. float8's own output (extra_float_digits = 1)
-- is the shortest decimal strictly inside the double's rounding interval.
-- It misses a shorter decimal lying exactly on the interval's edge, which
-- reads back as the same double when the mantissa is even (ties round to
-- even): 36030000000001692.0 is the double float8 prints as
-- 3.6030000000001696e+16 and serde_json as 3.60300000000017e16. An edge
-- decimal shorter than float8's output is next to that output at its own
-- length, so rounding the output down and up at each shorter length finds
-- it.
CREATE FUNCTION cb_condition_shortest(value float8) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET extra_float_digits = 1 AS $$
DECLARE
    -- Casting a decimal to float8 raises unless its magnitude lies strictly
    -- between these: half the smallest subnormal, and the midpoint between
    -- the largest double and 2^1024.
    v_min constant numeric := power(5::numeric, 1075) * 1e-1075;
    v_max constant numeric := power(2::numeric, 1024) - power(2::numeric, 970);
    v_decimal numeric := value::text::numeric;
    v_magnitude numeric := abs(v_decimal);
    v_parts text[];
    v_point integer;
    v_digits integer;
    v_down numeric;
    v_up numeric;
    v_down_ok boolean;
    v_up_ok boolean;
BEGIN
    IF value = 0 THEN
        RETURN 0;
    END IF;

    -- v_magnitude = 0.d1 d2 ... d<v_digits> × 10^v_point
    v_parts := regexp_match(trim_scale(v_magnitude)::text, '^([0-9]*)\.?([0-9]*)$');
    IF v_magnitude >= 1 THEN
        v_point := length(v_parts[1]);
    ELSE
        v_point := -(length(v_parts[2]) - length(ltrim(v_parts[2], '0')));
    END IF;
    v_digits := length(rtrim(ltrim(v_parts[1] || v_parts[2], '0'), '0'));

    FOR v_length IN 1 .. v_digits - 1 LOOP
        v_down := trunc(v_magnitude, v_length - v_point);
        v_up := v_down + ('1e' || (v_point - v_length))::numeric;
        v_down_ok := v_down > v_min AND (sign(v_decimal) * v_down)::float8 = value;
        v_up_ok := v_up < v_max AND (sign(v_decimal) * v_up)::float8 = value;
        IF v_down_ok AND v_up_ok THEN
            -- Both edges: the nearer one, or on a tie the even last digit,
            -- as ryu rounds.
            IF v_magnitude - v_down < v_up - v_magnitude
               OR (v_magnitude - v_down = v_up - v_magnitude
                   AND (trunc(v_down * ('1e' || (v_length - v_point))::numeric) % 2) = 0) THEN
                RETURN sign(v_decimal) * v_down;
            END IF;
            RETURN sign(v_decimal) * v_up;
        ELSIF v_down_ok THEN
            RETURN sign(v_decimal) * v_down;
        ELSIF v_up_ok THEN
            RETURN sign(v_decimal) * v_up;
        END IF;
    END LOOP;
    RETURN v_decimal;
END;
$$;

-- Converts one JSON number token as serde_json reads it: an integer token
-- that fits a signed or unsigned 64-bit integer stays exact, anything else
-- becomes the nearest double, written as serde_json writes it.
CREATE FUNCTION cb_condition_number(token text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_float float8;
    v_parts text[];
    v_integer text;
    v_fraction text;
    v_magnitude numeric;
BEGIN
    IF token ~ '^-?[0-9]+$' THEN
        IF token::numeric BETWEEN -9223372036854775808 AND 18446744073709551615 THEN
            RETURN to_jsonb(token::numeric);
        END IF;
    END IF;

    BEGIN
        v_float := token::float8;
    EXCEPTION WHEN numeric_value_out_of_range THEN
        -- float8 input rejects both overflow and underflow to zero. Tell
        -- them apart by the decimal exponent of the leading digit.
        v_parts := regexp_match(token, '^-?([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?$');
        v_integer := ltrim(v_parts[1], '0');
        v_fraction := coalesce(v_parts[2], '');
        IF v_integer <> '' THEN
            v_magnitude := coalesce(v_parts[3], '0')::numeric + length(v_integer) - 1;
        ELSE
            v_magnitude := coalesce(v_parts[3], '0')::numeric
                - (length(v_fraction) - length(ltrim(v_fraction, '0'))) - 1;
        END IF;
        IF v_magnitude >= 0 THEN
            RAISE EXCEPTION 'number too large for a double-precision float' USING ERRCODE = 'CB002';
        END IF;
        v_float := 0;
    END;
    RETURN to_jsonb(cb_condition_shortest(v_float));
END;
$$;

-- Returns `value` as jsonb with every number converted by
-- cb_condition_number. Reads json, not jsonb, because json keeps each
-- number's token text. Among repeated object keys the last one wins, as in
-- jsonb and serde_json.
CREATE FUNCTION cb_condition_numbers(value json) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    CASE json_typeof(value)
    WHEN 'number' THEN
        RETURN cb_condition_number(value #>> '{}');
    WHEN 'array' THEN
        RETURN coalesce(
            (SELECT jsonb_agg(cb_condition_numbers(e.item) ORDER BY e.position)
             FROM json_array_elements(value) WITH ORDINALITY AS e(item, position)),
            '[]'::jsonb);
    WHEN 'object' THEN
        RETURN coalesce(
            (SELECT jsonb_object_agg(m.key, cb_condition_numbers(m.item) ORDER BY m.position)
             FROM json_each(value) WITH ORDINALITY AS m(key, item, position)),
            '{}'::jsonb);
    ELSE
        RETURN value::jsonb;
    END CASE;
END;
$$;

-- Types an array literal. Checks run in the order the Rust parser runs
-- them: nesting depth, JSON syntax, then each string and number token in
-- document order.
CREATE FUNCTION cb_condition_array(literal text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_tokens text[] := cb_condition_scan(literal);
    v_token text;
    v_json json;
    v_clean boolean;
BEGIN
    BEGIN
        v_json := literal::json;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'value is not a valid JSON array' USING ERRCODE = 'CB002';
    END;

    -- jsonb input rejects lone surrogates and NUL escapes, and also numbers
    -- beyond numeric's exponent range that a double reads fine. When it
    -- succeeds no token can fail but a number too large for a double, which
    -- cb_condition_numbers reports; otherwise find the first bad token.
    BEGIN
        PERFORM literal::jsonb;
        v_clean := true;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                   OR numeric_value_out_of_range THEN
        v_clean := false;
    END;
    IF NOT v_clean THEN
        FOREACH v_token IN ARRAY v_tokens LOOP
            IF left(v_token, 1) <> '"' THEN
                PERFORM cb_condition_number(v_token);
                CONTINUE;
            END IF;
            BEGIN
                PERFORM v_token::jsonb;
            EXCEPTION
                WHEN invalid_text_representation THEN
                    RAISE EXCEPTION 'value is not a valid JSON array' USING ERRCODE = 'CB002';
                WHEN untranslatable_character THEN
                    RAISE EXCEPTION 'value contains the NUL character (\u0000), which PostgreSQL cannot store'
                        USING ERRCODE = 'CB002';
            END;
        END LOOP;
    END IF;
    RETURN cb_condition_numbers(v_json);
END;
$$;

-- Types a literal, which is non-empty and has no surrounding whitespace.
-- Raises CB002 with the bare problem as message; cb_parse_condition adds
-- the expression.
CREATE FUNCTION cb_condition_literal(literal text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_parts text[];
BEGIN
    IF left(literal, 1) = '[' THEN
        RETURN cb_condition_array(literal);
    END IF;
    IF left(literal, 1) = '{' THEN
        RAISE EXCEPTION 'object values are not supported' USING ERRCODE = 'CB002';
    END IF;

    IF left(literal, 1) = '"' THEN
        -- Syntax first (json input), then escapes and NUL (jsonb input).
        BEGIN
            PERFORM literal::json;
            RETURN literal::jsonb;
        EXCEPTION
            WHEN invalid_text_representation THEN
                RAISE EXCEPTION 'value is not a valid JSON string' USING ERRCODE = 'CB002';
            WHEN untranslatable_character THEN
                RAISE EXCEPTION 'value contains the NUL character (\u0000), which PostgreSQL cannot store'
                    USING ERRCODE = 'CB002';
        END;
    END IF;

    IF literal IN ('true', 'false') THEN
        RETURN literal::jsonb;
    END IF;

    -- A decimal number, rewritten in JSON syntax: no "+", no leading zeros,
    -- a digit on both sides of the point.
    v_parts := regexp_match(literal, '^([+-]?)([0-9]*)(\.([0-9]*))?([eE][+-]?[0-9]+)?$');
    IF v_parts IS NOT NULL AND v_parts[2] || coalesce(v_parts[4], '') <> '' THEN
        RETURN cb_condition_number(
            CASE WHEN v_parts[1] = '-' THEN '-' ELSE '' END
            || coalesce(nullif(ltrim(v_parts[2], '0'), ''), '0')
            || CASE WHEN v_parts[3] IS NULL THEN '' ELSE '.' || coalesce(nullif(v_parts[4], ''), '0') END
            || coalesce(v_parts[5], ''));
    END IF;

    IF literal ~ '^[A-Za-z_][A-Za-z0-9_-]*$' THEN
        RETURN to_jsonb(literal);
    END IF;

    RAISE EXCEPTION 'invalid value "%": expected a JSON array, a JSON string in double quotes, a number, true, false or a bare word of letters, digits, _ and -',
        literal
        USING ERRCODE = 'CB002';
END;
$$;

-- Parses a condition expression into the JSON form catbird stores:
--   cb_parse_condition('input.tags[0] contains urgent')
--   = '{"not": false, "path": ["input", "tags", "0"], "op": "contains", "value": "urgent"}'
-- A bare path means `eq true`; `value` is absent for `exists`. Returns NULL
-- for a NULL expression. Raises CB002 with the message
-- 'catbird: invalid condition "<expression>": <problem>'.
CREATE FUNCTION cb_parse_condition(expression text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_spaces constant text := E' \t\n\r';
    v_rest text;
    v_token text;
    v_not boolean := false;
    v_path text[];
    v_op text;
    v_value jsonb;
    v_problem text;
BEGIN
    v_rest := btrim(expression, v_spaces);
    IF v_rest = '' THEN
        RAISE EXCEPTION 'expression is empty' USING ERRCODE = 'CB002';
    END IF;

    v_token := substring(v_rest FROM '^[^ \t\n\r]+');
    v_rest := ltrim(substr(v_rest, length(v_token) + 1), v_spaces);
    IF v_token = 'not' THEN
        IF v_rest = '' THEN
            RAISE EXCEPTION 'expected a path after "not"' USING ERRCODE = 'CB002';
        END IF;
        v_not := true;
        v_token := substring(v_rest FROM '^[^ \t\n\r]+');
        v_rest := ltrim(substr(v_rest, length(v_token) + 1), v_spaces);
    END IF;

    IF v_token !~ '^[A-Za-z0-9_]+(\[[0-9]+\])?(\.[A-Za-z0-9_]+(\[[0-9]+\])?)*$' THEN
        RAISE EXCEPTION 'invalid path "%": expected names of letters, digits and _ joined by dots, each optionally followed by an array index such as [0]',
            v_token
            USING ERRCODE = 'CB002';
    END IF;
    IF v_token = 'not' THEN
        RAISE EXCEPTION '"not" cannot be used as a path' USING ERRCODE = 'CB002';
    END IF;
    v_path := string_to_array(replace(replace(v_token, '[', '.'), ']', ''), '.');

    IF v_rest = '' THEN
        RETURN jsonb_build_object('not', v_not, 'path', to_jsonb(v_path), 'op', 'eq', 'value', true);
    END IF;

    v_op := substring(v_rest FROM '^[^ \t\n\r]+');
    v_rest := ltrim(substr(v_rest, length(v_op) + 1), v_spaces);
    IF v_op NOT IN ('eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'in', 'contains', 'exists') THEN
        RAISE EXCEPTION 'unknown operator "%": expected eq, ne, gt, gte, lt, lte, in, contains or exists', v_op
            USING ERRCODE = 'CB002';
    END IF;

    IF v_op = 'exists' THEN
        IF v_rest <> '' THEN
            RAISE EXCEPTION 'operator exists takes no value' USING ERRCODE = 'CB002';
        END IF;
        RETURN jsonb_build_object('not', v_not, 'path', to_jsonb(v_path), 'op', v_op);
    END IF;

    IF v_rest = '' THEN
        RAISE EXCEPTION 'operator % needs a value', v_op USING ERRCODE = 'CB002';
    END IF;
    v_value := cb_condition_literal(v_rest);
    IF v_op = 'in' AND jsonb_typeof(v_value) <> 'array' THEN
        RAISE EXCEPTION 'operator in needs a JSON array value such as ["a", "b"]' USING ERRCODE = 'CB002';
    END IF;
    RETURN jsonb_build_object('not', v_not, 'path', to_jsonb(v_path), 'op', v_op, 'value', v_value);
EXCEPTION WHEN SQLSTATE 'CB002' THEN
    GET STACKED DIAGNOSTICS v_problem = MESSAGE_TEXT;
    RAISE EXCEPTION 'catbird: invalid condition "%": %', expression, v_problem
        USING ERRCODE = 'CB002';
END;
$$;

-- Returns whether a JSON array contains an element equal to `field`. For a
-- scalar field jsonb containment is that test; an array or object field
-- needs whole-element equality, which containment is not.
CREATE FUNCTION cb_condition_in(field jsonb, items jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN field IS NULL OR jsonb_typeof(items) IS DISTINCT FROM 'array' THEN false
        WHEN jsonb_typeof(field) IN ('array', 'object') THEN
            EXISTS (SELECT 1 FROM jsonb_array_elements(items) AS e(item) WHERE e.item = field)
        ELSE items @> field
    END
$$;

-- Returns the text `contains` looks for in a string field: a string's
-- content, a number in plain decimal notation without trailing zeros,
-- true or false. NULL for an array, whose JSON text has no canonical
-- spelling.
CREATE FUNCTION cb_condition_text(literal jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN jsonb_typeof(literal) IN ('string', 'boolean') THEN literal #>> '{}'
        WHEN jsonb_typeof(literal) = 'number' THEN trim_scale(literal::numeric)::text
    END
$$;

-- Applies operator `op` to `field` (SQL NULL when the path is missing) and
-- `literal`, before negation. Every cast sits behind a CASE on the type of
-- its own operand, so no input raises, even when the planner folds
-- constants.
CREATE FUNCTION cb_condition_test(op text, field jsonb, literal jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(CASE op
        WHEN 'exists' THEN field IS NOT NULL
        WHEN 'eq' THEN field = literal
        WHEN 'ne' THEN field IS NULL OR field <> literal
        WHEN 'gt' THEN CASE WHEN jsonb_typeof(field) = 'number' AND jsonb_typeof(literal) = 'number'
                            THEN field > literal END
        WHEN 'gte' THEN CASE WHEN jsonb_typeof(field) = 'number' AND jsonb_typeof(literal) = 'number'
                             THEN field >= literal END
        WHEN 'lt' THEN CASE WHEN jsonb_typeof(field) = 'number' AND jsonb_typeof(literal) = 'number'
                            THEN field < literal END
        WHEN 'lte' THEN CASE WHEN jsonb_typeof(field) = 'number' AND jsonb_typeof(literal) = 'number'
                             THEN field <= literal END
        WHEN 'in' THEN cb_condition_in(field, literal)
        WHEN 'contains' THEN CASE
            WHEN jsonb_typeof(field) = 'string' THEN strpos(field #>> '{}', cb_condition_text(literal)) > 0
            WHEN jsonb_typeof(field) IN ('array', 'object') THEN field @> literal
        END
    END, false)
$$;

-- Evaluates a condition in the JSON form cb_parse_condition returns against
-- a context such as {"input": .., "step1": ..}. Never raises: a missing or
-- mistyped field gives the operator's result for that case, an SQL NULL
-- context has every path missing, and an SQL NULL condition evaluates false.
-- A malformed condition does not raise either, but its result is
-- unspecified.
--
-- The path goes to #> as text[]. Path segments are letters, digits and _,
-- so stripping brackets, quotes and spaces from the JSON array's text and
-- splitting at commas gives the segments without a subquery.
CREATE FUNCTION cb_eval_condition(condition jsonb, context jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        cb_condition_test(
            condition ->> 'op',
            context #> string_to_array(translate((condition -> 'path')::text, '[]" ', ''), ','),
            condition -> 'value')
        <> coalesce(condition -> 'not' = 'true'::jsonb, false),
        false)
$$;

-- migrate:down

DROP FUNCTION cb_eval_condition(jsonb, jsonb);
DROP FUNCTION cb_condition_test(text, jsonb, jsonb);
DROP FUNCTION cb_condition_text(jsonb);
DROP FUNCTION cb_condition_in(jsonb, jsonb);
DROP FUNCTION cb_parse_condition(text);
DROP FUNCTION cb_condition_literal(text);
DROP FUNCTION cb_condition_array(text);
DROP FUNCTION cb_condition_numbers(json);
DROP FUNCTION cb_condition_number(text);
DROP FUNCTION cb_condition_shortest(float8);
DROP FUNCTION cb_condition_scan(text);
