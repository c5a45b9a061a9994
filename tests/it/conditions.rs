//! The Rust condition parser and evaluator against the SQL functions
//! cb_parse_condition and cb_eval_condition: both must produce the same JSON
//! form, reject the same expressions with the same message, and evaluate
//! every condition to the same result.

use catbird_core::condition::Condition;
use catbird_tests::TestDb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tokio_postgres::Client;

/// Parses `expression` with cb_parse_condition: the JSON form, or the
/// message of the CB002 error.
async fn sql_parse(client: &Client, expression: &str) -> Result<Value, String> {
    match client
        .query_one("SELECT cb_parse_condition($1)", &[&expression])
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(error) => {
            let db_error = error
                .as_db_error()
                .unwrap_or_else(|| panic!("cb_parse_condition({expression:?}) failed: {error}"));
            assert_eq!(
                db_error.code().code(),
                "CB002",
                "SQLSTATE for {expression:?}: {}",
                db_error.message()
            );
            Err(db_error.message().to_owned())
        }
    }
}

/// Parses `expression` in Rust: the JSON form, or the message SQL raises.
fn rust_parse(expression: &str) -> Result<Value, String> {
    Condition::parse(expression)
        .map(|condition| condition.to_json())
        .map_err(|error| format!("catbird: {error}"))
}

/// Returns whether two JSON values are equal as jsonb: numbers by value, so the
/// double 100.0 that serde_json writes equals the 100 PostgreSQL writes.
async fn jsonb_equal(client: &Client, a: &Value, b: &Value) -> bool {
    client
        .query_one("SELECT $1::jsonb = $2::jsonb", &[a, b])
        .await
        .expect("compare jsonb")
        .get(0)
}

/// Checks that Rust and SQL agree on `expression`, and returns the Rust
/// result.
async fn assert_parse_agrees(client: &Client, expression: &str) -> Result<Value, String> {
    let rust = rust_parse(expression);
    let sql = sql_parse(client, expression).await;
    match (&rust, &sql) {
        (Ok(rust_json), Ok(sql_json)) => assert!(
            jsonb_equal(client, rust_json, sql_json).await,
            "{expression:?}: Rust gives {rust_json}, SQL gives {sql_json}"
        ),
        (Err(rust_message), Err(sql_message)) => assert_eq!(
            rust_message, sql_message,
            "{expression:?}: the error messages differ"
        ),
        _ => panic!("{expression:?}: Rust gives {rust:?}, SQL gives {sql:?}"),
    }
    rust
}

/// Evaluates `expression` on `context` three ways: in Rust, in SQL on the
/// SQL-parsed form, and in SQL on the Rust JSON form.
async fn evaluate_three_ways(client: &Client, expression: &str, context: &Value) -> [bool; 3] {
    let condition = Condition::parse(expression).unwrap_or_else(|error| panic!("{error}"));
    let row = client
        .query_one(
            "SELECT cb_eval_condition(cb_parse_condition($1), $2::jsonb), \
                    cb_eval_condition($3::jsonb, $2::jsonb)",
            &[&expression, context, &condition.to_json()],
        )
        .await
        .unwrap_or_else(|error| panic!("evaluating {expression:?} on {context}: {error}"));
    [condition.evaluate(context), row.get(0), row.get(1)]
}

