//! The regex budget of one evaluation: a regex whose run would cost more
//! than what is left is not run, its comparison does not match, and the
//! evaluation says so.

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::query::{Literal, Query, RegexBudget, MAX_REGEX_BYTES, REGEX_BUDGET};
use serde_json::{json, Value};

fn query(text: &str) -> Query {
    Query::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The cost of the query's only regex.
fn cost(text: &str) -> u64 {
    let parsed = query(text);
    let mut costs = Vec::new();
    if let Some(expr) = parsed.expr() {
        expr.for_each_comparison(&mut |comparison| {
            if let Literal::Regex(regex) = &comparison.value {
                costs.push(regex.cost());
            }
        });
    }
    assert_eq!(costs.len(), 1, "{text}");
    assert_eq!(parsed.max_regex_cost(), costs[0]);
    costs[0]
}

/// A string the regex of `text` cannot afford within one evaluation's budget.
fn too_long_for(text: &str) -> String {
    let length = REGEX_BUDGET / cost(text) + 1;
    "b".repeat(usize::try_from(length).expect("fits"))
}

#[test]
fn costs_grow_with_the_regex_and_stay_within_the_size_limit() {
    let small = cost("s=/abc/");
    let large = cost("s=/[a-z]{1,100}[0-9]{1,100}x/");
    assert!(small >= 1);
    assert!(large > 10 * small, "{small} vs {large}");
    assert!(large <= u64::try_from(MAX_REGEX_BYTES).expect("fits"));
    assert_eq!(query("s=\"abc\"").max_regex_cost(), 0);
    assert_eq!(Query::match_all().max_regex_cost(), 0);
}

#[test]
fn a_regex_over_budget_does_not_match_and_is_reported() {
    let text = too_long_for("s=/b/");
    let event = json!({ "s": text });
    let evaluation = query("s=/b/").evaluate(&event);
    assert!(!evaluation.matched);
    assert!(evaluation.over_budget);
    assert!(!query("s=/b/").matches(&event));
    // A query that ran out of budget does not match, even where the refused
    // comparison sits under a negation: a crafted event must not fire it.
    let negated = query("s!=/b/").evaluate(&event);
    assert!(!negated.matched && negated.over_budget);
    assert!(!query("NOT s=/b/").matches(&event));
    // Comparisons without regexes are unaffected.
    let plain = query("s!=\"x\" AND NOT s=null").evaluate(&event);
    assert!(plain.matched && !plain.over_budget);
}

#[test]
fn a_regex_within_budget_runs() {
    let event = json!({"s": "b".repeat(1000), "n": 12, "t": true});
    for text in ["s=/b$/", "n=/^1/", "t=/ru/"] {
        let evaluation = query(text).evaluate(&event);
        assert!(evaluation.matched && !evaluation.over_budget, "{text}");
    }
}

#[test]
fn one_budget_is_shared_by_the_comparisons_and_values_of_an_evaluation() {
    let regex_cost = cost("s=/x/");
    // Each run costs cost × (length + 1); three values of 9 bytes cost 30 × cost.
    let event = json!({"s": ["aaaaaaaaa", "aaaaaaaaa", "aaaaaaaax"]});
    let q = query("s=/x/");
    let mut exact = RegexBudget::new(30 * regex_cost);
    assert!(q.matches_within(&event, &mut exact));
    assert!(!exact.exceeded());
    assert_eq!(exact.remaining(), 0);

    let mut short = RegexBudget::new(30 * regex_cost - 1);
    assert!(
        !q.matches_within(&event, &mut short),
        "the third run is refused"
    );
    assert!(short.exceeded());
    assert_eq!(short.remaining(), 10 * regex_cost - 1);

    // A later, cheaper run may still fit what is left.
    let mut budget = RegexBudget::new(25 * regex_cost);
    let both = query("s=/x/ OR t=/y/");
    let with_t = json!({"s": ["aaaaaaaaa", "aaaaaaaaa", "aaaaaaaax"], "t": "y"});
    assert!(both.matches_within(&with_t, &mut budget));
    assert!(budget.exceeded());
}

#[test]
fn each_evaluation_starts_with_a_full_budget() {
    let q = query("s=/b/");
    let small = json!({"s": "b"});
    let large = json!({ "s": too_long_for("s=/b/") });
    assert!(q.evaluate(&large).over_budget);
    let after = q.evaluate(&small);
    assert!(after.matched && !after.over_budget);
}

#[test]
fn the_matcher_reports_webhooks_whose_query_ran_over_budget() {
    let config = PluginConfig::from_value(&json!({"webhooks": [
        {"id": "plain", "event_type": "assets", "url": "http://r/x", "query": "s!=null"},
        {"id": "costly", "event_type": "assets", "url": "http://r/x", "query": "s=/b/"},
        {"id": "negated", "event_type": "assets", "url": "http://r/x", "query": "s!=/b/"},
    ]}))
    .expect("valid");
    let matcher = Matcher::new(config.webhooks);
    let event: Value = json!({"event_type": "assets", "s": too_long_for("s=/b/")});
    let (mut out, mut over) = (Vec::new(), Vec::new());
    matcher.matching_with_budget(&event, &mut out, &mut over);
    assert_eq!(out, [0]);
    assert_eq!(over, [1, 2]);
    let mut plain_out = Vec::new();
    matcher.matching(&event, &mut plain_out);
    assert_eq!(plain_out, out);

    let small: Value = json!({"event_type": "assets", "s": "b"});
    let (mut out, mut over) = (Vec::new(), Vec::new());
    matcher.matching_with_budget(&small, &mut out, &mut over);
    assert_eq!(out, [0, 1]);
    assert!(over.is_empty());
}

#[test]
fn webhooks_sharing_a_query_share_its_evaluation_and_each_is_reported_over_budget() {
    // One evaluation of `s=/b/` an event serves all three; each still counts.
    let hook = |id: &str, query: &str| json!({"id": id, "event_type": "assets", "url": "http://r/x", "query": query});
    let config = PluginConfig::from_value(&json!({"webhooks": [
        hook("first", "s=/b/"),
        hook("plain", "s!=null"),
        hook("second", "s=/b/"),
        hook("third", "s = /b/"),
        hook("other-flag", "s=/b/i"),
    ]}))
    .expect("valid");
    let matcher = Matcher::new(config.webhooks);
    let costly: Value = json!({"event_type": "assets", "s": too_long_for("s=/b/")});
    let (mut out, mut over) = (Vec::new(), Vec::new());
    matcher.matching_with_budget(&costly, &mut out, &mut over);
    assert_eq!(out, [1]);
    assert_eq!(over, [0, 2, 3, 4]);
    // The next event is evaluated afresh: nothing carries over.
    let small: Value = json!({"event_type": "assets", "s": "B"});
    let (mut out, mut over) = (Vec::new(), Vec::new());
    matcher.matching_with_budget(&small, &mut out, &mut over);
    assert_eq!(out, [1, 4]);
    assert!(over.is_empty());
    let (mut out, mut over) = (Vec::new(), Vec::new());
    matcher.matching_with_budget(
        &json!({"event_type": "assets", "s": "b"}),
        &mut out,
        &mut over,
    );
    assert_eq!(out, [0, 1, 2, 3, 4]);
}

#[test]
fn a_long_array_of_numbers_is_refused_cheaply_once_the_budget_is_spent() {
    let numbers: Vec<u32> = (0..200_000).collect();
    let event = json!({ "n": numbers });
    let evaluation = query("n=/^-/").evaluate(&event);
    assert!(!evaluation.matched);
    assert!(evaluation.over_budget);
}
