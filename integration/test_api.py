"""iconik's webhook API, served by the filter, driven with iconik's own Python SDK
(nsa-pythonik) against two Envoys (two workers each) and a three-member etcd cluster.

A webhook created through one Envoy is delivered through the other; tenants see and reach
only their own webhooks and events; 401/403/404; bad input refused with every problem;
changes and deletes while deliveries wait for retries; FAILING shown and cleared through the
API; everything survives both Envoys restarting; two Envoys creating at once; etcd down."""

from __future__ import annotations

import json
import threading
import time

import pytest
from pythonik.friendly import Iconik
from pythonik.notifications.models.webhook_create_schema import WebhookCreateSchema
from pythonik.notifications.models.webhook_schema import WebhookSchema
from pythonik.notifications.models.webhooks_schema import WebhooksSchema

from harness import http_request, plugin_config, wait_until
from test_cluster_state import etcd_envoy_cluster

INTERVAL_MS = 500
PREFIX = "/envoy-webhooks/api-test/"
DOMAIN_A = "9c2f2e2a-6b7d-11ee-8c99-0242ac120002"
DOMAIN_B = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
ALL_ROLES = ["can_read_webhooks", "can_write_webhooks", "can_delete_webhooks"]
TOKEN_A = "tok-a-6v3Qx9Lk2Jm8Np4Rs7Tw"
TOKEN_B = "tok-b-Zy1Xw2Vu3Ts4Rq5Po6Nm"
TOKEN_A_READER = "tok-r-Qq8Ww7Ee6Rr5Tt4Yy3Uu"
API = "/API/notifications/v1/webhooks/"


def api_plugin(retry_schedule_s: list[int] | None = None, threshold: int = 1000) -> dict:
    return plugin_config(
        [],
        api={
            "tokens": {
                TOKEN_A: {"system_domain_id": DOMAIN_A, "roles": ALL_ROLES},
                TOKEN_B: {"system_domain_id": DOMAIN_B, "roles": ALL_ROLES},
                TOKEN_A_READER: {"system_domain_id": DOMAIN_A, "roles": ["can_read_webhooks"]},
            },
            # The receivers are on this machine: plain http to the `hooks` cluster, allowed
            # by name (a single-label name is refused otherwise).
            "urls": {"allow_http": True, "allow": ["hooks"]},
        },
        delivery={"clusters": {"http": "hooks", "https": "hooks"},
                  "retry_schedule_s": retry_schedule_s or [], "failure_threshold": threshold,
                  "failing_window_s": 3600, "timeout_ms": 2000},
        cluster_state={"etcd": {"cluster": "etcd", "authority": "etcd:2379", "prefix": PREFIX,
                                "sync_interval_ms": INTERVAL_MS, "timeout_ms": 500}},
    )


def start_envoys(launch_envoy, upstream, hooks, etcd, plugin: dict, n: int = 2):
    return [launch_envoy(plugin, upstream=upstream, clusters={"hooks": hooks.port},
                         extra_clusters=[etcd_envoy_cluster(etcd.client_ports)], concurrency=2)
            for _ in range(n)]


def sdk(envoy, token: str = TOKEN_A) -> Iconik:
    return Iconik("app-id", token, base_url=f"http://127.0.0.1:{envoy.port}/API", timeout=10)


def create_body(path: str, **fields) -> WebhookCreateSchema:
    body = {"event_type": "assets", "status": "ENABLED", "url": f"http://hooks:8080/hooks/{path}",
            "name": f"hook {path}"}
    body.update(fields)
    return WebhookCreateSchema.from_dict(body)


def event(i, domain: str = DOMAIN_A, **fields) -> bytes:
    body = {"system_domain_id": domain, "event_type": "assets", "realm": "entity",
            "operation": "update", "object_id": f"obj-{i}", "request_id": f"req-{i}", "data": {}}
    body.update(fields)
    return json.dumps(body).encode()