fn nested(depth: usize) -> String {
    format!("x in {}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Expressions both parsers must accept with the same JSON form.
fn valid_expressions() -> Vec<String> {
    let fixed = [
        // Reference expressions.
        "input.score gte 80",
        "score eq 80",
        "status eq approved",
        "status ne approved",
        "optional_field exists",
        "not optional_field exists",
        "message contains error",
        "not message contains error",
        "user.age gte 18",
        "data.metrics.score gt 50",
        "missing eq value",
        "nullable exists",
        "step1.optional_field ne value",
        "step1 lt 90",
        "input.is_premium",
        "not validate.valid",
        "validate.valid eq true",
        // Paths and tokens.
        "a[0].b eq 1",
        "a.0.b eq 1",
        "a[007] exists",
        "not.x eq 1",
        "not[0] exists",
        "eq eq eq",
        "exists",
        "x eq not",
        "  \t score \n eq\r\n 80 \t",
        "A_1.B2[3].c eq x",
        // Scalars.
        "x eq true",
        "x eq false",
        "x eq null",
        "x eq True",
        "x eq _a-b_1",
        "x eq -5",
        "x eq +5",
        "x eq 007",
        "x eq 1.5",
        "x eq 5.",
        "x eq .5",
        "x eq -.5",
        "x eq 1e3",
        "x eq 2.5E-3",
        "x eq 1e+20",
        "x eq 18446744073709551615",
        "x eq 18446744073709551616",
        "x eq -9223372036854775808",
        "x eq -9223372036854775809",
        "x eq 9007199254740993",
        "x eq 0.1000000000000000000001",
        "x eq 12345678901234567890123",
        "x eq 1e-400",
        "x eq -1e-400",
        "x eq 0e99999999999",
        "x eq 1e-310",
        "x eq 5e-324",
        "x eq 1.7976931348623157e308",
        "x eq 1.7976931348623157e+308",
        "x eq 1.7976931348623156e308",
        "x eq 4.9e-324",
        // Halfway between two doubles: the even one, printed the way
        // serde_json prints it.
        "x eq 36030000000001692.",
        "x in [36030000000001692.0, 3.6030000000001696e16]",
        "x eq -0",
        "x eq -0.0",
        r#"x eq "80""#,
        r#"x eq """#,
        r#"message contains "an error occurred""#,
        r#"status eq "a eq b""#,
        r#"x eq "tab\there \"q\" \u00e9 \ud83d\ude00 \/""#,
        r#"x eq "é ✓""#,
        "m contains 1.5e3",
        // Arrays.
        r#"status in ["a", "b"]"#,
        "x in [1, 1.50, 1e2, 1E-2, -0, 0.1, -0.0]",
        r#"x in [[1, [2]], {"k": [true, null]}]"#,
        "x in []",
        "x contains [ ]",
        r#"x in [{"a": 1, "a": 2}]"#,
        "x in [12345678901234567e2, 18446744073709551616, -9223372036854775809]",
        "x in [1e-1001, 1e-400, 0e5000]",
        r#"x in ["[[[", "]]]", "{"]"#,
        r#"x in ["\ud83d\ude00", "\"", "\\"]"#,
        "x in [\n1,\t2\r]",
    ];
    let mut expressions: Vec<String> = fixed.into_iter().map(str::to_owned).collect();
    expressions.push(nested(32));
    expressions.push(format!("x in [\"{}\"]", "[".repeat(100)));
    expressions
}

/// Expressions both parsers must reject with the same message.
fn invalid_expressions() -> Vec<String> {
    let fixed = [
        "",
        "   ",
        "not",
        " not ",
        "not not",
        "not not eq 1",
        "a..b eq 1",
        ".a eq 1",
        "a. eq 1",
        "a[] eq 1",
        "a[x] eq 1",
        "a[0 eq 1",
        "a[0][1] eq 1",
        "a[-1] eq 1",
        "a-b eq 1",
        "é eq 1",
        "a.b[1.5] eq 1",
        "score greater 80",
        "score EQ 80",
        "score == 80",
        "score gt",
        "x in",
        "x contains   ",
        "x exists true",
        r#"x eq {"a": 1}"#,
        "x eq {",
        "x eq an error",
        "x eq a.b",
        "x eq a/b",
        "x eq -abc",
        "x eq 1e",
        "x eq 1.2.3",
        "x eq 1abc",
        "x eq é",
        "x eq +",
        "x eq .",
        "x eq 'single'",
        r#"x eq "unterminated"#,
        r#"x eq "a" "b""#,
        r#"x eq "a"b"#,
        r#"x eq "bad \x escape""#,
        "x eq \"raw\ttab\"",
        r#"x eq "\ud800""#,
        r#"x eq "\udc00\ud800""#,
        r#"x eq "\u12""#,
        r#"x eq "a\u0000b""#,
        r#"x eq "\u0000"#,
        "x in [",
        "x in [1,]",
        "x in [01]",
        "x in [1 2]",
        "x in [1] x",
        "x in [.5]",
        "x in [+1]",
        "x in [NaN]",
        "x in [\u{c}1]",
        r#"x in ["\udc00"]"#,
        r#"x in ["\u0000"]"#,
        r#"x in [{"k\u0000": 1}]"#,
        r#"x in [{"k\ud800": 1}]"#,
        "x in [1e400]",
        "x in [1e99999999999]",
        "x eq 1e400",
        "x eq -1e309",
        "status in a",
        "status in 1",
        r#"status in "[1]""#,
        "status in true",
        "status in {",
        // Two problems in one literal: the first in document order wins.
        r#"x in [1e400, "\u0000"]"#,
        r#"x in ["\u0000", 1e400]"#,
        r#"x in ["\u0000", "\ud800"]"#,
        r#"x in ["\ud800", "\u0000"]"#,
        r#"x in [1e-1001, "\u0000"]"#,
        r#"x in [1e99999, "\ud800"]"#,
    ];
    let mut expressions: Vec<String> = fixed.into_iter().map(str::to_owned).collect();
    expressions.push(format!("x eq {}", "9".repeat(400)));
    expressions.push(nested(33));
    expressions.push(format!("x in {}", "[".repeat(1000)));
    expressions.push(format!("x in {}1, 1e400]", "[".repeat(40)));
    expressions
}

#[tokio::test]
async fn conditions_parse_agrees_on_valid_expressions() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let expressions = valid_expressions();
    assert!(expressions.len() >= 60);
    for expression in &expressions {
        let result = assert_parse_agrees(&client, expression).await;
        assert!(result.is_ok(), "{expression:?} was rejected: {result:?}");
    }
}

#[tokio::test]
async fn conditions_parse_agrees_on_invalid_expressions() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let expressions = invalid_expressions();
    assert!(expressions.len() >= 60);
    for expression in &expressions {
        let result = assert_parse_agrees(&client, expression).await;
        assert!(result.is_err(), "{expression:?} was accepted: {result:?}");
    }
}

