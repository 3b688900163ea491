//! The etcd codec against answers recorded from a real etcd 3.4
//! (tests/fixtures/etcd/README.md), and the requests it builds against the
//! ones that were sent to get them.

use std::path::PathBuf;

use envoy_webhooks::testing::etcd::{self, EtcdError, TxnOutcome};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/etcd")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

fn status_of(name: &str) -> u16 {
    let statuses = json(&fixture("statuses.json"));
    u16::try_from(statuses[name].as_u64().expect("a recorded status")).expect("a status")
}

#[test]
fn requests_are_the_ones_etcd_answered() {
    let key = b"/envoy-webhooks/test/hook-a";
    assert_eq!(
        json(&etcd::txn_put_if_revision(
            key,
            5,
            br#"{"status":"FAILING"}"#
        )),
        json(&fixture("txn-request-cas.json"))
    );
    assert_eq!(
        json(&etcd::txn_put_if_revision(
            b"/envoy-webhooks/test/hook-c",
            0,
            br#"{"status":"ENABLED"}"#
        )),
        json(&fixture("txn-request-create.json"))
    );
    assert_eq!(
        json(&etcd::range_prefix_request(b"/envoy-webhooks/test/")),
        json(&fixture("range-request-prefix.json"))
    );
    assert_eq!(
        json(&etcd::authenticate_request("root", "rootpw")),
        json(&fixture("authenticate-request.json"))
    );
}

