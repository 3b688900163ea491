//! etcd, in memory, as far as the filter uses it: the JSON gateway's range
//! and txn requests (compare on mod_revision, `count_only`, `limit`,
//! `min_mod_revision`), leases and authentication, with switches for the
//! faults the tests need.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use envoy_webhooks::status::Status;
use envoy_webhooks::testing::cluster::EtcdAnswer;
use envoy_webhooks::testing::health::WebhookHealth;
use serde_json::{json, Value};

/// key → (value, mod_revision)
pub(crate) type Store = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

/// etcd, as far as the filter uses it.
#[derive(Default)]
pub(crate) struct FakeEtcd {
    pub(crate) revision: i64,
    pub(crate) kv: Store,
    /// Every value put, in order: (key, value).
    pub(crate) puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Answer nothing (all members down).
    pub(crate) down: bool,
    /// Answer this instead (status, body).
    pub(crate) garbage: Option<(u16, Vec<u8>)>,
    pub(crate) requests: usize,
    /// With auth on: the valid token.
    pub(crate) token: Option<String>,
    /// Lease id → the keys attached to it.
    pub(crate) leases: BTreeMap<i64, Vec<Vec<u8>>>,
    pub(crate) next_lease: i64,
    /// Apply the next writes, then answer nothing (their answers are lost).
    pub(crate) lose_write_answers: usize,
    /// Refuse every transaction that puts a key, as etcd does once its
    /// space quota is exceeded (the NOSPACE alarm); deletes still apply.
    pub(crate) refuse_puts: bool,
    /// The next lease granted lapses at once (before the filter can use it).
    pub(crate) lapse_next_grant: bool,
    /// Apply the next write, then answer nothing, to it or anything else,
    /// until `down` is cleared.
    pub(crate) down_after_next_write: bool,
    /// Every request's path, in order.
    pub(crate) paths: Vec<String>,
    /// The largest request body received.
    pub(crate) largest_request: usize,
    /// The most keys a range of a transaction's answer held.
    pub(crate) largest_range: usize,
    /// A member that is behind: what it holds (key → (value, mod_revision)).
    /// Reads that may be served by any member (serializable ones) go to it
    /// and to an up-to-date member in turn, as a round-robin cluster does.
    pub(crate) lagging: Option<Store>,
    pub(crate) serializable_reads: usize,
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub(crate) fn unb64(value: &Value) -> Vec<u8> {
    value
        .as_str()
        .map(|s| B64.decode(s).expect("base64 from the filter"))
        .unwrap_or_default()
}

pub(crate) fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().expect("an int64 as a string"),
        Value::Number(n) => n.as_i64().expect("an int64"),
        _ => 0,
    }
}

impl FakeEtcd {
    pub(crate) fn header(&self) -> Value {
        json!({"cluster_id": "1", "member_id": "2", "revision": self.revision.to_string(), "raft_term": "3"})
    }

    pub(crate) fn kvs_of(&self, key: &[u8], range_end: &[u8], keys_only: bool) -> Vec<Value> {
        self.kv
            .iter()
            .filter(|(k, _)| {
                if range_end.is_empty() {
                    k.as_slice() == key
                } else {
                    k.as_slice() >= key && k.as_slice() < range_end
                }
            })
            .map(|(k, (v, rev))| {
                let mut kv = json!({"key": b64(k), "mod_revision": rev.to_string(),
                                    "create_revision": rev.to_string(), "version": "1"});
                if !keys_only {
                    kv["value"] = json!(b64(v));
                }
                kv
            })
            .collect()
    }

    pub(crate) fn range_answer(&self, request: &Value) -> Value {
        let keys_only = request["keys_only"] == json!(true);
        let min_mod_revision = match &request["min_mod_revision"] {
            Value::Null => 0,
            revision => int(revision),
        };
        let mut kvs = self.kvs_of(
            &unb64(&request["key"]),
            &unb64(&request["range_end"]),
            keys_only,
        );
        kvs.retain(|kv| int(&kv["mod_revision"]) >= min_mod_revision);
        let count = kvs.len();
        let limit = match &request["limit"] {
            Value::Null => 0,
            limit => usize::try_from(int(limit)).expect("a limit"),
        };
        let more = limit > 0 && count > limit;
        if more {
            kvs.truncate(limit);
        }
        if request["count_only"] == json!(true) {
            kvs.clear();
        }
        let mut answer = json!({"header": self.header(), "count": count.to_string()});
        if more {
            answer["more"] = json!(true);
        }
        if !kvs.is_empty() {
            answer["kvs"] = Value::Array(kvs);
        }
        answer
    }