#[tokio::test]
async fn conditions_sql_parse_gives_canonical_json() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let cases = [
        (
            "not input.tags[0] contains urgent",
            json!({"not": true, "path": ["input", "tags", "0"], "op": "contains", "value": "urgent"}),
        ),
        (
            "x exists",
            json!({"not": false, "path": ["x"], "op": "exists"}),
        ),
        (
            "validate.valid",
            json!({"not": false, "path": ["validate", "valid"], "op": "eq", "value": true}),
        ),
        (
            r#"status in ["a", 2]"#,
            json!({"not": false, "path": ["status"], "op": "in", "value": ["a", 2]}),
        ),
    ];
    for (expression, expected) in cases {
        assert_eq!(
            sql_parse(&client, expression).await,
            Ok(expected),
            "{expression}"
        );
    }

    let message = sql_parse(&client, "score gt").await.unwrap_err();
    assert_eq!(
        message,
        "catbird: invalid condition \"score gt\": operator gt needs a value"
    );
}

#[tokio::test]
async fn conditions_sql_parse_of_null_is_null() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let row = client
        .query_one("SELECT cb_parse_condition(NULL)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<Value>>(0), None);
}

#[tokio::test]
async fn conditions_sql_error_maps_to_invalid_argument() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let error = client
        .query_one("SELECT cb_parse_condition('x in a')", &[])
        .await
        .unwrap_err();
    let error = catbird_core::Error::from(error);
    assert!(matches!(error, catbird_core::Error::InvalidArgument(_)));
    let rust_error = catbird_core::Error::from(Condition::parse("x in a").unwrap_err());
    assert_eq!(error.to_string(), rust_error.to_string());
}

