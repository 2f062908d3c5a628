//! Runs every case of tests/fixtures/validation_cases.json through the request layer the
//! way the gateway does (parse_body -> validate_chat -> resolve_limit -> rewrite_body) and
//! checks status, exact `param`, code, parse-error kind and offset, and the limit the
//! worker would receive. The same fixture is meant to be replayed against the live gateway.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;
use vllm_gateway::request::{
    parse_body, resolve_limit, rewrite_body, validate_chat, JsonLimits, LimitPolicy,
    ValidationPolicy,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[allow(dead_code)]
    description: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    body: Option<Value>,
    raw: Option<String>,
    raw_hex: Option<String>,
    status: u16,
    param: Option<String>,
    code: Option<String>,
    policy: Option<ValidationPolicy>,
    limits: Option<Limits>,
    /// Expected `BodyErrorKind::code()` for bodies that do not parse.
    error: Option<String>,
    offset: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    policy: LimitPolicy,
    prompt_tokens: Option<u64>,
    expect_limit: Option<u64>,
}

/// What the gateway would answer.
#[derive(Debug, PartialEq)]
enum Outcome {
    Accepted { limit: Option<u64> },
    Rejected { param: String, code: String },
    Unparsable { error: String, offset: usize },
}

fn load() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/validation_cases.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture well-formed")
}

fn bytes_of(case: &Case) -> Vec<u8> {
    match (&case.body, &case.raw, &case.raw_hex) {
        (Some(b), None, None) => serde_json::to_vec(b).expect("serializable body"),
        (None, Some(r), None) => r.clone().into_bytes(),
        (None, None, Some(h)) => hex::decode(h).expect("valid hex"),
        _ => panic!("case {:?}: exactly one of body, raw, raw_hex", case.name),
    }
}

fn run(case: &Case) -> Outcome {
    let bytes = bytes_of(case);
    let value = match parse_body(&bytes, &JsonLimits::default()) {
        Ok(v) => v,
        Err(e) => {
            return Outcome::Unparsable {
                error: e.kind.code().to_owned(),
                offset: e.offset,
            }
        }
    };
    let policy = case.policy.clone().unwrap_or_default();
    let facts = match validate_chat(&value, &policy) {
        Ok(f) => f,
        Err(e) => {
            return Outcome::Rejected {
                param: e.param,
                code: e.code.to_owned(),
            }
        }
    };
    let Some(limits) = &case.limits else {
        return Outcome::Accepted { limit: None };
    };
    let decision = match resolve_limit(&facts, &limits.policy, limits.prompt_tokens) {
        Ok(d) => d,
        Err(e) => {
            let inv = e.to_invalid();
            return Outcome::Rejected {
                param: inv.param,
                code: inv.code.to_owned(),
            };
        }
    };
    let Some(decision) = decision else {
        return Outcome::Accepted { limit: None };
    };
    // What the worker receives: exactly one limit field, holding the decided value.
    let out = rewrite_body(&bytes, &decision.rewrite_plan()).expect("rewritable body");
    let sent: Value = serde_json::from_slice(&out).expect("rewrite keeps JSON valid");
    let field = decision.field.as_str();
    assert!(
        sent.get(decision.field.other().as_str()).is_none(),
        "case {:?}: both limit fields forwarded",
        case.name
    );
    Outcome::Accepted {
        limit: sent.get(field).and_then(Value::as_u64),
    }
}

fn expected(case: &Case) -> Outcome {
    match (case.status, &case.error) {
        (400, Some(error)) => Outcome::Unparsable {
            error: error.clone(),
            offset: case.offset.expect("parse errors give an offset"),
        },
        (400, None) => Outcome::Rejected {
            param: case.param.clone().expect("a 400 names its param"),
            code: case.code.clone().expect("a 400 names its code"),
        },
        (200, None) => Outcome::Accepted {
            limit: case.limits.as_ref().and_then(|l| l.expect_limit),
        },
        _ => panic!("case {:?}: bad expectation", case.name),
    }
}

#[test]
fn every_case_gets_the_expected_answer() {
    let fixture = load();
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let want = expected(case);
        let mut got = run(case);
        // A 200 case without an expected limit does not constrain the forwarded limit.
        if let (Outcome::Accepted { limit: None }, Outcome::Accepted { limit }) = (&want, &mut got)
        {
            *limit = None;
        }
        if got != want {
            failures.push(format!("{}: expected {want:?}, got {got:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        fixture.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_table_is_large_unique_and_self_describing() {
    let fixture = load();
    assert!(
        fixture.cases.len() >= 150,
        "only {} cases",
        fixture.cases.len()
    );
    let mut names = HashSet::new();
    for case in &fixture.cases {
        assert!(
            names.insert(case.name.as_str()),
            "duplicate name {:?}",
            case.name
        );
        assert!(
            case.status == 200 || case.status == 400,
            "case {:?}: status {}",
            case.name,
            case.status
        );
        if case.status == 200 {
            assert!(
                case.param.is_none() && case.code.is_none(),
                "case {:?}",
                case.name
            );
        }
    }
    let rejected = fixture.cases.iter().filter(|c| c.status == 400).count();
    let accepted = fixture.cases.len() - rejected;
    assert!(
        rejected >= 100 && accepted >= 50,
        "{rejected} rejected, {accepted} accepted"
    );
}
