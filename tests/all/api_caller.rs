//! Who calls the API: configured tokens (looked up in constant time, never
//! shown) and identities checked by an auth filter in front.

use envoy_webhooks::testing::caller::{
    self, Caller, Credentials, Identity, IdentityHeaders, Refusal, Role, Tokens,
};
use serde_json::json;

const A: &str = "9c2f2e2a-6b7d-11ee-8c99-0242ac120002";
const B: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const TOKEN_A: &str = "tok-a-6v3Qx9Lk2Jm8Np4Rs7Tw";
const TOKEN_B: &str = "tok-b-Zy1Xw2Vu3Ts4Rq5Po6Nm";

fn tokens() -> Tokens {
    Tokens::parse(&json!({
        TOKEN_A: {"system_domain_id": A, "roles": ["can_read_webhooks", "can_write_webhooks", "can_delete_webhooks"]},
        TOKEN_B: {"system_domain_id": B.to_uppercase(), "roles": ["can_read_webhooks"]},
    }))
    .unwrap()
}

/// A tenant's identity, as the tenant API checks it.
fn identify(
    header: &dyn Fn(&str) -> Option<String>,
    tokens: Option<&Tokens>,
    identity: Option<&IdentityHeaders>,
) -> Result<Caller, Refusal> {
    match caller::identify(Credentials::Tenant { tokens, identity }, header)? {
        Identity::Tenant(caller) => Ok(caller),
        Identity::Operator => panic!("the tenant API never finds the operator"),
    }
}

fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    move |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

#[test]
fn a_token_finds_its_tenant_and_roles_and_nothing_else_does() {
    let tokens = tokens();
    let a = tokens.caller(TOKEN_A).unwrap();
    assert_eq!(a.system_domain_id, A);
    assert!(a.may(Role::Read) && a.may(Role::Write) && a.may(Role::Delete));
    let b = tokens.caller(TOKEN_B).unwrap();
    assert_eq!(b.system_domain_id, B, "UUIDs are kept in lower case");
    assert!(b.may(Role::Read) && !b.may(Role::Write) && !b.may(Role::Delete));
    for wrong in [
        "",
        "tok-a",
        &TOKEN_A[..TOKEN_A.len() - 1],
        &format!("{TOKEN_A}x"),
        &TOKEN_A.to_uppercase(),
    ] {
        assert_eq!(tokens.caller(wrong), None, "{wrong:?}");
    }
    assert!(!format!("{tokens:?}").contains("tok-"), "{tokens:?}");
}

#[test]
fn bad_token_tables_list_every_problem_without_showing_a_token() {
    let problems = Tokens::parse(&json!({
        "short": {"system_domain_id": A, "roles": ["can_read_webhooks"]},
        "has a space in it, which is not ok at all": {"system_domain_id": "nope", "roles": ["admin"]},
        TOKEN_A: {"system_domain_id": A, "roles": "can_read_webhooks", "extra": 1},
    }))
    .unwrap_err();
    let text = problems.join("\n");
    for words in [
        "is 5 characters long; use at least 24",
        "whitespace",
        "expected the tenant's UUID",
        "unknown role \"admin\"",
        "expected a list of roles",
        "unknown field(s) extra",
    ] {
        assert!(text.contains(words), "{words} not in:\n{text}");
    }
    for token in ["short", "has a space", TOKEN_A] {
        assert!(!text.contains(token), "{token} shown in:\n{text}");
    }
    assert!(Tokens::parse(&json!([TOKEN_A])).unwrap_err()[0].contains("found a list"));
}

#[test]
fn auth_token_identifies_the_caller() {
    let tokens = tokens();
    let id = |pairs: &[(&str, &str)]| identify(&headers(pairs), Some(&tokens), None);
    assert_eq!(
        id(&[("auth-token", TOKEN_B)]).unwrap(),
        Caller::new(B, &[Role::Read])
    );
    assert_eq!(
        id(&[("auth-token", &format!(" {TOKEN_B} "))])
            .unwrap()
            .system_domain_id,
        B
    );
    assert_eq!(id(&[]), Err(Refusal("send your token in Auth-Token")));
    assert_eq!(
        id(&[("auth-token", "tok-c-000000000000000000000")]),
        Err(Refusal("the Auth-Token is not valid"))
    );
    // Without tokens configured, a token is worth nothing.
    assert!(identify(&headers(&[("auth-token", TOKEN_A)]), None, None).is_err());
}

#[test]
fn an_identity_checked_in_front_wins_over_a_token() {
    let tokens = tokens();
    let identity = IdentityHeaders {
        system_domain_id: "x-tenant".to_string(),
        roles: "x-roles".to_string(),
    };
    let id = |pairs: &[(&str, &str)]| identify(&headers(pairs), Some(&tokens), Some(&identity));
    let caller = id(&[
        ("x-tenant", &B.to_uppercase()),
        (
            "x-roles",
            "can_read_webhooks,can_write_webhooks unknown_role",
        ),
        ("auth-token", TOKEN_A),
    ])
    .unwrap();
    assert_eq!(caller, Caller::new(B, &[Role::Read, Role::Write]));
    assert!(id(&[("x-tenant", "not-a-uuid"), ("auth-token", TOKEN_A)]).is_err());
    // No identity header: the token still works.
    assert_eq!(id(&[("auth-token", TOKEN_A)]).unwrap().system_domain_id, A);
    // Identity headers alone, no tokens configured.
    assert_eq!(
        identify(&headers(&[("x-tenant", A)]), None, Some(&identity)).unwrap(),
        Caller::new(A, &[])
    );
}