/// (expression, context, expected result)
fn evaluation_cases() -> Vec<(&'static str, Value, bool)> {
    vec![
        // Reference cases.
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
            "input.is_premium",
            json!({"input": {"is_premium": "true"}}),
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
        // Every operator on a missing field, plain and negated.
        ("m eq 1", json!({}), false),
        ("m ne 1", json!({}), true),
        ("m gt 1", json!({}), false),
        ("m gte 1", json!({}), false),
        ("m lt 1", json!({}), false),
        ("m lte 1", json!({}), false),
        ("m in [1]", json!({}), false),
        ("m contains a", json!({}), false),
        ("m exists", json!({}), false),
        ("not m eq 1", json!({}), true),
        ("not m ne 1", json!({}), false),
        ("not m gt 1", json!({}), true),
        ("not m in [1]", json!({}), true),
        ("not m contains a", json!({}), true),
        // Null fields.
        ("v exists", json!({"v": null}), true),
        ("v eq null", json!({"v": null}), false),
        ("v eq null", json!({"v": "null"}), true),
        ("v ne null", json!({"v": null}), true),
        ("v in [null]", json!({"v": null}), true),
        ("v gt 0", json!({"v": null}), false),
        ("v contains null", json!({"v": null}), false),
        ("v.w exists", json!({"v": null}), false),
        ("x exists", json!(null), false),
        ("x ne 1", json!(null), true),
        // Numbers against numbers and strings.
        ("x eq 1", json!({"x": 1.0}), true),
        ("x eq 1.0", json!({"x": 1}), true),
        ("x eq 1e2", json!({"x": 100}), true),
        ("x eq 0", json!({"x": -0.0}), true),
        ("x eq 80", json!({"x": "80"}), false),
        (r#"x eq "80""#, json!({"x": 80}), false),
        ("x ne 80", json!({"x": "80"}), true),
        ("x gt 5", json!({"x": "10"}), false),
        ("not x gt 5", json!({"x": "abc"}), true),
        ("x gt abc", json!({"x": 10}), false),
        ("x gt 2", json!({"x": 2}), false),
        ("x gte 2", json!({"x": 2}), true),
        ("x lt 2", json!({"x": 2}), false),
        ("x lte 2", json!({"x": 2}), true),
        ("x gt 2", json!({"x": 1}), false),
        ("x lt 2", json!({"x": 3}), false),
        ("x gte 2", json!({"x": 1.5}), false),
        ("x lte 2", json!({"x": 2.5}), false),
        ("x gt 1.5", json!({"x": 2}), true),
        ("x gte 2", json!({"x": 2.0}), true),
        ("x lt 0.3", json!({"x": 0.1}), true),
        ("x lte -1", json!({"x": -1}), true),
        ("x lt -1e300", json!({"x": -1e301}), true),
        (
            "x eq 18446744073709551615",
            json!({"x": 18446744073709551615u64}),
            true,
        ),
        (
            "x gt 9223372036854775807",
            json!({"x": 9223372036854775808u64}),
            true,
        ),
        (
            "x lt -9223372036854775808",
            json!({"x": -9223372036854775809.0}),
            true,
        ),
        (
            "x eq 9007199254740993",
            json!({"x": 9007199254740992.0}),
            false,
        ),
        (
            "x lt 1152921504606847000",
            json!({"x": 1152921504606846980u64}),
            true,
        ),
        ("x eq 0.1000000000000000000001", json!({"x": 0.1}), true),
        ("x eq 1e-400", json!({"x": 0}), true),
        (
            "x eq 36030000000001692.",
            json!({"x": 36030000000001696.0}),
            true,
        ),
        (
            "x eq 36030000000001700",
            json!({"x": 36030000000001696.0}),
            true,
        ),
        (
            "x eq 36030000000001696",
            json!({"x": 36030000000001696.0}),
            false,
        ),
        ("x gt 1e-310", json!({"x": 1e-311}), false),
        // Booleans and equality of containers.
        ("x eq false", json!({"x": false}), true),
        ("x eq true", json!({"x": 1}), false),
        ("x eq [1, [2, 3]]", json!({"x": [1.0, [2, 3]]}), true),
        ("x eq [1, 2]", json!({"x": [2, 1]}), false),
        ("x eq [1]", json!({"x": 1}), false),
        (
            r#"x eq [{"a": 1, "b": [true]}]"#,
            json!({"x": [{"b": [true], "a": 1}]}),
            true,
        ),
        (
            r#"x eq [{"a": 1}]"#,
            json!({"x": [{"a": 1, "b": 2}]}),
            false,
        ),
        // Paths through arrays and objects.
        ("a[1].b eq 2", json!({"a": [{"b": 1}, {"b": 2}]}), true),
        ("a.1.b eq 2", json!({"a": [{"b": 1}, {"b": 2}]}), true),
        ("a.01.b eq 2", json!({"a": [{"b": 1}, {"b": 2}]}), true),
        ("a.2 exists", json!({"a": [1, 2]}), false),
        ("a.b exists", json!({"a": [1, 2]}), false),
        ("o.0 eq zero", json!({"o": {"0": "zero"}}), true),
        ("s.0 exists", json!({"s": "text"}), false),
        ("a.99999999999999999999999 exists", json!({"a": [1]}), false),
        ("a.2147483648 exists", json!({"a": [1]}), false),
        ("x.y.z eq 1", json!({"x": {"y": 5}}), false),
        // in.
        (r#"status in ["a", "b"]"#, json!({"status": "b"}), true),
        (r#"status in ["a", "b"]"#, json!({"status": "c"}), false),
        ("n in [1, 2]", json!({"n": 2.0}), true),
        (r#"n in ["1"]"#, json!({"n": 1}), false),
        ("x in [[1, 2], 3]", json!({"x": [1, 2]}), true),
        ("x in [[1, 2], 3]", json!({"x": [1]}), false),
        ("x in [[1, 1]]", json!({"x": [1]}), false),
        (r#"x in [{"a": 1}]"#, json!({"x": {"a": 1}}), true),
        (r#"x in [{"a": 1, "b": 2}]"#, json!({"x": {"a": 1}}), false),
        ("x in []", json!({"x": 1}), false),
        ("not x in []", json!({"x": 1}), true),
        // contains on strings.
        ("m contains 1500", json!({"m": "code 1500 true"}), true),
        ("m contains 1.5e3", json!({"m": "code 1500 true"}), true),
        ("m contains 1500.0", json!({"m": "code 1500 true"}), true),
        (
            "m contains 1e20",
            json!({"m": "100000000000000000000"}),
            true,
        ),
        ("m contains 1.5e-7", json!({"m": "0.00000015"}), true),
        ("m contains .5", json!({"m": "price 0.5"}), true),
        ("m contains -0.0", json!({"m": "0"}), true),
        ("m contains true", json!({"m": "code 1500 true"}), true),
        (r#"m contains "e 15""#, json!({"m": "code 1500 true"}), true),
        (r#"m contains """#, json!({"m": ""}), true),
        ("m contains [1500]", json!({"m": "code 1500 true"}), false),
        ("m contains Code", json!({"m": "code"}), false),
        (r#"m contains "é""#, json!({"m": "café"}), true),
        // contains on arrays and objects.
        (
            "tags contains urgent",
            json!({"tags": ["urgent", "billing"]}),
            true,
        ),
        (
            "tags contains Urgent",
            json!({"tags": ["urgent", "billing"]}),
            false,
        ),
        ("tags contains 3.0", json!({"tags": [3]}), true),
        ("tags contains 4", json!({"tags": [[4]]}), false),
        (
            r#"tags contains ["billing", "urgent"]"#,
            json!({"tags": ["urgent", "billing"]}),
            true,
        ),
        (
            r#"tags contains ["billing", "other"]"#,
            json!({"tags": ["urgent", "billing"]}),
            false,
        ),
        ("tags contains [[4]]", json!({"tags": [[4, 5]]}), true),
        ("tags contains [[5, 4, 4]]", json!({"tags": [[4, 5]]}), true),
        (
            r#"tags contains [{"k": 1}]"#,
            json!({"tags": [{"k": 1, "j": 2}]}),
            true,
        ),
        (
            r#"tags contains [{"k": 2}]"#,
            json!({"tags": [{"k": 1, "j": 2}]}),
            false,
        ),
        (
            r#"tags contains [{"k": [1]}]"#,
            json!({"tags": [{"k": [2, 1]}]}),
            true,
        ),
        (
            r#"tags contains [{"k": 1}]"#,
            json!({"tags": [{"k": [1]}]}),
            false,
        ),
        ("tags contains [[]]", json!({"tags": [[4, 5]]}), true),
        ("tags contains [[]]", json!({"tags": [{}]}), false),
        ("tags contains []", json!({"tags": []}), true),
        ("tags contains [1, 1]", json!({"tags": [1]}), true),
        ("meta contains []", json!({"meta": {"a": 1}}), false),
        ("meta contains a", json!({"meta": {"a": 1}}), false),
        ("n contains 5", json!({"n": 5}), false),
        ("t contains true", json!({"t": true}), false),
        // exists.
        ("x exists", json!({"x": false}), true),
        ("x exists", json!({"x": []}), true),
        ("not x exists", json!({"x": 0}), false),
    ]
}

#[tokio::test]
async fn conditions_evaluation_agrees_with_expected() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    for (expression, context, expected) in evaluation_cases() {
        let [rust, sql, sql_on_rust_json] =
            evaluate_three_ways(&client, expression, &context).await;
        assert_eq!(rust, expected, "Rust: {expression} on {context}");
        assert_eq!(sql, expected, "SQL: {expression} on {context}");
        assert_eq!(
            sql_on_rust_json, expected,
            "SQL on the Rust JSON form: {expression} on {context}"
        );
    }
}

#[tokio::test]
async fn conditions_eval_never_raises_on_odd_input() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let conditions = [
        Value::Null,
        json!({}),
        json!({"op": "gt", "path": ["x"], "value": "abc"}),
        json!({"op": "contains", "path": "x", "value": {"a": 1}}),
        json!({"op": "in", "path": [["x"]], "value": 3}),
        json!({"not": "yes", "op": "eq", "path": [], "value": null}),
        json!([1, 2]),
    ];
    let contexts = [
        Value::Null,
        json!(null),
        json!("x"),
        json!({"x": "abc"}),
        json!({"x": [1, {"a": 1}]}),
        json!([[1]]),
    ];
    for condition in &conditions {
        for context in &contexts {
            let condition_param = (!condition.is_null()).then_some(condition);
            let context_param = (!context.is_null()).then_some(context);
            // Reading a bool also checks that the result is never SQL NULL.
            let _: bool = client
                .query_one(
                    "SELECT cb_eval_condition($1::jsonb, $2::jsonb)",
                    &[&condition_param, &context_param],
                )
                .await
                .unwrap_or_else(|error| panic!("{condition} on {context}: {error}"))
                .get(0);
        }
    }

    // Constant arguments let the planner fold the call; it must not raise.
    let row = client
        .query_one(
            r#"SELECT cb_eval_condition('{"not": false, "path": ["x"], "op": "gt", "value": "abc"}',
                                        '{"x": "def"}'),
                      cb_eval_condition(cb_parse_condition('m contains abc'), '{"m": 5}')"#,
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert!(!row.get::<_, bool>(1));
}

#[tokio::test]
async fn conditions_known_divergence_beyond_double_precision() {
    // serde_json reads a JSON number into a 64-bit integer or a double;
    // PostgreSQL keeps every digit. A context written by another client with
    // more digits than a double holds can therefore evaluate differently.
    let db = TestDb::new().await;
    let client = db.connect().await;
    let text = r#"{"x": 0.10000000000000000001}"#;
    let context: Value = serde_json::from_str(text).unwrap();
    let condition = Condition::parse("x eq 0.1").unwrap();
    let sql: bool = client
        .query_one(
            "SELECT cb_eval_condition(cb_parse_condition('x eq 0.1'), $1::text::jsonb)",
            &[&text],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        condition.evaluate(&context),
        "Rust reads x as the double 0.1"
    );
    assert!(!sql, "PostgreSQL keeps the extra digits");
}

#[tokio::test]
async fn conditions_migration_up_and_down() {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    let count_functions = "SELECT count(*) FROM pg_proc \
                           WHERE proname IN ('cb_parse_condition', 'cb_eval_condition') \
                              OR proname LIKE 'cb\\_condition\\_%'";

    assert_eq!(
        catbird_sql::migrate_up_to(&mut client, 2).await.unwrap(),
        [1, 2]
    );
    let count: i64 = client.query_one(count_functions, &[]).await.unwrap().get(0);
    assert_eq!(count, 11);
    let result: bool = client
        .query_one(
            "SELECT cb_eval_condition(cb_parse_condition('input.n gt 1'), '{\"input\": {\"n\": 2}}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(result);

    assert_eq!(
        catbird_sql::migrate_down_to(&mut client, 1).await.unwrap(),
        [2]
    );
    let count: i64 = client.query_one(count_functions, &[]).await.unwrap().get(0);
    assert_eq!(count, 0);
    let queues_table: Option<String> = client
        .query_one("SELECT to_regclass('cb_queues')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queues_table.as_deref(), Some("cb_queues"));

    assert_eq!(
        catbird_sql::migrate_up_to(&mut client, 2).await.unwrap(),
        [2]
    );
    assert_eq!(
        catbird_sql::migrate_down_to(&mut client, 0).await.unwrap(),
        [2, 1]
    );
    let leftovers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = current_schema() AND p.proname LIKE 'cb\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
}

// Properties, through one connection to keep them fast.

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "x", "0", "1", "01"]).prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(key(), 1..4)
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..4).prop_map(Value::from),
        (-6i32..7).prop_map(|n| Value::from(f64::from(n) / 2.0)),
        prop::sample::select(vec![
            json!(9007199254740992u64),
            json!(9007199254740993u64),
            json!(9007199254740992.0),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(18446744073709551615.0),
            json!(1152921504606846980u64),
            json!(1152921504606847000.0),
            json!(0.1),
            json!(-0.0),
            json!(1e-310),
            json!(1e300),
        ]),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        any::<i64>().prop_map(Value::from),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a", "b", "ab", "1", "10", "1.5", "true", "null", "", "a b", "é"
        ])
        .prop_map(str::to_owned),
        "[a-c1 .]{0,5}",
        any::<String>().prop_map(|text| text.replace('\0', "")),
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
    prop_oneof![Just(Value::Null), scalar()].prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..3)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn condition() -> impl Strategy<Value = Condition> {
    let literal = prop_oneof![
        scalar(),
        prop::collection::vec(json_value(), 0..3).prop_map(Value::Array),
    ];
    let operator = prop::sample::select(vec![
        "eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists",
    ]);
    (any::<bool>(), path(), operator, literal).prop_filter_map(
        "valid condition",
        |(negated, path, operator, literal)| {
            let mut json = json!({"not": negated, "path": path, "op": operator});
            if operator != "exists" {
                json["value"] = literal;
            }
            Condition::from_json(&json).ok()
        },
    )
}

/// A context that often holds the paths conditions ask for.
fn context() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        (path(), json_value()).prop_map(|(path, leaf)| {
            path.iter().rev().fold(leaf, |inner, key| {
                if key.bytes().all(|b| b.is_ascii_digit()) {
                    // Indexes 0, 1 and 01 all reach an element.
                    Value::Array(vec![inner.clone(), inner])
                } else {
                    let mut object = serde_json::Map::new();
                    object.insert(key.clone(), inner);
                    Value::Object(object)
                }
            })
        }),
    ]
}

fn fragmentary_expression() -> impl Strategy<Value = String> {
    let fragment = prop::sample::select(vec![
        "not", "a", "a.b", "a[0]", "a[", "]", ".", "eq", "ne", "gt", "in", "contains", "exists",
        "[", "[1,", "]", "\"", "\"x y\"", "\\", "\\u0000", "\\ud800", "{", "}", "1e400", "-0",
        "+.5", "1e", "true", "null", "-", ",", "\t", "\n", "é", "1.50",
    ]);
    prop::collection::vec(fragment, 0..8).prop_map(|parts| parts.join(" "))
}

fn property_runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn conditions_property_evaluation_agrees() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(TestDb::new());
    let client = runtime.block_on(db.connect());

    property_runner()
        .run(&(condition(), context()), |(condition, context)| {
            let text = condition.to_string();
            let row = runtime
                .block_on(client.query_one(
                    "SELECT cb_eval_condition($1::jsonb, $3::jsonb), \
                            cb_eval_condition(cb_parse_condition($2), $3::jsonb), \
                            cb_parse_condition($2) = $1::jsonb",
                    &[&condition.to_json(), &text, &context],
                ))
                .map_err(|error| TestCaseError::fail(format!("{text} on {context}: {error}")))?;
            let rust = condition.evaluate(&context);
            let sql: bool = row.get(0);
            let sql_parsed: bool = row.get(1);
            let same_json: bool = row.get(2);
            prop_assert!(same_json, "{} parses differently in SQL", text);
            prop_assert_eq!(rust, sql, "{} on {}", text, context);
            prop_assert_eq!(rust, sql_parsed, "{} on {}", text, context);
            Ok(())
        })
        .unwrap();
}

#[test]
fn conditions_property_parse_agrees() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(TestDb::new());
    let client = runtime.block_on(db.connect());

    property_runner()
        .run(&fragmentary_expression(), |expression| {
            let rust = rust_parse(&expression);
            let sql = runtime.block_on(sql_parse(&client, &expression));
            match (&rust, &sql) {
                (Ok(rust_json), Ok(sql_json)) => {
                    let equal = runtime.block_on(jsonb_equal(&client, rust_json, sql_json));
                    prop_assert!(
                        equal,
                        "{:?}: {} against {}",
                        expression,
                        rust_json,
                        sql_json
                    );
                }
                (Err(rust_message), Err(sql_message)) => {
                    prop_assert_eq!(rust_message, sql_message, "{:?}", expression);
                }
                _ => prop_assert!(false, "{:?}: Rust {:?}, SQL {:?}", expression, rust, sql),
            }
            Ok(())
        })
        .unwrap();
}