def raw(envoy, method: str, path: str, token: str | None = TOKEN_A, body=None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if token:
        headers["Auth-Token"] = token
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    r = http_request(envoy.port, method, path, body=data, headers=headers)
    assert r.headers.get("content-type") == "application/json", r
    return r.status, (json.loads(r.body) if r.body else {})


@pytest.fixture
def cluster(launch_envoy, upstream, hooks, etcd_cluster):
    return start_envoys(launch_envoy, upstream, hooks, etcd_cluster, api_plugin())


def test_created_through_one_envoy_delivered_through_the_other(cluster, hooks, upstream):
    one, two = cluster
    started = time.monotonic()
    made = sdk(one).post_webhooks(body=create_body("a1", query='data.status="ACTIVE"'))
    assert made.status_code == 201, made.content
    webhook = made.parsed
    assert isinstance(webhook, WebhookSchema)
    assert str(webhook.status) == "ENABLED"
    secret = webhook.additional_properties["secret"]
    assert secret.startswith("whsec_")
    # Through the other Envoy, until its workers have it: every event is one the webhook wants.
    def delivered() -> bool:
        two.post_event(event(int(time.monotonic() * 1000), data={"status": "ACTIVE"}))
        return hooks.count("/hooks/a1") > 0
    wait_until(delivered, timeout=4 * INTERVAL_MS / 1000 + 5, interval=0.05)
    print(f"create to first delivery through the other Envoy: {time.monotonic() - started:.3f} s")
    request = hooks.requests("/hooks/a1")[0]
    assert request.headers.get("webhook-id"), request.headers
    from standardwebhooks import Webhook
    Webhook(secret).verify(request.body, {k: v for k, v in request.headers.items()})
    # The filter's own answer never reached the platform.
    assert not any(r.path.startswith("/API/") for r in upstream.requests())
    # Its query holds: an event that does not match is not delivered.
    before = hooks.count("/hooks/a1")
    two.post_event(event("no", data={"status": "CLOSED"}))
    time.sleep(0.5)
    assert hooks.count("/hooks/a1") == before


def test_tenants_see_and_reach_only_their_own(cluster, hooks):
    one, two = cluster
    a = sdk(one, TOKEN_A).post_webhooks(body=create_body("ta")).parsed
    b = sdk(two, TOKEN_B).post_webhooks(body=create_body("tb")).parsed
    listed = sdk(two, TOKEN_A).get_webhooks()
    assert listed.status_code == 200
    assert isinstance(listed.parsed, WebhooksSchema)
    assert [str(w.id) for w in listed.parsed.objects] == [str(a.id)]
    assert [str(w.id) for w in sdk(one, TOKEN_B).get_webhooks().parsed.objects] == [str(b.id)]
    # Another tenant's webhook is not there, for every verb.
    for envoy in (one, two):
        for method, suffix in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("GET", "secret/"),
                               ("POST", "secret/rotate/")):
            status, body = raw(envoy, method, f"{API}{a.id}/{suffix}", TOKEN_B, body={"name": "x"})
            assert status == 404, (method, suffix, body)
            assert body == {"errors": {"id": "no such webhook"}}
    # Events: each tenant's webhook gets only its domain's.
    wait_until(lambda: (one.post_event(event("x", DOMAIN_A)), hooks.count("/hooks/ta") > 0)[1],
               timeout=8, interval=0.1)
    # B's webhook was made through the other Envoy: each of this one's workers has it within
    # two sync intervals, so events go until five are delivered.
    sent = iter(range(1000))
    wait_until(lambda: (one.post_event(event(f"b{next(sent)}", DOMAIN_B)), hooks.count("/hooks/tb") >= 5)[1],
               timeout=8, interval=0.1)
    # Every root context (two workers' and the main thread's) of each Envoy holds both.
    loaded = "envoy_webhooks.api_webhooks.loaded"
    for envoy in (one, two):
        wait_until(lambda: envoy.wasm_stat(loaded) == 2 * 3, timeout=4 * INTERVAL_MS / 1000 + 2,
                   interval=0.05, message=lambda: f"{loaded} = {envoy.wasm_stat(loaded)}")
    assert all(json.loads(r.body)["system_domain_id"] == DOMAIN_A for r in hooks.requests("/hooks/ta"))
    assert all(json.loads(r.body)["system_domain_id"] == DOMAIN_B for r in hooks.requests("/hooks/tb"))
    # No domain, or another one: no tenant's webhook.
    before = hooks.count()
    one.post_event(event("none", "00000000-0000-4000-8000-000000000000"))
    one.post_event(json.dumps({"event_type": "assets", "object_id": "x"}).encode())
    time.sleep(0.5)
    assert hooks.count() == before


