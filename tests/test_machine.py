"""hardbatch.machine: what /proc/cpuinfo says about the CPU (the bf16 capability rule reads it)."""

from __future__ import annotations

import pytest

import hardbatch.machine as machine

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_cpuinfo_fields_are_read(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ZEN4)
    assert machine.cpu_vendor() == "AuthenticAMD"
    assert machine.cpu_model() == "AMD EPYC 9R14"
    assert {"avx512_bf16", "avx2"} <= machine.cpu_flags()
    assert "amx_bf16" not in machine.cpu_flags()
    info = machine.describe_machine()
    assert info["cpu_vendor"] == "AuthenticAMD"
    assert info["cpu_flags"] == ["avx512_bf16", "avx512f", "avx2"]


@pytest.mark.parametrize("text", ["", "processor\t: 0\n"])
def test_unreadable_cpuinfo_gives_empty_answers(monkeypatch, text):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: text)
    assert machine.cpu_vendor() == ""
    assert machine.cpu_flags() == set()
