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
