//! The benchmark workload shared by `benches/matching.rs` and
//! `tools/wasm-bench/guest` (which includes this file by path), so that the
//! criterion numbers and the wasm/native ratio measure the same thing.

use serde_json::{json, Value};

pub const SEED_QUERY: &str = r#"data.status="ACTIVE" AND data.is_online=true AND (data.components.metadata.format="AVC" OR data.components.metadata.format="MPEG-4")"#;

/// Queries in the style of the seed document.
pub const QUERIES: [&str; 8] = [
    SEED_QUERY,
    r#"(data.components.metadata.width>=1920 OR data.components.metadata.height>=1920) AND data.components.metadata.duration>60000"#,
    r#"data.deleted_by_user=null"#,
    r#"data.components.metadata.format=/MPEG-[2,4]/"#,
    r#"user_id="9b219676-7567-11e9-806b-62fe166f0ad7""#,
    r#"data.metadata_values.share.field_values.value="true""#,
    r#"data.archive_status!="ARCHIVED" AND data.storage_methods="GCS""#,
    "",
];

/// `count` definitions over a mix of types, realms and operations; about one
/// in ten can fire for the formats event.
pub fn definitions(count: usize) -> Vec<Value> {
    let types = ["assets", "collections", "users", "jobs", "storages"];
    let realms = [
        "entity", "metadata", "formats", "files", "contents", "segments", "shares", "acls",
    ];
    let operations = ["create", "delete", "update", "all", "restore"];
    (0..count)
        .map(|i| {
            // Every tenth definition listens to what the formats event is.
            let (event_type, realm, operation) = if i % 10 == 0 {
                ("assets", "formats", "update")
            } else {
                (
                    types[i % types.len()],
                    realms[(i / 3) % realms.len()],
                    operations[(i / 7) % operations.len()],
                )
            };
            json!({
                "id": format!("hook-{i}"),
                "event_type": event_type,
                "realm": realm,
                "operation": operation,
                "url": format!("http://receiver-{}/hooks/{i}", i % 5),
                "query": QUERIES[i % QUERIES.len()],
            })
        })
        .collect()
}