def test_who_may_do_what(cluster):
    one, _ = cluster
    made = sdk(one).post_webhooks(body=create_body("w1")).parsed
    assert raw(one, "GET", API, token=None)[0] == 401
    status, body = raw(one, "GET", API, token="tok-nobody-000000000000000")
    assert (status, body) == (401, {"errors": {"authorization": "the Auth-Token is not valid"}})
    assert raw(one, "GET", API, TOKEN_A_READER)[0] == 200
    for method, path in (("POST", API), ("PUT", f"{API}{made.id}/"), ("GET", f"{API}{made.id}/secret/")):
        status, body = raw(one, method, path, TOKEN_A_READER, body={"name": "x"})
        assert status == 403 and "can_write_webhooks" in body["errors"]["authorization"], body
    assert raw(one, "DELETE", f"{API}{made.id}/", TOKEN_A_READER)[0] == 403
    assert raw(one, "GET", f"{API}not-a-uuid/")[0] == 404
    assert raw(one, "PATCH", API)[0] == 405
    assert raw(one, "GET", "/API/notifications/v2/nothing")[0] == 404
    # A refused request changed nothing.
    assert [str(w.id) for w in sdk(one).get_webhooks().parsed.objects] == [str(made.id)]


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/x", "https://2130706433/", "https://0x7f.1/", "https://10.0.0.5/",
    "https://169.254.169.254/latest", "https://[::1]/", "https://[::ffff:10.0.0.1]/",
    "https://100.64.0.1/", "https://localhost/", "https://db.svc/", "https://a.cluster.local/",
    "https://metadata.internal/", "https://user:pw@hooks.example.com/", "ftp://hooks.example.com/",
    "https://kubernetes/", "https://hooks.example.com:0/",
])
def test_urls_that_point_inside_are_refused(cluster, url):
    one, _ = cluster
    status, body = raw(one, "POST", API, body={"event_type": "assets", "status": "ENABLED", "url": url})
    assert status == 400 and "url" in body["errors"], body
    assert sdk(one).get_webhooks().parsed.objects == []


def test_bad_input_gets_every_problem_and_changes_nothing(cluster):
    one, _ = cluster
    status, body = raw(one, "POST", API, body={
        "event_type": 3, "url": "https://10.1.1.1/", "operation": "explode", "query": "data.a ==",
        "headers": {"Host": "x"}, "object_id": "nope", "status": "DELETED", "colour": "red"})
    assert status == 400
    assert set(body["errors"]) == {"event_type", "url", "operation", "query", "headers", "object_id",
                                   "status", "colour"}, body
    assert raw(one, "POST", API, body=b"{not json")[0] == 400
    status, body = raw(one, "POST", API, body=b"x" * (64 * 1024 + 1))
    assert status == 413, body
    assert sdk(one).get_webhooks().parsed.objects == []