    /// The answer to one call the filter made.
    pub(crate) fn answer_call(&mut self, call: &envoy_webhooks::testing::MadeCall) -> EtcdAnswer {
        let path = call
            .headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.answer(&path, &call.headers, &call.body)
    }

    /// A member falls behind from here: it keeps what it holds now.
    pub(crate) fn lag(&mut self) {
        self.lagging = Some(self.kv.clone());
    }

    /// Whether a member that is behind may answer `request` (etcd serves a
    /// range, or a transaction that only reads, from the member it reaches
    /// when every read in it is serializable).
    pub(crate) fn served_by_any_member(path: &str, request: &Value) -> bool {
        let serializable = |range: &Value| range["serializable"] == json!(true);
        match path {
            "/v3/kv/range" => serializable(request),
            "/v3/kv/txn" => {
                let ops: Vec<&Value> = ["success", "failure"]
                    .iter()
                    .filter_map(|branch| request[*branch].as_array())
                    .flatten()
                    .collect();
                request["compare"].as_array().is_none_or(Vec::is_empty)
                    && ops
                        .iter()
                        .all(|op| op.get("request_range").is_some_and(&serializable))
            }
            _ => false,
        }
    }

    pub(crate) fn answer(
        &mut self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> EtcdAnswer {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        if self.lagging.is_some() && Self::served_by_any_member(path, &request) {
            self.serializable_reads += 1;
            if self.serializable_reads % 2 == 1 {
                let lagging = self.lagging.clone().unwrap_or_default();
                let current = std::mem::replace(&mut self.kv, lagging);
                let answer = self.answer_current(path, headers, body);
                self.kv = current;
                return answer;
            }
        }
        self.answer_current(path, headers, body)
    }

    pub(crate) fn answer_current(
        &mut self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> EtcdAnswer {
        self.requests += 1;
        if self.down {
            return EtcdAnswer::default();
        }
        if let Some((status, body)) = &self.garbage {
            return EtcdAnswer {
                status: Some(*status),
                body: body.clone(),
            };
        }
        let request: Value = serde_json::from_slice(body).expect("JSON from the filter");
        self.paths.push(path.to_string());
        self.largest_request = self.largest_request.max(body.len());
        if path == "/v3/auth/authenticate" {
            let token = format!("token-{}", self.requests);
            self.token = Some(token.clone());
            return ok(json!({"header": self.header(), "token": token}));
        }
        if let Some(token) = &self.token {
            let sent = headers
                .iter()
                .find(|(n, _)| n == "authorization")
                .map(|(_, v)| v.as_str());
            if sent != Some(token.as_str()) {
                return EtcdAnswer {
                    status: Some(401),
                    body: br#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#.to_vec(),
                };
            }
        }
        match path {
            "/v3/kv/range" => ok(self.range_answer(&request)),
            "/v3/kv/txn" => {
                let ops_of = |branch: &str| request[branch].as_array().cloned().unwrap_or_default();
                let all_ops: Vec<Value> = [ops_of("success"), ops_of("failure")].concat();
                if self.refuse_puts && all_ops.iter().any(|op| op.get("request_put").is_some()) {
                    return EtcdAnswer {
                        status: Some(429),
                        body: br#"{"error":"etcdserver: mvcc: database space exceeded","message":"etcdserver: mvcc: database space exceeded","code":8}"#.to_vec(),
                    };
                }
                let unknown_lease = all_ops.iter().any(|op| {
                    op["request_put"]
                        .get("lease")
                        .is_some_and(|lease| !self.leases.contains_key(&int(lease)))
                });
                if unknown_lease {
                    return EtcdAnswer {
                        status: Some(404),
                        body: br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#.to_vec(),
                    };
                }
                let holds = request["compare"].as_array().is_none_or(|compares| {
                    compares.iter().all(|compare| {
                        assert_eq!(compare["target"], "MOD", "the filter compares mod_revision");
                        let key = unb64(&compare["key"]);
                        let range_end = unb64(&compare["range_end"]);
                        // Every key of a range; an empty range as a missing key.
                        let mut revisions: Vec<i64> = if range_end.is_empty() {
                            vec![self.kv.get(&key).map_or(0, |(_, rev)| *rev)]
                        } else {
                            self.kv
                                .range(key.clone()..range_end)
                                .map(|(_, (_, rev))| *rev)
                                .collect()
                        };
                        if revisions.is_empty() {
                            revisions.push(0);
                        }
                        let expected = int(&compare["mod_revision"]);
                        revisions
                            .iter()
                            .all(|rev| match compare["result"].as_str() {
                                None | Some("EQUAL") => *rev == expected,
                                Some("LESS") => *rev < expected,
                                other => panic!("unexpected compare result {other:?}"),
                            })
                    })
                });
                let branch = if holds { "success" } else { "failure" };
                let ops = request[branch].as_array().cloned().unwrap_or_default();
                let mut responses = Vec::new();
                let mut wrote = false;
                for op in &ops {
                    if let Some(range) = op.get("request_range") {
                        let answer = self.range_answer(range);
                        let keys = answer["kvs"].as_array().map_or(0, Vec::len);
                        self.largest_range = self.largest_range.max(keys);
                        responses.push(json!({"response_range": answer}));
                    } else if let Some(put) = op.get("request_put") {
                        if !wrote {
                            self.revision += 1;
                            wrote = true;
                        }
                        let key = unb64(&put["key"]);
                        let value = unb64(&put["value"]);
                        if put.get("lease").is_some() {
                            let lease = int(&put["lease"]);
                            self.leases
                                .get_mut(&lease)
                                .expect("a granted lease")
                                .push(key.clone());
                        }
                        self.kv.insert(key.clone(), (value.clone(), self.revision));
                        self.puts.push((key, value));
                        responses.push(json!({"response_put": {"header": self.header()}}));
                    } else if let Some(delete) = op.get("request_delete_range") {
                        if !wrote {
                            self.revision += 1;
                            wrote = true;
                        }
                        self.kv.remove(&unb64(&delete["key"]));
                        responses.push(json!({"response_delete_range": {"header": self.header()}}));
                    }
                }
                let mut answer = json!({"header": self.header(), "responses": responses});
                if holds {
                    answer["succeeded"] = json!(true);
                }
                if wrote && self.lose_write_answers > 0 {
                    self.lose_write_answers -= 1;
                    return EtcdAnswer::default();
                }
                if wrote && std::mem::take(&mut self.down_after_next_write) {
                    self.down = true;
                    return EtcdAnswer::default();
                }
                ok(answer)
            }
            "/v3/lease/grant" if self.refuse_puts => EtcdAnswer {
                // etcd 3.4 under NOSPACE refuses grants too.
                status: Some(429),
                body: br#"{"error":"etcdserver: mvcc: database space exceeded","message":"etcdserver: mvcc: database space exceeded","code":8}"#.to_vec(),
            },
            "/v3/lease/grant" => {
                self.next_lease += 1;
                if !std::mem::take(&mut self.lapse_next_grant) {
                    self.leases.insert(self.next_lease, Vec::new());
                }
                ok(json!({"header": self.header(), "ID": self.next_lease.to_string(), "TTL": "5"}))
            }
            "/v3/lease/keepalive" => {
                let id = int(&request["ID"]);
                let mut result = json!({"header": self.header(), "ID": id.to_string()});
                if self.leases.contains_key(&id) {
                    result["TTL"] = json!("5");
                }
                ok(json!({"result": result}))
            }
            "/v3/lease/revoke" => {
                self.expire(int(&request["ID"]));
                ok(json!({"header": self.header()}))
            }
            other => panic!("unexpected etcd path {other}"),
        }
    }

    /// The lease lapses: its keys go.
    pub(crate) fn expire(&mut self, lease: i64) {
        for key in self.leases.remove(&lease).unwrap_or_default() {
            self.kv.remove(&key);
        }
    }

    pub(crate) fn keys_under(&self, prefix: &str) -> Vec<String> {
        self.kv
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .filter(|k| k.starts_with(prefix))
            .collect()
    }

    /// The statuses etcd went through for one webhook, in order.
    pub(crate) fn statuses(&self) -> Vec<Status> {
        self.puts
            .iter()
            .filter_map(|(_, v)| WebhookHealth::decode(v))
            .map(|h| h.status)
            .collect()
    }

    pub(crate) fn record(&self) -> Option<WebhookHealth> {
        let key = self.keys_under("/test/webhooks/").into_iter().next()?;
        let (value, _) = self.kv.get(key.as_bytes())?;
        WebhookHealth::decode(value)
    }
}

pub(crate) fn ok(body: Value) -> EtcdAnswer {
    EtcdAnswer {
        status: Some(200),
        body: body.to_string().into_bytes(),
    }
}
