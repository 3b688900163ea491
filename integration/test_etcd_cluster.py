"""The etcd cluster fixture works, and the etcd 3.4 behaviour the cluster-state mode relies on
holds on a real three-member cluster: compare-and-set on mod_revision, a member down, all
members down and back, authentication. No Envoy here.

The request bodies are the ones src/cluster/etcd.rs makes (the first test checks that the
Python builders here give the same bytes as the codec's recorded fixtures), and the answers
are compared with the ones recorded in tests/fixtures/etcd/ that the codec's tests parse.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from etcd_cluster import (
    EtcdCluster,
    EtcdUnreachable,
    authenticate_request,
    b64,
    compact,
    range_prefix_request,
    txn_put_if_revision,
    unb64,
)
from harness import FIXTURES, wait_until

RECORDED = FIXTURES / "etcd"
STATUSES = json.loads((RECORDED / "statuses.json").read_text())


def recorded(name: str) -> bytes:
    return (RECORDED / name).read_bytes()


def shape(node: Any) -> Any:
    """The structure of a JSON answer with its leaves replaced by their types: what the codec
    reads, whatever the revisions and ids."""
    if isinstance(node, dict):
        return {k: shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [shape(v) for v in node]
    return type(node).__name__


def with_lease(fixture: str, lease: str) -> bytes:
    """A recorded request whose puts go under ``lease``: the recorded one was granted by the
    etcd the fixtures were recorded from (a take's receipt goes under the taker's lease)."""
    request = json.loads(recorded(fixture))
    for branch in ("success", "failure"):
        for op in request.get(branch, []):
            if "lease" in op.get("request_put", {}):
                op["request_put"]["lease"] = lease
    return compact(request)


def same_shape(live: bytes, fixture: str) -> None:
    assert shape(json.loads(live)) == shape(json.loads(recorded(fixture))), (live, fixture)


def txn(cluster: EtcdCluster, key: str, expected: int, value: str, member: int | None = None) -> dict:
    return cluster.txn(txn_put_if_revision(key, expected, value), member)


def current_of(answer: dict) -> tuple[str, int] | None:
    """The record in a failed txn's failure branch (the codec's TxnOutcome::Conflict)."""
    kvs = answer["responses"][0]["response_range"].get("kvs", [])
    if not kvs:
        return None
    return unb64(kvs[0].get("value", "")).decode(), int(kvs[0]["mod_revision"])


# --------------------------------------------------------------------------- the codec's bodies


def test_python_request_builders_match_the_codec() -> None:
    assert txn_put_if_revision("/envoy-webhooks/test/hook-a", 5, '{"status":"FAILING"}') \
        == recorded("txn-request-cas.json")
    assert txn_put_if_revision("/envoy-webhooks/test/hook-c", 0, '{"status":"ENABLED"}') \
        == recorded("txn-request-create.json")
    assert txn_put_if_revision("/envoy-webhooks/test/gone", 3, '{"status":"ENABLED"}') \
        == recorded("txn-request-missing.json")
    assert range_prefix_request("/envoy-webhooks/test/") == recorded("range-request-prefix.json")
    assert authenticate_request("root", "rootpw") == recorded("authenticate-request.json")


# --------------------------------------------------------------------------- the fixture


def test_three_members_replicate(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.endpoints) == 3
    assert len({etcd_cluster.client_port(i) for i in range(3)}) == 3
    members = json.loads(etcd_cluster.request("/v3/cluster/member/list", b"{}")[1])["members"]
    assert sorted(m["name"] for m in members) == ["m0", "m1", "m2"]
    revision = etcd_cluster.put("/t/a", "one", member=0)
    for i in range(3):
        assert etcd_cluster.get("/t/a", member=i) == ("one", revision)
    etcd_cluster.put("/t/b", "two", member=2)
    etcd_cluster.put("/u/c", "other prefix")
    assert set(etcd_cluster.get_prefix("/t/", member=1)) == {"/t/a", "/t/b"}
    assert etcd_cluster.get("/t/none") is None


def test_answers_have_the_recorded_shapes(etcd_cluster: EtcdCluster) -> None:
    """The single-member recordings hold for a three-member cluster (fields left out when
    zero or empty included)."""
    etcd_cluster.put("/envoy-webhooks/test/hook-a", '{"status":"ENABLED"}')
    etcd_cluster.put("/envoy-webhooks/test/hook-b", '{"status":"FAILED"}')
    status, body = etcd_cluster.request("/v3/kv/range", range_prefix_request("/envoy-webhooks/test/"))
    assert status == 200
    same_shape(body, "range-prefix.json")
    status, body = etcd_cluster.request("/v3/kv/range", range_prefix_request("/nothing/"))
    same_shape(body, "range-prefix-empty.json")
    status, body = etcd_cluster.request("/v3/kv/range", b'{"key":"L25vbmU="}')
    same_shape(body, "range-missing.json")


def test_adoption_reads_one_view_and_takes_only_while_the_owner_is_gone(etcd_cluster: EtcdCluster) -> None:
    """The codec's adoption requests, as recorded (tests/fixtures/etcd/README.md), on three
    members: the read of owners and records through any member sees the owner's liveness key
    with its record; the take is refused through every member while that key exists, and
    applies once the lease is revoked."""
    prefix = "/envoy-webhooks/test/"
    lease = etcd_cluster._call("/v3/lease/grant", {"TTL": "30"})["ID"]
    etcd_cluster._call("/v3/kv/put", {"key": b64(prefix + "owners/envoy-a-1"), "lease": lease})
    assert etcd_cluster.put(prefix + "handoff/envoy-a-1/hook-a/00000000000000aa/1", '{"x":1}') == 3
    assert etcd_cluster.put(prefix + "handoff/envoy-b-1/hook-a/00000000000000aa/7", '{"x":2}') == 4
    taker = etcd_cluster._call("/v3/lease/grant", {"TTL": "30"})["ID"]
    for member in range(3):
        answer = etcd_cluster.txn(recorded("txn-request-read-keys.json"), member)
        assert [[unb64(kv["key"]).decode() for kv in r["response_range"].get("kvs", [])]
                for r in answer["responses"]] == [
            [prefix + "owners/envoy-a-1"],
            [prefix + "handoff/envoy-a-1/hook-a/00000000000000aa/1",
             prefix + "handoff/envoy-b-1/hook-a/00000000000000aa/7"]]
        same_shape(json.dumps(answer).encode(), "txn-read-keys.json")
        page = etcd_cluster.txn(recorded("txn-request-read-keys-page.json"), member)
        same_shape(json.dumps(page).encode(), "txn-read-keys-page.json")
        assert page["responses"][1]["response_range"].get("more") is True, page
        refused = etcd_cluster.txn(with_lease("txn-request-take-live-owner.json", taker), member)
        assert not refused.get("succeeded"), refused
        same_shape(json.dumps(refused).encode(), "txn-take-live-owner.json")
    assert etcd_cluster.get(prefix + "handoff/envoy-a-1/hook-a/00000000000000aa/1") == ('{"x":1}', 3)
    etcd_cluster._call("/v3/lease/revoke", {"ID": lease})
    # The live owner's take, with the revision it had: applies now that the owner is gone.
    taken = etcd_cluster.txn(with_lease("txn-request-take-live-owner.json", taker), member=2)
    assert taken.get("succeeded") is True, taken
    assert etcd_cluster.get(prefix + "handoff/envoy-a-1/hook-a/00000000000000aa/1") is None
    gone = etcd_cluster.txn(with_lease("txn-request-take-gone-owner.json", taker), member=1)
    assert gone.get("succeeded") is True, gone
    same_shape(json.dumps(gone).encode(), "txn-take-gone-owner.json")
    # Sent again (its answer was lost): taken once only, and the receipt says by whom.
    again = etcd_cluster.txn(with_lease("txn-request-take-gone-owner.json", taker), member=0)
    assert not again.get("succeeded"), "taken once only"
    same_shape(json.dumps(again).encode(), "txn-take-again.json")
    receipt = again["responses"][0]["response_range"]["kvs"][0]
    assert unb64(receipt["value"]) == b'{"x":2}'
    # The receipts go with the taker's lease.
    etcd_cluster._call("/v3/lease/revoke", {"ID": taker})
    assert etcd_cluster.get(prefix + "receipts/envoy-c-1/2") is None


# --------------------------------------------------------------------------- compare-and-set


def test_txn_with_a_stale_mod_revision_does_not_apply_and_returns_the_current_record(
        etcd_cluster: EtcdCluster) -> None:
    key = "/envoy-webhooks/test/hook-a"
    created = txn(etcd_cluster, key, 0, "v1", member=0)
    assert created["succeeded"] is True
    same_shape(compact_answer(created), "txn-create-applied.json")
    rev1 = int(created["header"]["revision"])
    assert etcd_cluster.get(key) == ("v1", rev1)

    # Creating again (expected 0) fails: the key exists, and the answer carries it.
    again = txn(etcd_cluster, key, 0, "v1-again", member=1)
    assert "succeeded" not in again  # false is left out
    assert current_of(again) == ("v1", rev1)
    same_shape(compact_answer(again), "txn-create-conflict.json")

    # Replica 1 moves it on; replica 2, still holding rev1, loses and learns the new record.
    moved = txn(etcd_cluster, key, rev1, "v2", member=1)
    assert moved["succeeded"] is True
    rev2 = int(moved["header"]["revision"])
    assert rev2 > rev1
    assert int(moved["responses"][0]["response_put"]["header"]["revision"]) == rev2
    stale = txn(etcd_cluster, key, rev1, "v3", member=2)
    assert "succeeded" not in stale
    assert current_of(stale) == ("v2", rev2)
    same_shape(compact_answer(stale), "txn-conflict-stale.json")
    assert etcd_cluster.get(key) == ("v2", rev2)

    # A key that does not exist, expected at some revision: a conflict with no record.
    gone = txn(etcd_cluster, "/envoy-webhooks/test/gone", 3, "x")
    assert "succeeded" not in gone
    assert current_of(gone) is None
    same_shape(compact_answer(gone), "txn-conflict-missing.json")
    assert etcd_cluster.get("/envoy-webhooks/test/gone") is None


def compact_answer(answer: dict) -> bytes:
    return json.dumps(answer).encode()


def test_concurrent_compare_and_set_applies_exactly_once(etcd_cluster: EtcdCluster) -> None:
    """Three replicas racing from one revision, each through its own member: one wins."""
    key = "/envoy-webhooks/test/race"
    rev = int(txn(etcd_cluster, key, 0, "0")["header"]["revision"])
    answers = [txn(etcd_cluster, key, rev, f"from-{i}", member=i) for i in range(3)]
    winners = [i for i, a in enumerate(answers) if a.get("succeeded")]
    assert winners == [0]
    assert etcd_cluster.get(key)[0] == "from-0"


# --------------------------------------------------------------------------- members down


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_one_member_killed_writes_still_succeed(etcd_cluster: EtcdCluster) -> None:
    key = "/envoy-webhooks/test/hook-a"
    rev = etcd_cluster.put(key, "before")
    follower = (etcd_cluster.leader() + 1) % 3
    etcd_cluster.kill(follower)
    assert refused(etcd_cluster.client_port(follower))
    with pytest.raises(EtcdUnreachable):
        etcd_cluster.request("/v3/kv/range", range_prefix_request("/"), member=follower, timeout=2)
    # The two others are a quorum: writes through either go on at once.
    others = [i for i in range(3) if i != follower]
    answer = txn(etcd_cluster, key, rev, "while-down", member=others[0])
    assert answer.get("succeeded") is True
    rev2 = int(answer["header"]["revision"])
    assert etcd_cluster.get(key, member=others[1]) == ("while-down", rev2)
    # Back with its data dir: it catches up.
    etcd_cluster.start(follower)
    assert etcd_cluster.get(key, member=follower) == ("while-down", rev2)


def test_the_leader_killed_a_write_in_flight_hangs_then_a_retry_succeeds(
        etcd_cluster: EtcdCluster) -> None:
    """A write sent through a follower just after the leader dies is proposed to the dead
    leader and lost: the gateway holds the request ~7 s (etcd's request timeout) and answers
    503, gRPC code 14. A retry (new request, short timeout) succeeds once a new leader is
    elected (about 1 s). So the filter must time etcd calls out (timeout_ms) and retry."""
    key = "/envoy-webhooks/test/hook-a"
    rev = etcd_cluster.put(key, "before")
    leader = etcd_cluster.leader()
    follower = (leader + 1) % 3
    etcd_cluster.kill(leader)
    started = time.monotonic()
    status, answer = etcd_cluster.request("/v3/kv/txn", txn_put_if_revision(key, rev, "lost?"),
                                          member=follower, timeout=15)
    took = time.monotonic() - started
    if status == 200:  # the follower noticed the leader gone before it proposed: no hang
        assert json.loads(answer).get("succeeded") is True
        return
    assert status == STATUSES["error-leader-failure"] == 503, answer
    error = json.loads(answer)
    assert error["code"] == 14 and error["message"].startswith("etcdserver: request timed out"), error
    assert 5 < took < 10, took

    def retried() -> bool:
        status, answer = etcd_cluster.request("/v3/kv/txn", txn_put_if_revision(key, rev, "retried"),
                                              member=follower, timeout=1)
        return status == 200 and json.loads(answer).get("succeeded") is True

    wait_until(retried, timeout=10, interval=0.1, message="a retried write to apply")
    # The lost write was not applied: the retry's compare on the old revision held.
    assert etcd_cluster.get(key)[0] == "retried"


def test_two_members_down_no_quorum_then_back(etcd_cluster: EtcdCluster) -> None:
    rev = etcd_cluster.put("/k", "v")
    etcd_cluster.kill(0)
    etcd_cluster.kill(1)
    # The last member is up but has no quorum: a linearizable read or a write cannot
    # complete, and the gateway keeps the request open (the caller's timeout decides).
    with pytest.raises(EtcdUnreachable):
        etcd_cluster.request("/v3/kv/put", {"key": "L2s=", "value": "dzI="}, member=2, timeout=3)
    assert not etcd_cluster.healthy(2)
    etcd_cluster.start(0)
    etcd_cluster.start(1)
    etcd_cluster.wait_healthy()
    # The write that timed out may or may not have been applied once quorum returned.
    value, mod = etcd_cluster.get("/k")
    assert (value, mod) == ("v", rev) or value == "w2"


def test_all_killed_then_restarted_data_is_still_there(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.put("/envoy-webhooks/test/hook-a", '{"status":"FAILED"}')
    rev = int(txn(etcd_cluster, "/envoy-webhooks/test/hook-b", 0, "b")["header"]["revision"])
    before = etcd_cluster.get_prefix("/envoy-webhooks/test/")
    etcd_cluster.kill_all()
    for i in range(3):
        assert refused(etcd_cluster.client_port(i))
    with pytest.raises(EtcdUnreachable):
        etcd_cluster.request("/v3/kv/range", range_prefix_request("/"), timeout=2)
    etcd_cluster.start_all()
    assert etcd_cluster.get_prefix("/envoy-webhooks/test/") == before
    # Revisions survive too: a compare-and-set from before the outage still applies.
    assert txn(etcd_cluster, "/envoy-webhooks/test/hook-b", rev, "b2").get("succeeded") is True


# --------------------------------------------------------------------------- authentication


def test_auth_refuses_without_a_token_and_accepts_the_authenticated_one(
        etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.put("/envoy-webhooks/test/hook-a", "v")
    etcd_cluster.enable_auth("root", "rootpw")
    body = range_prefix_request("/envoy-webhooks/test/")

    status, answer = etcd_cluster.request("/v3/kv/range", body)
    assert (status, answer) == (STATUSES["error-no-token"], recorded("error-no-token.json"))

    status, answer = etcd_cluster.request("/v3/auth/authenticate", authenticate_request("root", "wrong"))
    assert (status, answer) == (STATUSES["authenticate-wrong-password"],
                                recorded("authenticate-wrong-password.json"))

    status, answer = etcd_cluster.request("/v3/auth/authenticate", authenticate_request("root", "rootpw"),
                                          member=0)
    assert status == 200
    same_shape(answer, "authenticate.json")
    token = json.loads(answer)["token"]
    # A simple token: "<16 random letters>.<raft index>". It goes through raft, so every
    # member knows it, not only the one that issued it.
    assert "." in token
    for i in range(3):
        status, answer = etcd_cluster.request("/v3/kv/range", body, member=i, token=token)
        assert status == 200, (i, answer)
        assert len(json.loads(answer)["kvs"]) == 1

    # "Bearer <token>" is not understood: the whole header value is the token.
    status, answer = etcd_cluster.request("/v3/kv/range", body, token=f"Bearer {token}")
    assert (status, answer) == (401, recorded("error-invalid-token.json"))

    status, answer = etcd_cluster.request("/v3/kv/range", body, token="garbage.1")
    assert (status, answer) == (STATUSES["error-invalid-token"], recorded("error-invalid-token.json"))

    # The helpers authenticate by themselves once auth is on.
    etcd_cluster.put("/envoy-webhooks/test/hook-b", "w")
    assert set(etcd_cluster.get_prefix("/envoy-webhooks/test/")) == {
        "/envoy-webhooks/test/hook-a", "/envoy-webhooks/test/hook-b"}


def test_a_token_whose_index_is_ahead_is_not_answered(etcd_cluster: EtcdCluster) -> None:
    """etcd waits until its applied index reaches a simple token's index before checking it:
    a made-up (or another cluster's) token with a high index is never answered. Only the
    caller's timeout ends the request: the filter must set one (``timeout_ms``)."""
    etcd_cluster.enable_auth()
    with pytest.raises(EtcdUnreachable, match="timed out"):
        etcd_cluster.request("/v3/kv/range", range_prefix_request("/"), member=0,
                             token="AAAAAAAAAAAAAAAA.999999", timeout=2)


def test_an_expired_token_answers_invalid_auth_token(make_etcd_cluster: Any) -> None:
    cluster = make_etcd_cluster(auth_token_ttl=1)
    cluster.enable_auth()
    token = cluster.authenticate("root", "rootpw")
    body = range_prefix_request("/")
    assert cluster.request("/v3/kv/range", body, token=token)[0] == 200

    # The TTL counts from the token's last use (each use renews it), so it cannot be
    # polled for: leave it unused for longer than the TTL.
    time.sleep(3)
    assert cluster.request("/v3/kv/range", body, token=token) == (
        STATUSES["error-expired-token"], recorded("error-expired-token.json"))
    # A new token works.
    assert cluster.request("/v3/kv/range", body, token=cluster.authenticate("root", "rootpw"))[0] == 200


def test_a_token_after_the_member_restarts(etcd_cluster: EtcdCluster) -> None:
    """Simple tokens live in each member's memory, but a restarted member rebuilds them by
    replaying its raft log: a token issued before the restart still works there (as long as
    the authenticate entry is after the member's last snapshot; past that it answers 401
    invalid auth token, and the filter re-authenticates)."""
    etcd_cluster.enable_auth()
    token = etcd_cluster.authenticate("root", "rootpw", member=0)
    body = range_prefix_request("/")
    assert etcd_cluster.request("/v3/kv/range", body, member=1, token=token)[0] == 200
    etcd_cluster.kill(1)
    etcd_cluster.start(1)
    for i in range(3):
        assert etcd_cluster.request("/v3/kv/range", body, member=i, token=token)[0] == 200


def test_a_removal_applies_only_while_no_member_entry_was_written_since_the_read(
    etcd_cluster: EtcdCluster,
) -> None:
    """The codec's removals of records no Envoy has, as recorded (tests/fixtures/etcd/README.md),
    on three members: refused through every member once a member entry was written after the
    read the removal was decided from; applied when none was, also with no entry at all."""
    prefix = "/envoy-webhooks/test/"
    record = prefix + "webhooks/hook-a/00000000000000aa"
    orphan = prefix + "handoff/envoy-b-1/hook-a/00000000000000aa/7"
    assert etcd_cluster.put(record, '{"status":"FAILING"}') == 2
    assert etcd_cluster.put(prefix + "members/envoy-a-1", '{"webhooks":["hook-b/00000000000000bb"]}') == 3
    assert etcd_cluster.put(orphan, '{"x":2}') == 4
    status, body = etcd_cluster.request("/v3/kv/range", range_prefix_request(prefix + "members/"))
    assert status == 200
    same_shape(body, "range-members.json")
    assert etcd_cluster.put(prefix + "members/envoy-c-1", '{"webhooks":["hook-a/00000000000000aa"]}') == 5
    for member in range(3):
        refused = etcd_cluster.txn(recorded("txn-request-remove-record.json"), member)
        assert not refused.get("succeeded"), refused
    assert etcd_cluster.get(record) == ('{"status":"FAILING"}', 2)
    etcd_cluster._call("/v3/kv/deleterange", {"key": b64(prefix + "members/envoy-c-1")})
    remover = etcd_cluster._call("/v3/lease/grant", {"TTL": "30"})["ID"]
    taken = etcd_cluster.txn(with_lease("txn-request-remove-orphan.json", remover), member=1)
    assert taken.get("succeeded") is True, taken
    same_shape(json.dumps(taken).encode(), "txn-remove-orphan.json")
    assert etcd_cluster.get(orphan) is None
    again = etcd_cluster.txn(with_lease("txn-request-remove-orphan.json", remover), member=0)
    same_shape(json.dumps(again).encode(), "txn-remove-orphan-again.json")
    etcd_cluster._call("/v3/kv/deleterange", {"key": b64(prefix + "members/envoy-a-1")})
    removed = etcd_cluster.txn(recorded("txn-request-remove-record-no-members.json"), member=2)
    assert removed.get("succeeded") is True, removed
    assert etcd_cluster.get(record) is None
