use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn parse(expression: &str) -> Condition {
    Condition::parse(expression).unwrap_or_else(|error| panic!("{error}"))
}

fn problem(expression: &str) -> Problem {
    match Condition::parse(expression) {
        Ok(condition) => panic!("{expression:?} parsed as {condition:?}"),
        Err(error) => error.problem().clone(),
    }
}

fn eval(expression: &str, context: Value) -> bool {
    parse(expression).evaluate(&context)
}

// Parsing: structure

#[test]
fn parse_splits_path_operator_and_literal() {
    let condition = parse("input.score gte 80");
    assert!(!condition.is_negated());
    assert_eq!(condition.path(), ["input", "score"]);
    assert_eq!(condition.root(), "input");
    assert_eq!(condition.operator(), Operator::Gte);
    assert_eq!(condition.value(), Some(&json!(80)));
}

#[test]
fn parse_reads_leading_not() {
    let condition = parse("not message contains error");
    assert!(condition.is_negated());
    assert_eq!(condition.path(), ["message"]);
    assert_eq!(condition.operator(), Operator::Contains);
    assert_eq!(condition.value(), Some(&json!("error")));
}

#[test]
fn bare_path_means_eq_true() {
    let condition = parse("validate.valid");
    assert_eq!(condition.operator(), Operator::Eq);
    assert_eq!(condition.value(), Some(&json!(true)));
    assert_eq!(condition, parse("validate.valid eq true"));

    let negated = parse("not validate.valid");
    assert!(negated.is_negated());
    assert_eq!(negated.path(), ["validate", "valid"]);
}

#[test]
fn exists_has_no_value() {
    let condition = parse("user.age exists");
    assert_eq!(condition.operator(), Operator::Exists);
    assert_eq!(condition.value(), None);
}

#[test]
fn bracket_index_equals_dotted_index() {
    assert_eq!(parse("a[0].b eq 1").path(), ["a", "0", "b"]);
    assert_eq!(parse("a[0].b eq 1"), parse("a.0.b eq 1"));
    assert_eq!(parse("items[12] exists").path(), ["items", "12"]);
    assert_eq!(parse("a[007] exists").path(), ["a", "007"]);
}

#[test]
fn surrounding_and_repeated_whitespace_is_ignored() {
    assert_eq!(parse("  \t score \n  eq\r\n 80 \t"), parse("score eq 80"));
    assert_eq!(parse("not\tx"), parse("not x"));
}

#[test]
fn operator_words_are_positional() {
    // A path or a literal may be spelled like an operator.
    let condition = parse("eq eq eq");
    assert_eq!(condition.path(), ["eq"]);
    assert_eq!(condition.value(), Some(&json!("eq")));
    assert_eq!(parse("exists").path(), ["exists"]);
    assert_eq!(parse("x eq not").value(), Some(&json!("not")));
}

