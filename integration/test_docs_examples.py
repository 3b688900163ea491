"""Every fenced example of README.md and docs/*.md, one test case each, named file:line (the
line of its opening fence). What a block is decides how it is checked:

- ```sh, ```bash: commands, not run. ```text: grammar and prose, not checked.
- ```json: parsed. An object with "webhooks" is a plugin configuration, validated by the
  command-line tool (`envoy-webhooks validate FILE` exits 0), unless it is one of the JSON
  documents the filter writes (JSON_WRITTEN: an admin API answer, a dead-letter record), which
  has to have that document's fields. Any other JSON fails: a part of a plugin configuration
  must be shown whole to be validated, and a new kind of document needs its rule here.
- ```yaml: parsed, each document on its own. An Envoy bootstrap (has static_resources) is run
  through `envoy --mode validate` from the repo root; a cluster or a list of clusters is put
  into a bootstrap of its own (static_resources.clusters) and validated the same way. A file a
  block names that does not exist here (a client certificate, its key, a CA) is replaced by one
  the test makes (trustme). An Istio or Kubernetes resource (has apiVersion and kind) has to
  have metadata.name and a spec; a WasmPlugin also a url, and its pluginConfig is validated as
  a plugin configuration (test_istio_plugin.py runs envoy/istio-wasmplugin.yaml's in Envoy).
  Any other YAML fails.
- A block of any other language, or with none, fails: no example escapes unchecked.

Relative links of these files must lead to a file, and a #fragment to one of its headings."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from harness import REPO
from test_envoy_configs import TOKEN_ENV

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_CHECKED = {"sh", "bash", "text"}
# JSON the filter writes, by the key that names it and the fields it has.
JSON_WRITTEN = {
    "a dead-letter record": ("webhook_id", {"webhook_id", "event", "attempts", "last_error", "first_attempt_at",
                                            "reason", "message_id", "request_id"}),
    "an admin API /pending answer": ("workers_with_backlog", {"webhooks", "workers_with_backlog"}),
    "an API error (docs/api.md)": ("errors", {"errors"}),
    "an API webhook (docs/api.md)": ("date_created", {"id", "name", "description", "event_type", "realm",
                                                      "operation", "object_id", "url", "status", "query",
                                                      "headers", "last_error", "first_failed_at",
                                                      "date_created", "date_modified", "delivery", "secret"}),
    "an API list (docs/api.md)": ("objects", {"objects"}),
}
STATUS_ANSWER_FIELDS = {"id", "name", "status", "configured_status", "consecutive_failures", "first_failed_at",
                        "last_error", "delivered", "failed", "paused_at_ms"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^`\s]*)")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    found, lines, i = [], path.read_text().split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and set(lines[j].strip()) == {fence[0]}):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        assert j < len(lines), f"{path.relative_to(REPO)}:{i + 1}: a code block that never ends"
        found.append(Block(path, i + 1, m["lang"].lower(), "\n".join(body) + "\n"))
        i = j + 1
    return found


BLOCKS = [b for path in DOCS for b in blocks_of(path)]
CHECKED = [b for b in BLOCKS if b.lang not in NOT_CHECKED]


def validate_plugin(cli: Path, plugin: str, tmp_path: Path, where: str) -> None:
    path = tmp_path / "plugin.json"
    path.write_text(plugin)
    proc = subprocess.run([str(cli), "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{where}: envoy-webhooks validate refuses it:\n{proc.stdout}{proc.stderr}"


def kind_of_json(value: Any) -> str | None:
    if isinstance(value, dict):
        webhooks = value.get("webhooks")
        if isinstance(webhooks, list) and webhooks and all(
                isinstance(w, dict) and "configured_status" in w for w in webhooks):
            return "an admin API /status answer"
        for kind, (key, _) in JSON_WRITTEN.items():
            if key in value:
                return kind
        if "webhooks" in value:
            return "a plugin configuration"
    return None


def check_json(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    try:
        value = json.loads(block.text)
    except json.JSONDecodeError as e:
        pytest.fail(f"{block.id}: not JSON: {e}")
    kind = kind_of_json(value)
    if kind is None:
        pytest.fail(f"{block.id}: a JSON block this test cannot classify: a plugin configuration has \"webhooks\" "
                    "(show a part of one whole, so it can be validated); the other kinds are the admin API's "
                    f"/status answer and {', '.join(JSON_WRITTEN)} (add a new kind to JSON_WRITTEN)")
    if kind == "a plugin configuration":
        validate_plugin(request.getfixturevalue("cli"), block.text, tmp_path, block.id)  # as written
    elif kind == "an admin API /status answer":
        for webhook in value["webhooks"]:
            assert set(webhook) <= STATUS_ANSWER_FIELDS, f"{block.id}: {kind} with other fields: {sorted(webhook)}"
    else:
        fields = JSON_WRITTEN[kind][1]
        assert set(value) <= fields, f"{block.id}: {kind} with fields it does not have: {sorted(set(value) - fields)}"


def is_cluster(node: Any) -> bool:
    return isinstance(node, dict) and "name" in node and ("load_assignment" in node or "cluster_type" in node)


class StandIns:
    """Files a block names that this machine does not have, made by the test."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "stand-ins"
        self.dir.mkdir()
        ca = trustme.CA()
        cert = ca.issue_cert("receiver.example.com", "envoy-webhooks.client")
        ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
        cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        self.by_key = {"trusted_ca": "ca.pem", "certificate_chain": "cert.pem", "private_key": "key.pem"}

    def put(self, node: Any, where: str, key: str | None = None) -> None:
        if isinstance(node, dict):
            name = node.get("filename")
            if isinstance(name, str) and not (REPO / name).exists():
                assert key in self.by_key, f"{where}: names {name}, which is not here, and the test makes no {key}"
                node["filename"] = str(self.dir / self.by_key[key])
            for k, v in node.items():
                self.put(v, where, k)
        elif isinstance(node, list):
            for v in node:
                self.put(v, where, key)