def test_a_change_and_a_delete_reach_deliveries_waiting_for_retries(launch_envoy, upstream, hooks,
                                                                     etcd_cluster):
    one, two = start_envoys(launch_envoy, upstream, hooks, etcd_cluster, api_plugin(retry_schedule_s=[1, 1, 1, 1]))
    hooks.set_reply("/hooks/old", status=503)
    made = sdk(one).post_webhooks(body=create_body("old")).parsed
    wait_until(lambda: (two.post_event(event("r1")), hooks.count("/hooks/old") > 0)[1],
               timeout=8, interval=0.2)
    first = hooks.count("/hooks/old")
    # Changed while its deliveries wait: the retries go to the new URL, with the same webhook-id.
    changed = sdk(one).put_webhook(str(made.id), body=WebhookCreateSchema.from_dict(
        {"event_type": "assets", "status": "ENABLED", "url": "http://hooks:8080/hooks/new"}))
    assert changed.status_code == 200, changed.content
    assert changed.parsed.name == "hook old", "a change keeps what it does not touch"
    hooks.wait_for(1, "/hooks/new", timeout=8)
    # Every worker of every Envoy has the change within two sync intervals.
    time.sleep(2 * INTERVAL_MS / 1000 + 0.5)
    ids_old = {r.headers["webhook-id"] for r in hooks.requests("/hooks/old")}
    ids_new = {r.headers["webhook-id"] for r in hooks.requests("/hooks/new")}
    assert ids_old & ids_new, (ids_old, ids_new)
    assert hooks.count("/hooks/old") <= first + 2
    # Deleted while its deliveries wait: they are dropped, and counted.
    hooks.set_reply("/hooks/new", status=503)
    for i in range(3):
        two.post_event(event(f"d{i}"))
    wait_until(lambda: hooks.count("/hooks/new") >= 4, timeout=8)
    deleted = sdk(one).delete_webhook(str(made.id))
    assert deleted.status_code == 204
    time.sleep(INTERVAL_MS / 1000 * 2 + 0.2)
    settled = hooks.count("/hooks/new")
    time.sleep(2.5)
    assert hooks.count("/hooks/new") == settled, "no retry after the delete"
    wait_until(lambda: two.wasm_stat("envoy_webhooks.deliveries_discarded") >= 1, timeout=5)
    assert sdk(one).get_webhook(str(made.id)).status_code == 404


def test_failing_is_shown_and_cleared_through_the_api(launch_envoy, upstream, hooks, etcd_cluster):
    one, two = start_envoys(launch_envoy, upstream, hooks, etcd_cluster, api_plugin(threshold=3))
    hooks.set_reply("/hooks/f1", status=500)
    made = sdk(one).post_webhooks(body=create_body("f1")).parsed
    wait_until(lambda: (two.post_event(event("f")), hooks.count("/hooks/f1") >= 3)[1],
               timeout=10, interval=0.2)
    def shown():
        return sdk(one).get_webhook(str(made.id)).parsed
    wait_until(lambda: str(shown().status) == "FAILING", timeout=5)
    failing = shown()
    assert "500" in failing.last_error
    assert failing.first_failed_at is not None
    hooks.set_reply("/hooks/f1", status=204)
    body = failing.to_dict()
    body["status"] = "ENABLED"
    enabled = sdk(one).put_webhook(str(made.id), body=WebhookCreateSchema.from_dict(body))
    assert enabled.status_code == 200, enabled.content
    wait_until(lambda: str(shown().status) == "ENABLED", timeout=5)
    assert shown().last_error is None
    # Called again, through both Envoys.
    for envoy in (one, two):
        calls = hooks.count("/hooks/f1")
        wait_until(lambda: (envoy.post_event(event("g")), hooks.count("/hooks/f1") > calls)[1],
                   timeout=8, interval=0.2)


