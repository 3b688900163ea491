"""The bench's own parsing (integration/bench/run.py): what it reads off other tools'
output must add up, or its tables say nothing."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

import run  # noqa: E402

# valgrind's callgrind format with name compression: an object named the first time in a
# cob= line and referred to by number afterwards, a call's inclusive cost after calls=,
# relative positions, and a second part (a dump's file per thread or per dump).
CALLGRIND = """version: 1
creator: callgrind-3.19.0
positions: line
events: Ir
summary: 0

ob=(1) /opt/envoy/_bin/envoy
fl=(1) ???
fn=(1) 0x0000000000400000
0 100
+2 50
cob=(2) ???
cfn=(2) 0x00001c0000000040
calls=3 0
0 9999
-1 7

ob=(2)
fl=(1)
fn=(2)
0 300
cob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
cfn=(3) memcpy
calls=1 0
0 40

ob=(3)
fn=(3)
0 40
totals: 497
"""


def test_callgrind_self_cost_is_split_by_object(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text(CALLGRIND)
    split = run.callgrind_split([dump])
    # The envoy binary's own lines (100 + 50 + 7), the unnamed JIT code (300), libc (40); the
    # costs after calls= are the callees' inclusive costs, counted where the callees are.
    assert split == {"envoy": 157, "jit": 300, "libs": 40}
    empty = tmp_path / "callgrind.out"
    empty.write_text("version: 1\nevents: Ir\ntotals: 0\n")
    assert run.callgrind_split([dump, empty]) == split


def test_the_targets_in_instructions_are_the_capacity_ratios():
    rows = [{"tag": t, "total": n} for t, n in
            (("nofilter", 175_000), ("noop", 200_000), ("n0", 201_000), ("n100-ordinary", 290_000),
             ("n1000-ordinary", 300_000), ("n100", 340_000), ("n100-one", 450_000), ("floor", 305_000),
             ("nofilter-get", 150_000), ("n100-get", 150_500), ("mixed-nofilter", 152_000),
             ("mixed-n100", 160_000))]
    table = run.instructions_targets(rows)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert "200,000 ÷ 201,000 = 1.00× | yes" in lines["0 definitions ≥ 0.98× the no-op filter"]
    assert "= 0.69× | no" in lines["100 definitions, no event matches ≥ 0.90× the no-op filter"]
    assert "305,000 ÷ 450,000 = 0.68× | no" in lines[
        "100 definitions, every event matching one webhook ≥ 0.80× the delivery floor"]
    # Requests on other routes, and the mixed traffic, against Envoy alone's of the same kind.
    assert "150,000 ÷ 150,500 = 1.00× | yes" in lines["a GET on a route without the filter ≥ 0.99× Envoy alone"]
    assert "152,000 ÷ 160,000 = 0.95× | no" in next(v for k, v in lines.items() if k.startswith("mixed:"))
    # A delivery: 450 K − 290 K = 160 K; a bare callout: 305 K − 200 K = 105 K; ours: 55 K.
    assert "(160,000 − 105,000) = 55,000 = 0.52× a callout of 105,000 | no" in lines[
        "our bookkeeping per delivery ≤ 0.2× a bare callout"]
    # Cases not counted leave their rows out, and no case leaves no table.
    assert "every event" not in run.instructions_targets([r for r in rows if r["tag"] != "floor"])
    assert run.instructions_targets([]) == ""