def envoy_validate(config: dict, block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    envoy_bin = request.getfixturevalue("envoy_bin")
    if ".wasm" in block.text:
        request.getfixturevalue("wasm")
    StandIns(tmp_path).put(config, block.id)
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run([str(envoy_bin), "--mode", "validate", "-c", str(path)], cwd=REPO,
                          env=dict(os.environ, **TOKEN_ENV), capture_output=True, text=True, timeout=120)
    out = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"{block.id}: envoy --mode validate refuses it:\n{out}"
    assert "invalid configuration" not in out, f"{block.id}:\n{out}"


def check_resource(doc: dict, block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    where = f"{block.id}: {doc.get('kind')}"
    assert isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name"), f"{where} has no metadata.name"
    assert isinstance(doc.get("spec"), dict), f"{where} has no spec"
    if doc["kind"] == "WasmPlugin":
        assert str(doc["apiVersion"]).startswith("extensions.istio.io/"), f"{where}: apiVersion {doc['apiVersion']}"
        assert doc["spec"].get("url"), f"{where} has no spec.url"
        if "pluginConfig" in doc["spec"]:
            validate_plugin(request.getfixturevalue("cli"), json.dumps(doc["spec"]["pluginConfig"]), tmp_path, where)


def check_yaml(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    try:
        docs = [d for d in yaml.safe_load_all(block.text) if d is not None]
    except yaml.YAMLError as e:
        pytest.fail(f"{block.id}: not YAML: {e}")
    assert docs, f"{block.id}: an empty YAML block"
    for n, doc in enumerate(docs):
        work = tmp_path / f"doc{n}"
        work.mkdir()
        if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
            check_resource(doc, block, request, work)
        elif isinstance(doc, dict) and "static_resources" in doc:
            envoy_validate(doc, block, request, work)
        elif is_cluster(doc) or (isinstance(doc, list) and doc and all(map(is_cluster, doc))):
            clusters = doc if isinstance(doc, list) else [doc]
            envoy_validate({"static_resources": {"clusters": clusters}}, block, request, work)
        else:
            pytest.fail(f"{block.id}: a YAML block this test cannot classify: neither an Envoy bootstrap "
                        "(static_resources), a cluster or a list of clusters, nor a resource (apiVersion, kind)")


def check(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.lang == "json":
        check_json(block, request, tmp_path)
    elif block.lang == "yaml":
        check_yaml(block, request, tmp_path)
    else:
        pytest.fail(f"{block.id}: a ```{block.lang or '(no language)'} block: this test checks json and yaml, "
                    f"and leaves {', '.join(sorted(NOT_CHECKED))} alone; give it one of those or a rule here")


@pytest.mark.parametrize("block", CHECKED, ids=[b.id for b in CHECKED])
def test_example(block: Block, request: pytest.FixtureRequest, tmp_path: Path):
    check(block, request, tmp_path)


UNCLASSIFIABLE = {
    "a part of a plugin configuration": ("json", '{"delivery": {"timeout_ms": 10000}}', "cannot classify"),
    "a JSON list": ("json", "[1, 2]", "cannot classify"),
    "not JSON": ("json", '{"webhooks": []', "not JSON"),
    "an Envoy listener": ("yaml", "- name: events\n  address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n",
                          "cannot classify"),
    "a resource without spec": ("yaml", "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
                                        "metadata: {name: envoy-webhooks}\n", "has no spec"),
    "a block without a language": ("", "anything\n", "(no language)"),
    "a language this test does not know": ("toml", "a = 1\n", "```toml"),
}


@pytest.mark.parametrize("lang, text, says", UNCLASSIFIABLE.values(), ids=UNCLASSIFIABLE.keys())
def test_a_block_it_cannot_check_fails(lang: str, text: str, says: str, request: pytest.FixtureRequest,
                                       tmp_path: Path):
    with pytest.raises((AssertionError, pytest.fail.Exception)) as failure:
        check(Block(REPO / "docs" / "example.md", 1, lang, text), request, tmp_path)
    assert says in str(failure.value)


def test_the_examples_are_found():
    """The parser finds the blocks it should (a parser finding none would check nothing)."""
    ids = {b.id.split(":")[0] + ":" + b.lang for b in CHECKED}
    assert {"README.md:json", "docs/configuration.md:json", "docs/delivery.md:yaml",
            "docs/cluster-state.md:yaml"} <= ids
    assert any(b.text.startswith("# mtls-receiver-cluster\n") for b in CHECKED)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    text = path.read_text()
    for block in blocks_of(path):  # a "# comment" in a code block is no heading
        text = text.replace(block.text, "")
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_lead_somewhere(path: Path):
    text = path.read_text()
    for block in blocks_of(path):
        text = text.replace(block.text, "")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors_of(dest):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{path.relative_to(REPO)}: " + "; ".join(broken)