def test_everything_survives_both_envoys_restarting(launch_envoy, upstream, hooks, etcd_cluster):
    plugin = api_plugin()
    one, two = start_envoys(launch_envoy, upstream, hooks, etcd_cluster, plugin)
    made = sdk(one).post_webhooks(body=create_body("s1")).parsed
    secret = sdk(one).post_webhooks(body=create_body("s2")).parsed
    one.stop()
    two.stop()
    three, = start_envoys(launch_envoy, upstream, hooks, etcd_cluster, plugin, n=1)
    ids = sorted(str(w.id) for w in sdk(three).get_webhooks().parsed.objects)
    assert ids == sorted([str(made.id), str(secret.id)])
    wait_until(lambda: (three.post_event(event("s")), hooks.count("/hooks/s1") > 0)[1],
               timeout=8, interval=0.2)


def test_two_envoys_creating_at_once_lose_nothing(cluster):
    one, two = cluster
    made: list[str] = []
    errors: list[object] = []

    def create(envoy, n):
        for i in range(n):
            r = sdk(envoy).post_webhooks(body=create_body(f"c{envoy.port}-{i}"))
            (made if r.status_code == 201 else errors).append(str(r.parsed.id) if r.status_code == 201 else r)

    threads = [threading.Thread(target=create, args=(envoy, 10)) for envoy in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = sorted(str(w.id) for w in sdk(one).get_webhooks().parsed.objects)
    assert listed == sorted(made) and len(made) == 20


def test_etcd_down_answers_503_and_deliveries_go_on(cluster, hooks, etcd_cluster):
    one, two = cluster
    sdk(one).post_webhooks(body=create_body("e1"))
    wait_until(lambda: (two.post_event(event("e")), hooks.count("/hooks/e1") > 0)[1],
               timeout=8, interval=0.2)
    # Every worker has it within two sync intervals (events may go to either worker).
    time.sleep(2 * INTERVAL_MS / 1000 + 0.5)
    etcd_cluster.kill_all()
    status, body = raw(one, "GET", API)
    assert status == 503 and "etcd" in body["errors"]["service"], body
    before = hooks.count("/hooks/e1")
    for i in range(5):
        assert two.post_event(event(f"down{i}")).status == 200
    wait_until(lambda: hooks.count("/hooks/e1") >= before + 5, timeout=8)


# --------------------------------------------------------------------------- identity from jwt_authn

IDENTITY = {"system_domain_id": "x-iconik-domain", "roles": "x-iconik-roles"}


def b64url(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """A JWT issuer of the test's own: an RSA key, its JWKS, and tokens it signs."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import rsa
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        self.jwks = json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "test",
                                          "n": b64url(n), "e": b64url(numbers.e.to_bytes(3, "big"))}]})

    def token(self, **claims) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        claims = {"iss": "https://auth.example.com", "exp": int(time.time()) + 600, **claims}
        signing_input = f"{b64url(json.dumps({'alg': 'RS256', 'typ': 'JWT', 'kid': 'test'}).encode())}." \
                        f"{b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


def identity_filters(jwks: str) -> list[dict]:
    """In front of the filter: remove any identity header the client sent, then let jwt_authn
    check the token and put its claims in those headers (docs/api.md shows the same)."""
    return [
        {"name": "envoy.filters.http.header_mutation",
         "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
             "mutations": {"request_mutations": [{"remove": IDENTITY["system_domain_id"]},
                                                 {"remove": IDENTITY["roles"]}]}}},
        {"name": "envoy.filters.http.jwt_authn",
         "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
             "providers": {"tenants": {
                 "issuer": "https://auth.example.com",
                 "local_jwks": {"inline_string": jwks},
                 "forward": False,
                 "claim_to_headers": [
                     {"header_name": IDENTITY["system_domain_id"], "claim_name": "system_domain_id"},
                     {"header_name": IDENTITY["roles"], "claim_name": "roles"}]}},
             "rules": [{"match": {"prefix": "/API/"}, "requires": {"provider_name": "tenants"}}]}},
    ]


def test_an_identity_checked_by_jwt_authn_in_front(launch_envoy, upstream, hooks, etcd_cluster):
    from harness import envoy_config, free_port, WASM
    issuer = Issuer()
    plugin = api_plugin()
    plugin["api"] = {"identity_headers": IDENTITY, "urls": plugin["api"]["urls"]}
    config = envoy_config(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                          plugin=plugin, clusters={"hooks": hooks.port}, wasm=WASM,
                          extra_clusters=[etcd_envoy_cluster(etcd_cluster.client_ports)])
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = identity_filters(issuer.jwks) + hcm["http_filters"]
    envoy = launch_envoy(None, upstream=upstream, config=config, concurrency=2)

    def call(method: str, path: str, jwt: str | None, body=None, headers=None) -> tuple[int, bytes]:
        sent = {"content-type": "application/json", **(headers or {})}
        if jwt:
            sent["authorization"] = f"Bearer {jwt}"
        data = None if body is None else json.dumps(body).encode()
        r = http_request(envoy.port, method, path, body=data, headers=sent)
        return r.status, r.body

    writer_a = issuer.token(system_domain_id=DOMAIN_A, roles="can_read_webhooks can_write_webhooks")
    status, body = call("POST", API, writer_a, body={"event_type": "assets", "status": "ENABLED",
                                                     "url": "http://hooks:8080/hooks/jwt"})
    assert status == 201, body
    made = json.loads(body)
    status, body = call("GET", API, writer_a)
    assert status == 200 and [w["id"] for w in json.loads(body)["objects"]] == [made["id"]]
    # The token's roles count: no delete role, no delete.
    status, body = call("DELETE", f"{API}{made['id']}/", writer_a)
    assert status == 403, body
    # A client's own identity headers are removed before jwt_authn: B's token plus a forged
    # header naming A still sees B's (none), and a token without the claim sees nothing.
    reader_b = issuer.token(system_domain_id=DOMAIN_B, roles="can_read_webhooks")
    status, body = call("GET", API, reader_b, headers={IDENTITY["system_domain_id"]: DOMAIN_A,
                                                        IDENTITY["roles"]: "can_read_webhooks"})
    assert status == 200 and json.loads(body)["objects"] == [], body
    no_claim = issuer.token(roles="can_read_webhooks")
    status, body = call("GET", API, no_claim, headers={IDENTITY["system_domain_id"]: DOMAIN_A})
    assert status == 401, body
    # jwt_authn refuses a missing or forged token itself.
    assert call("GET", API, None)[0] == 401
    forged = Issuer().token(system_domain_id=DOMAIN_A, roles="can_read_webhooks")
    assert call("GET", API, forged)[0] == 401
    assert not any(r.path.startswith("/API/") for r in upstream.requests())


def test_without_allow_on_headers_stop_iteration_a_create_says_why_and_never_goes_upstream(
        launch_envoy, upstream, hooks, etcd_cluster):
    from harness import envoy_config, free_port, walk, WASM
    config = envoy_config(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                          plugin=api_plugin(), clusters={"hooks": hooks.port}, wasm=WASM,
                          extra_clusters=[etcd_envoy_cluster(etcd_cluster.client_ports)])

    def knob_off(d: dict) -> None:
        if "allow_on_headers_stop_iteration" in d:
            d["allow_on_headers_stop_iteration"] = False

    walk(config, knob_off)
    envoy = launch_envoy(None, upstream=upstream, config=config)
    started = time.monotonic()
    status, body = raw(envoy, "POST", API, body={"event_type": "assets", "status": "ENABLED",
                                                 "url": "http://hooks:8080/hooks/x"})
    assert status == 501 and "allow_on_headers_stop_iteration: true" in body["errors"]["body"], body
    assert time.monotonic() - started < 6
    # What needs no body still works; nothing reached the platform.
    assert raw(envoy, "GET", API)[0] == 200
    assert not any(r.path.startswith("/API/") for r in upstream.requests())