#[test]
fn recorded_reads_and_writes_decode() {
    for name in [
        "range-prefix",
        "range-prefix-empty",
        "range-prefix-after-txn",
        "range-key",
        "range-missing",
        "range-empty-value",
    ] {
        assert_eq!(status_of(name), 200);
        let parsed = etcd::parse_range(&fixture(&format!("{name}.json")));
        assert!(parsed.is_ok(), "{name}: {parsed:?}");
    }
    let (_, kvs) = etcd::parse_range(&fixture("range-prefix.json")).expect("a range");
    assert!(kvs.iter().all(|kv| kv.mod_revision > 0));
    let (_, missing) = etcd::parse_range(&fixture("range-missing.json")).expect("a range");
    assert!(missing.is_empty());
    let (_, empty) = etcd::parse_range(&fixture("range-empty-value.json")).expect("a range");
    assert_eq!(empty.first().map(|kv| kv.value.len()), Some(0));

    for name in ["txn-applied", "txn-create-applied"] {
        let outcome = etcd::parse_txn(&fixture(&format!("{name}.json")));
        assert!(
            matches!(outcome, Ok(TxnOutcome::Applied { revision }) if revision > 0),
            "{name}: {outcome:?}"
        );
    }
    match etcd::parse_txn(&fixture("txn-conflict-stale.json")) {
        Ok(TxnOutcome::Conflict { current: Some(kv) }) => {
            assert_eq!(kv.mod_revision, 7);
            assert_eq!(kv.value, br#"{"status":"FAILING"}"#);
        }
        other => panic!("a conflict with the current record, got {other:?}"),
    }
    assert!(matches!(
        etcd::parse_txn(&fixture("txn-create-conflict.json")),
        Ok(TxnOutcome::Conflict { current: Some(_) })
    ));
    assert_eq!(
        etcd::parse_txn(&fixture("txn-conflict-missing.json")).ok(),
        Some(TxnOutcome::Conflict { current: None })
    );
    let token = etcd::parse_authenticate(&fixture("authenticate.json")).expect("a token");
    assert!(!token.is_empty());
}

#[test]
fn recorded_errors_say_whether_to_authenticate_again() {
    for name in ["error-expired-token", "error-invalid-token"] {
        let error = etcd::parse_error(status_of(name), &fixture(&format!("{name}.json")));
        assert!(
            matches!(error, EtcdError::AuthExpired { status: 401, .. }),
            "{name}: {error:?}"
        );
    }
    for (name, file) in [
        ("error-no-token", "error-no-token.json"),
        (
            "authenticate-wrong-password",
            "authenticate-wrong-password.json",
        ),
        (
            "authenticate-unknown-user",
            "authenticate-unknown-user.json",
        ),
        ("error-permission-denied", "error-permission-denied.json"),
        ("error-leader-failure", "error-leader-failure.json"),
        ("error-not-json-request", "error-not-json-request.json"),
        ("error-not-found", "error-not-found.txt"),
    ] {
        let status = status_of(name);
        let error = etcd::parse_error(status, &fixture(file));
        assert!(
            matches!(&error, EtcdError::Refused { status: s, message } if *s == status && !message.is_empty()),
            "{name}: {error:?}"
        );
    }
    let no_token = etcd::parse_error(400, &fixture("error-no-token.json")).to_string();
    assert!(no_token.contains("user name is empty"), "{no_token}");
}

#[test]
fn adoption_reads_owners_and_records_at_one_revision_and_takes_only_from_a_gone_owner() {
    let prefix = "/envoy-webhooks/test/";
    let owners = format!("{prefix}owners/");
    let handoff = format!("{prefix}handoff/");
    // Recorded with envoy-a-1 live (its liveness key under a lease), a record
    // of it and one of envoy-b-1, which has no liveness key.
    assert_eq!(status_of("txn-read-keys"), 200);
    let ranges = etcd::parse_txn_ranges(&fixture("txn-read-keys.json"), 2).expect("two ranges");
    let keys: Vec<Vec<String>> = ranges
        .iter()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect()
        })
        .collect();
    assert_eq!(
        keys,
        [
            vec![format!("{owners}envoy-a-1")],
            vec![
                format!("{handoff}envoy-a-1/hook-a/00000000000000aa/1"),
                format!("{handoff}envoy-b-1/hook-a/00000000000000aa/7"),
            ],
        ]
    );
    assert!(
        etcd::parse_txn_ranges(&fixture("txn-read-keys.json"), 3).is_err(),
        "a range missing from the answer is an error, not an empty range"
    );

    // A round reads the journal a page a time (here a page of one key).
    assert_eq!(
        json(&etcd::txn_read_keys_page(
            owners.as_bytes(),
            handoff.as_bytes(),
            b"",
            1
        )),
        json(&fixture("txn-request-read-keys-page.json"))
    );
    assert_eq!(status_of("txn-read-keys-page"), 200);
    let page = etcd::parse_txn_ranges(&fixture("txn-read-keys-page.json"), 2).expect("a page");
    assert_eq!(page[0].len(), 1, "every owner");
    assert_eq!(
        page[1].iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        [format!("{handoff}envoy-a-1/hook-a/00000000000000aa/1").into_bytes()],
        "one journal key of two"
    );

    // The takes read the records' values first (one transaction).
    let live = format!("{handoff}envoy-a-1/hook-a/00000000000000aa/1");
    let gone = format!("{handoff}envoy-b-1/hook-a/00000000000000aa/7");
    assert_eq!(
        json(&etcd::txn_read_values(&[live.as_bytes(), gone.as_bytes()])),
        json(&fixture("txn-request-read-values.json"))
    );
    assert_eq!(status_of("txn-read-values"), 200);
    let values = etcd::parse_txn_ranges(&fixture("txn-read-values.json"), 2).expect("two ranges");
    assert_eq!(values[1][0].value, br#"{"x":2}"#);
    assert_eq!(values[1][0].mod_revision, 4);

    // The taker's receipts, under its member entry's lease (as recorded).
    let receipt = |n: u32, value: &[u8]| etcd::Receipt {
        key: format!("{prefix}receipts/envoy-c-1/{n}").into_bytes(),
        value: value.to_vec(),
        lease: 2_716_130_517_108_785_419,
    };
    assert_eq!(
        json(&etcd::txn_take_if_revision(
            live.as_bytes(),
            3,
            format!("{owners}envoy-a-1").as_bytes(),
            &receipt(1, br#"{"x":1}"#),
        )),
        json(&fixture("txn-request-take-live-owner.json"))
    );
    assert_eq!(
        etcd::parse_take(&fixture("txn-take-live-owner.json")).ok(),
        Some(etcd::Taken::NotTaken),
        "the owner's liveness key exists: nothing taken, and no receipt"
    );
    assert_eq!(
        json(&etcd::txn_take_if_revision(
            gone.as_bytes(),
            4,
            format!("{owners}envoy-b-1").as_bytes(),
            &receipt(2, br#"{"x":2}"#),
        )),
        json(&fixture("txn-request-take-gone-owner.json"))
    );
    let Ok(etcd::Taken::Now(taken)) = etcd::parse_take(&fixture("txn-take-gone-owner.json")) else {
        panic!("taken now");
    };
    assert_eq!(taken.key, gone.as_bytes());
    assert_eq!(taken.value, br#"{"x":2}"#);
    // The same take sent again (its answer was lost): its compare fails, and
    // it reads its receipt: the record is this taker's.
    assert_eq!(status_of("txn-take-again"), 200);
    let Ok(etcd::Taken::Earlier(again)) = etcd::parse_take(&fixture("txn-take-again.json")) else {
        panic!("taken earlier");
    };
    assert_eq!(
        again.key,
        format!("{prefix}receipts/envoy-c-1/2").as_bytes()
    );
    assert_eq!(again.value, br#"{"x":2}"#);
}

#[test]
fn a_removal_applies_only_while_no_member_entry_was_written_since_the_read() {
    let prefix = "/envoy-webhooks/test/";
    let members = format!("{prefix}members/");
    // Recorded: a status record (rev 2), envoy-a-1's entry naming another
    // webhook (rev 3), a journaled delivery of envoy-b-1 (rev 4); the entries
    // read at revision 4.
    assert_eq!(status_of("range-members"), 200);
    let (revision, entries) = etcd::parse_range(&fixture("range-members.json")).expect("a range");
    assert_eq!(revision, 4);
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].value,
        br#"{"webhooks":["hook-b/00000000000000bb"]}"#
    );

    let record = format!("{prefix}webhooks/hook-a/00000000000000aa");
    let request = |revision| {
        json(&etcd::txn_remove_if_unchanged(
            record.as_bytes(),
            2,
            None,
            members.as_bytes(),
            revision,
            None,
        ))
    };
    assert_eq!(request(4), json(&fixture("txn-request-remove-record.json")));
    // envoy-c-1 wrote its entry (rev 5) before the removal arrived: refused.
    assert_eq!(
        etcd::parse_take(&fixture("txn-remove-member-written.json")).ok(),
        Some(etcd::Taken::NotTaken),
        "a member entry written since the read: nothing removed"
    );
    // Every entry gone, read again at revision 8: an empty range compares as
    // a missing key (mod_revision 0), so the removal applies.
    assert_eq!(
        request(8),
        json(&fixture("txn-request-remove-record-no-members.json"))
    );
    let Ok(etcd::Taken::Now(removed)) =
        etcd::parse_take(&fixture("txn-remove-record-no-members.json"))
    else {
        panic!("removed");
    };
    assert_eq!(removed.key, record.as_bytes());

    // A journaled delivery's removal leaves a receipt, as a take does.
    let orphan = format!("{prefix}handoff/envoy-b-1/hook-a/00000000000000aa/7");
    let receipt = etcd::Receipt {
        key: format!("{prefix}receipts/envoy-a-1/1").into_bytes(),
        value: br#"{"x":2}"#.to_vec(),
        lease: 4_218_080_992_837_013_771,
    };
    assert_eq!(
        json(&etcd::txn_remove_if_unchanged(
            orphan.as_bytes(),
            4,
            Some(format!("{prefix}owners/envoy-b-1").as_bytes()),
            members.as_bytes(),
            6,
            Some(&receipt),
        )),
        json(&fixture("txn-request-remove-orphan.json"))
    );
    let Ok(etcd::Taken::Now(taken)) = etcd::parse_take(&fixture("txn-remove-orphan.json")) else {
        panic!("removed");
    };
    assert_eq!(taken.key, orphan.as_bytes());
    assert_eq!(taken.value, br#"{"x":2}"#);
    assert_eq!(status_of("txn-remove-orphan-again"), 200);
    let Ok(etcd::Taken::Earlier(again)) =
        etcd::parse_take(&fixture("txn-remove-orphan-again.json"))
    else {
        panic!("removed earlier");
    };
    assert_eq!(again.value, br#"{"x":2}"#);
}