#[test]
fn quoted_literal_keeps_spaces_and_operator_words() {
    assert_eq!(
        parse(r#"message contains "an error occurred""#).value(),
        Some(&json!("an error occurred"))
    );
    assert_eq!(
        parse(r#"status eq "a eq b""#).value(),
        Some(&json!("a eq b"))
    );
    assert_eq!(
        parse(r#"status eq "tab\there \"quoted\" \u00e9""#).value(),
        Some(&json!("tab\there \"quoted\" é"))
    );
}

#[test]
fn literal_typing() {
    let cases = [
        ("x eq true", json!(true)),
        ("x eq false", json!(false)),
        ("x eq null", json!("null")),
        ("x eq True", json!("True")),
        ("x eq approved", json!("approved")),
        ("x eq _under-score_1", json!("_under-score_1")),
        ("x eq 80", json!(80)),
        ("x eq -5", json!(-5)),
        ("x eq +5", json!(5)),
        ("x eq 007", json!(7)),
        ("x eq 1.5", json!(1.5)),
        ("x eq 5.", json!(5.0)),
        ("x eq .5", json!(0.5)),
        ("x eq -.5", json!(-0.5)),
        ("x eq 1e3", json!(1000.0)),
        ("x eq 2.5E-3", json!(0.0025)),
        ("x eq 18446744073709551615", json!(18446744073709551615u64)),
        ("x eq -9223372036854775808", json!(i64::MIN)),
        ("x eq 18446744073709551616", json!(18446744073709551616.0)),
        (r#"x eq "80""#, json!("80")),
        (r#"x eq """#, json!("")),
        (
            r#"x in ["a", 1, null, [true], {"k": 2}]"#,
            json!(["a", 1, null, [true], {"k": 2}]),
        ),
        ("x contains []", json!([])),
    ];
    for (expression, expected) in cases {
        assert_eq!(parse(expression).value(), Some(&expected), "{expression}");
    }
}

#[test]
fn integer_literal_stays_exact() {
    let value = parse("x eq 9007199254740993").value().cloned().unwrap();
    assert_eq!(value.as_u64(), Some(9_007_199_254_740_993));
}

#[test]
fn tiny_number_becomes_zero() {
    assert_eq!(parse("x eq 1e-400").value(), Some(&json!(0.0)));
    assert_eq!(parse("x eq 0e999999999999").value(), Some(&json!(0.0)));
}

#[test]
fn literal_may_nest_32_levels() {
    let ok = format!("x eq {}1{}", "[".repeat(32), "]".repeat(32));
    assert!(Condition::parse(&ok).is_ok());
    let brackets_in_strings = format!("x eq [\"{}\"]", "[".repeat(100));
    assert!(Condition::parse(&brackets_in_strings).is_ok());
}

// Parsing: errors

#[test]
fn error_names_expression_and_problem() {
    let error = Condition::parse("score gt").unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid condition \"score gt\": operator gt needs a value"
    );
    let error = crate::Error::from(error);
    assert_eq!(
        error.to_string(),
        "catbird: invalid condition \"score gt\": operator gt needs a value"
    );
    assert!(error.is_invalid_input());
}

#[test]
fn rejects_empty_expression() {
    assert_eq!(problem(""), Problem::Empty);
    assert_eq!(problem(" \t\r\n "), Problem::Empty);
}

#[test]
fn rejects_not_without_path() {
    assert_eq!(problem("not"), Problem::MissingPath);
    assert_eq!(problem("  not  "), Problem::MissingPath);
}

#[test]
fn rejects_not_as_path() {
    assert_eq!(problem("not not"), Problem::ReservedPath);
    assert_eq!(problem("not not eq 1"), Problem::ReservedPath);
    assert!(Condition::parse("not.x eq 1").is_ok());
    assert!(Condition::parse("not[0] eq 1").is_ok());
}

#[test]
fn rejects_invalid_paths() {
    for path in [
        "a..b", ".a", "a.", "a-b", "a[]", "a[x]", "a[0", "a[0]b", "[0]", "a[0][1]", "a[-1]", "é",
        "a$", "a.b[1.5]",
    ] {
        assert_eq!(
            problem(&format!("{path} eq 1")),
            Problem::InvalidPath(path.to_owned()),
            "{path}"
        );
    }
}

#[test]
fn rejects_unknown_operator() {
    assert_eq!(
        problem("score greater 80"),
        Problem::UnknownOperator("greater".to_owned())
    );
    assert_eq!(
        problem("score EQ 80"),
        Problem::UnknownOperator("EQ".to_owned())
    );
    assert_eq!(
        problem("score == 80"),
        Problem::UnknownOperator("==".to_owned())
    );
}

#[test]
fn rejects_missing_value() {
    for op in Operator::ALL.into_iter().filter(|op| op.takes_value()) {
        assert_eq!(
            problem(&format!("x {op}")),
            Problem::MissingValue(op),
            "{op}"
        );
        assert_eq!(
            problem(&format!("x {op}   ")),
            Problem::MissingValue(op),
            "{op}"
        );
    }
}

#[test]
fn rejects_value_for_exists() {
    assert_eq!(problem("x exists true"), Problem::UnexpectedValue);
}

#[test]
fn rejects_object_literal() {
    assert_eq!(problem(r#"x eq {"a": 1}"#), Problem::ObjectValue);
    assert_eq!(problem("x contains {"), Problem::ObjectValue);
}

#[test]
fn rejects_bad_bare_words() {
    for literal in [
        "an error", "a.b", "a/b", "-abc", "1e", "1.2.3", "1abc", "é", "a'b", "+",
    ] {
        assert_eq!(
            problem(&format!("x eq {literal}")),
            Problem::InvalidValue(literal.to_owned()),
            "{literal}"
        );
    }
}

#[test]
fn rejects_bad_strings() {
    for literal in [
        r#""unterminated"#,
        r#""a" "b""#,
        r#""a"b"#,
        r#""bad \x escape""#,
        "\"raw\ttab\"",
        r#""\ud800""#,
        r#""\u12""#,
    ] {
        assert_eq!(
            problem(&format!("x eq {literal}")),
            Problem::InvalidString,
            "{literal}"
        );
    }
    assert_eq!(problem(r#"x eq "a\u0000b""#), Problem::Nul);
}

#[test]
fn rejects_bad_arrays() {
    for literal in [
        "[",
        "[1,]",
        "[01]",
        "[1 2]",
        "[\"a\"",
        "[1] x",
        "[\"\\udc00\"]",
    ] {
        assert_eq!(
            problem(&format!("x in {literal}")),
            Problem::InvalidArray,
            "{literal}"
        );
    }
    assert_eq!(problem(r#"x in ["\u0000"]"#), Problem::Nul);
    assert_eq!(problem(r#"x in [{"k\u0000": 1}]"#), Problem::Nul);
    assert_eq!(problem("x in [1e400]"), Problem::NumberTooLarge);
    let deep = format!("x eq {}1{}", "[".repeat(33), "]".repeat(33));
    assert_eq!(problem(&deep), Problem::TooDeep);
    let deep_and_broken = format!("x eq {}", "[".repeat(1000));
    assert_eq!(problem(&deep_and_broken), Problem::TooDeep);
}

#[test]
fn rejects_number_too_large() {
    assert_eq!(problem("x eq 1e400"), Problem::NumberTooLarge);
    assert_eq!(problem("x eq -1e309"), Problem::NumberTooLarge);
    assert_eq!(
        problem(&format!("x eq {}", "9".repeat(400))),
        Problem::NumberTooLarge
    );
}

#[test]
fn in_needs_array() {
    assert_eq!(problem("status in a"), Problem::InNeedsArray);
    assert_eq!(problem("status in 1"), Problem::InNeedsArray);
    assert_eq!(problem(r#"status in "[1]""#), Problem::InNeedsArray);
    // A bad literal is reported before the wrong type.
    assert_eq!(problem("status in {"), Problem::ObjectValue);
}

// Evaluation: the reference cases

#[test]
fn reference_cases() {
    let cases = [
        ("score eq 80", json!({"score": 80}), true),
        ("status eq approved", json!({"status": "approved"}), true),
        ("status ne approved", json!({"status": "pending"}), true),
        ("score gte 80", json!({"score": 80}), true),
        ("optional_field exists", json!({"other": 1}), false),
        ("not optional_field exists", json!({"other": 1}), true),
        (
            "message contains error",
            json!({"message": "an error occurred"}),
            true,
        ),
        (
            "not message contains error",
            json!({"message": "success"}),
            true,
        ),
        ("user.age gte 18", json!({"user": {"age": 25}}), true),
        (
            "data.metrics.score gt 50",
            json!({"data": {"metrics": {"score": 75}}}),
            true,
        ),
        ("missing eq value", json!({}), false),
        ("nullable exists", json!({"nullable": null}), true),
        ("step1.optional_field ne value", json!({"step1": {}}), true),
        (
            "step1.data.user.age gte 18",
            json!({"step1": {"data": {"user": {"age": 15}}}}),
            false,
        ),
        ("step1 lt 90", json!({"step1": 85}), true),
        ("step1 lt 90", json!({"step1": {"score": 85}}), false),
        (
            "input.is_premium",
            json!({"input": {"is_premium": true}}),
            true,
        ),
        (
            "input.is_premium",
            json!({"input": {"is_premium": false}}),
            false,
        ),
        (
            "not validate.valid",
            json!({"validate": {"valid": false}}),
            true,
        ),
        ("not validate.valid", json!({"validate": {}}), true),
        (
            "not validate.valid",
            json!({"validate": {"valid": true}}),
            false,
        ),
        ("not x gt 5", json!({"x": "abc"}), true),
    ];
    for (expression, context, expected) in cases {
        assert_eq!(
            eval(expression, context.clone()),
            expected,
            "{expression} on {context}"
        );
    }
}

// Evaluation: every operator with the field present and missing

#[test]
fn each_operator_present_and_missing() {
    let present =
        json!({"s": "hello world", "n": 10, "a": [1, "x", {"k": 1}], "o": {"k": 1, "j": [1, 2]}});
    let missing = json!({});
    let cases = [
        ("s eq \"hello world\"", true, false),
        ("n ne 11", true, true),
        ("n ne 10", false, true),
        ("n gt 9", true, false),
        ("n gte 10", true, false),
        ("n lt 11", true, false),
        ("n lte 10", true, false),
        ("n in [5, 10]", true, false),
        ("s contains world", true, false),
        ("a contains x", true, false),
        ("o contains [1]", false, false),
        ("n exists", true, false),
    ];
    for (expression, when_present, when_missing) in cases {
        assert_eq!(
            eval(expression, present.clone()),
            when_present,
            "{expression} present"
        );
        assert_eq!(
            eval(expression, missing.clone()),
            when_missing,
            "{expression} missing"
        );
        let negated = format!("not {expression}");
        assert_eq!(
            eval(&negated, present.clone()),
            !when_present,
            "{negated} present"
        );
        assert_eq!(
            eval(&negated, missing.clone()),
            !when_missing,
            "{negated} missing"
        );
    }
}

#[test]
fn null_field_exists_but_equals_nothing_written() {
    let context = json!({"v": null});
    assert!(eval("v exists", context.clone()));
    assert!(
        !eval("v eq null", context.clone()),
        "null is the string \"null\""
    );
    assert!(eval("v ne null", context.clone()));
    assert!(eval("v in [null]", context.clone()));
    assert!(!eval("v gt 0", context.clone()));
    assert!(!eval("v contains null", context));
}

#[test]
fn numbers_compare_by_value_not_by_type() {
    assert!(eval("x eq 1", json!({"x": 1.0})));
    assert!(eval("x eq 1.0", json!({"x": 1})));
    assert!(eval("x eq 1e2", json!({"x": 100})));
    assert!(eval("x eq 0", json!({"x": -0.0})));
    assert!(!eval("x eq 80", json!({"x": "80"})));
    assert!(!eval(r#"x eq "80""#, json!({"x": 80})));
    assert!(!eval("x gt 5", json!({"x": "10"})));
    assert!(!eval("x gt 5", json!({"x": true})));
    assert!(!eval("x gt abc", json!({"x": 10})));
    assert!(eval("x gt 1.5", json!({"x": 2})));
    assert!(eval("x lt -1e300", json!({"x": -1e301})));
    assert!(eval(
        "x eq 18446744073709551615",
        json!({"x": 18446744073709551615u64})
    ));
    assert!(!eval(
        "x eq 9007199254740993",
        json!({"x": 9007199254740992.0})
    ));
}

#[test]
fn eq_compares_arrays_and_objects_deeply() {
    assert!(eval("x eq [1, [2, 3]]", json!({"x": [1.0, [2, 3]]})));
    assert!(!eval("x eq [1, 2]", json!({"x": [2, 1]})));
    assert!(!eval("x eq [1]", json!({"x": 1})));
    assert!(eval(
        r#"x eq [{"a": 1, "b": [true]}]"#,
        json!({"x": [{"b": [true], "a": 1}]})
    ));
    assert!(!eval(
        r#"x eq [{"a": 1}]"#,
        json!({"x": [{"a": 1, "b": 2}]})
    ));
}

#[test]
fn in_matches_whole_elements() {
    assert!(eval(r#"status in ["a", "b"]"#, json!({"status": "b"})));
    assert!(!eval(r#"status in ["a", "b"]"#, json!({"status": "c"})));
    assert!(eval("n in [1, 2]", json!({"n": 2.0})));
    assert!(!eval(r#"n in ["1"]"#, json!({"n": 1})));
    assert!(eval("x in [[1, 2], 3]", json!({"x": [1, 2]})));
    assert!(
        !eval("x in [[1, 2], 3]", json!({"x": [1]})),
        "containment is not equality"
    );
    assert!(eval(r#"x in [{"a": 1}]"#, json!({"x": {"a": 1}})));
    assert!(!eval("x in []", json!({"x": 1})));
}

#[test]
fn contains_on_strings_uses_literal_text() {
    let context = json!({"m": "code 1500 true; price 0.5"});
    assert!(eval("m contains 1500", context.clone()));
    assert!(eval("m contains 1.5e3", context.clone()));
    assert!(eval("m contains 1500.0", context.clone()));
    assert!(eval("m contains .5", context.clone()));
    assert!(eval("m contains true", context.clone()));
    assert!(eval(r#"m contains "e 15""#, context.clone()));
    assert!(eval(r#"m contains """#, context.clone()));
    assert!(
        !eval("m contains [1500]", context.clone()),
        "an array has no text"
    );
    assert!(!eval("m contains Code", context), "case matters");
}

#[test]
fn contains_on_containers_is_jsonb_containment() {
    let context = json!({
        "tags": ["urgent", "billing", 3, [4, 5], {"k": 1, "j": 2}],
        "meta": {"a": 1, "b": {"c": [1, 2, 3]}, "d": "x"},
        "n": 5,
        "t": true,
    });
    let cases = [
        ("tags contains urgent", true),
        ("tags contains Urgent", false),
        ("tags contains 3.0", true),
        ("tags contains 4", false),
        (r#"tags contains ["billing", "urgent"]"#, true),
        (r#"tags contains ["billing", "other"]"#, false),
        ("tags contains [[4]]", true),
        ("tags contains [[5, 4, 4]]", true),
        (r#"tags contains [{"k": 1}]"#, true),
        (r#"tags contains [{"k": 2}]"#, false),
        ("tags contains [[]]", true),
        ("tags contains []", true),
        ("meta contains []", false),
        (r#"meta contains a"#, false),
        ("n contains 5", false),
        ("t contains true", false),
    ];
    for (expression, expected) in cases {
        assert_eq!(eval(expression, context.clone()), expected, "{expression}");
    }
}

#[test]
fn path_walks_objects_and_arrays() {
    let context = json!({"a": [{"b": 1}, {"b": 2}], "o": {"0": "zero"}, "s": "text"});
    assert!(eval("a[1].b eq 2", context.clone()));
    assert!(eval("a.1.b eq 2", context.clone()));
    assert!(
        eval("a.01.b eq 2", context.clone()),
        "leading zeros index too"
    );
    assert!(
        eval("o.0 eq zero", context.clone()),
        "digits are keys of objects"
    );
    assert!(!eval("a.2 exists", context.clone()));
    assert!(!eval("a.b exists", context.clone()));
    assert!(
        !eval("s.0 exists", context.clone()),
        "strings are not indexed"
    );
    assert!(!eval("a.99999999999999999999999 exists", context.clone()));
    assert!(!eval("x exists", json!(null)));
    assert!(!eval("x exists", json!([1])));
    assert!(eval("x ne 1", json!("scalar context")));
}

// Display and JSON forms

#[test]
fn display_is_canonical() {
    let cases = [
        ("input.score gte 80", "input.score gte 80"),
        ("  a[0].b   eq  x ", "a.0.b eq x"),
        ("validate.valid", "validate.valid"),
        ("validate.valid eq true", "validate.valid"),
        ("not validate.valid", "not validate.valid"),
        ("x eq false", "x eq false"),
        ("x ne true", "x ne true"),
        ("x exists", "x exists"),
        ("x eq null", "x eq null"),
        (r#"x eq "true""#, r#"x eq "true""#),
        (r#"x eq "plain""#, "x eq plain"),
        (r#"x eq "two words""#, r#"x eq "two words""#),
        ("x eq +007", "x eq 7"),
        ("x eq 1.50", "x eq 1.5"),
        ("x eq 5.", "x eq 5.0"),
        ("x eq 1e20", "x eq 1e+20"),
        (r#"x in [ "a" , 1 ]"#, r#"x in ["a",1]"#),
    ];
    for (expression, canonical) in cases {
        let condition = parse(expression);
        assert_eq!(condition.to_string(), canonical, "{expression}");
        assert_eq!(parse(canonical), condition, "{canonical}");
    }
}

#[test]
fn to_json_is_the_stored_form() {
    assert_eq!(
        parse("not input.tags[0] contains urgent").to_json(),
        json!({"not": true, "path": ["input", "tags", "0"], "op": "contains", "value": "urgent"})
    );
    assert_eq!(
        parse("x exists").to_json(),
        json!({"not": false, "path": ["x"], "op": "exists"})
    );
    assert_eq!(
        parse("validate.valid").to_json(),
        json!({"not": false, "path": ["validate", "valid"], "op": "eq", "value": true})
    );
}

#[test]
fn from_json_reads_to_json() {
    for expression in [
        "a.b eq 1",
        "not x exists",
        r#"s in ["a", [1]]"#,
        "x",
        "m contains 1.5",
    ] {
        let condition = parse(expression);
        assert_eq!(
            Condition::from_json(&condition.to_json()).unwrap(),
            condition
        );
    }
}

#[test]
fn from_json_rejects_invalid_forms() {
    let cases = [
        json!("x eq 1"),
        json!({"path": ["x"], "op": "eq", "value": 1}),
        json!({"not": "no", "path": ["x"], "op": "eq", "value": 1}),
        json!({"not": false, "path": [], "op": "eq", "value": 1}),
        json!({"not": false, "path": "x", "op": "eq", "value": 1}),
        json!({"not": false, "path": ["a.b"], "op": "eq", "value": 1}),
        json!({"not": false, "path": [""], "op": "eq", "value": 1}),
        json!({"not": false, "path": [1], "op": "eq", "value": 1}),
        json!({"not": false, "path": ["not"], "op": "eq", "value": 1}),
        json!({"not": false, "path": ["x"], "op": "like", "value": 1}),
        json!({"not": false, "path": ["x"], "op": "eq"}),
        json!({"not": false, "path": ["x"], "op": "exists", "value": 1}),
        json!({"not": false, "path": ["x"], "op": "in", "value": 1}),
        json!({"not": false, "path": ["x"], "op": "eq", "value": null}),
        json!({"not": false, "path": ["x"], "op": "eq", "value": {"a": 1}}),
        json!({"not": false, "path": ["x"], "op": "eq", "value": "a\u{0}"}),
        json!({"not": false, "path": ["x"], "op": "eq", "value": 1, "extra": 1}),
    ];
    for json in cases {
        assert!(Condition::from_json(&json).is_err(), "{json}");
    }
    let error =
        Condition::from_json(&json!({"not": false, "path": ["x"], "op": "eq"})).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"invalid condition JSON {"not":false,"op":"eq","path":["x"]}: operator eq needs a value"#
    );
}

// Properties

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_]{1,6}"
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(segment(), 1..4).prop_filter("not reserved", |path| path != &["not"])
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        (-1000i64..1000).prop_map(Value::from),
        (-100i32..100).prop_map(|n| Value::from(f64::from(n) / 4.0)),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z_][A-Za-z0-9_-]{0,6}",
        any::<String>().prop_map(|s| s.replace('\0', "")),
        Just("true".to_owned()),
        Just("null".to_owned()),
        Just("a eq b".to_owned()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![Just(Value::Null), scalar()];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(string(), inner, 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn literal() -> impl Strategy<Value = Value> {
    prop_oneof![
        scalar(),
        prop::collection::vec(json_value(), 0..4).prop_map(Value::Array),
    ]
}

fn operator() -> impl Strategy<Value = Operator> {
    prop::sample::select(Operator::ALL.to_vec())
}

fn condition() -> impl Strategy<Value = Condition> {
    (any::<bool>(), path(), operator(), literal()).prop_filter_map(
        "valid condition",
        |(negated, path, operator, literal)| {
            let mut json = json!({"not": negated, "path": path, "op": operator.as_str()});
            if operator.takes_value() {
                json["value"] = literal;
            }
            Condition::from_json(&json).ok()
        },
    )
}

/// Expressions assembled from grammar fragments, to reach deeper into the
/// parser than random text does.
fn fragmentary_expression() -> impl Strategy<Value = String> {
    let fragment = prop::sample::select(vec![
        "not", "a", "a.b", "a[0]", "a[", "]", ".", "eq", "ne", "gt", "in", "contains", "exists",
        "[", "[1,", "\"", "\"x y\"", "\\", "\\u0000", "\\ud800", "{", "}", "1e400", "-0", "+.5",
        "1e", "true", "null", "-", ",", " ", "\t", "\n", "é",
    ]);
    prop::collection::vec(fragment, 0..10).prop_map(|parts| parts.join(" "))
}

/// Places `leaf` at `path` in otherwise empty objects.
fn nest(path: &[String], leaf: Value) -> Value {
    path.iter().rev().fold(leaf, |inner, key| {
        let mut object = serde_json::Map::new();
        object.insert(key.clone(), inner);
        Value::Object(object)
    })
}

fn context() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        (path(), json_value()).prop_map(|(path, leaf)| nest(&path, leaf)),
    ]
}

proptest! {
    #[test]
    fn display_parses_back(condition in condition()) {
        let text = condition.to_string();
        prop_assert_eq!(Condition::parse(&text), Ok(condition), "{}", text);
    }

    #[test]
    fn json_form_reads_back(condition in condition()) {
        let text = condition.to_json().to_string();
        let json: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Condition::from_json(&json), Ok(condition));
    }

    #[test]
    fn parse_never_panics(text in any::<String>()) {
        let _ = Condition::parse(&text);
    }

    #[test]
    fn parse_fragments_never_panics(text in fragmentary_expression()) {
        if let Ok(condition) = Condition::parse(&text) {
            prop_assert_eq!(Condition::parse(&condition.to_string()), Ok(condition));
        }
    }

    #[test]
    fn evaluate_never_panics(condition in condition(), context in context()) {
        let _ = condition.evaluate(&context);
    }

    #[test]
    fn not_negates_result(condition in condition(), context in context()) {
        let mut json = condition.to_json();
        json["not"] = Value::Bool(!condition.is_negated());
        let negated = Condition::from_json(&json).unwrap();
        prop_assert_eq!(negated.evaluate(&context), !condition.evaluate(&context));
    }

    #[test]
    fn eq_and_ne_are_opposites_on_present_fields(
        path in path(),
        field in json_value(),
        literal in literal(),
    ) {
        let context = nest(&path, field);
        let make = |op: &str| Condition::from_json(
            &json!({"not": false, "path": path, "op": op, "value": literal})
        );
        if let (Ok(eq), Ok(ne)) = (make("eq"), make("ne")) {
            prop_assert_eq!(eq.evaluate(&context), !ne.evaluate(&context));
        }
    }
}
