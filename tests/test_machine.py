"""hardbatch.machine: what /proc/cpuinfo says about the CPU (the bf16 capability rule reads it)."""

from __future__ import annotations

import pytest

import hardbatch.machine as machine

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_cpuinfo_fields_are_read(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ZEN4)
    assert machine.cpu_vendor() == "AuthenticAMD"
    assert machine.cpu_model() == "AMD EPYC 9R14"
    assert {"avx512_bf16", "avx2"} <= machine.cpu_flags()
    assert "amx_bf16" not in machine.cpu_flags()
    assert machine.cpu_generation() == "family 25 model 17, Zen 4"
    info = machine.describe_machine()
    assert info["cpu"] == "AMD EPYC 9R14 (family 25 model 17, Zen 4)"
    assert info["cpu_vendor"] == "AuthenticAMD"
    assert info["cpu_flags"] == ["avx512_bf16", "avx512f", "avx2"]


@pytest.mark.parametrize("text", ["", "processor\t: 0\n"])
def test_unreadable_cpuinfo_gives_empty_answers(monkeypatch, text):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: text)
    assert machine.cpu_vendor() == ""
    assert machine.cpu_flags() == set()
    assert machine.cpu_generation() == ""


@pytest.mark.parametrize(
    ("vendor", "family", "model", "expected"),
    [
        ("AuthenticAMD", 26, 2, "family 26 model 2, Zen 5"),
        ("AuthenticAMD", 25, 1, "family 25 model 1, Zen 3"),
        ("AuthenticAMD", 25, 0x61, "family 25 model 97, Zen 4"),
        ("GenuineIntel", 6, 143, "family 6 model 143"),
    ],
)
def test_cpu_generation_names_the_amd_core(monkeypatch, vendor, family, model, expected):
    text = f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: X\n\nmodel\t\t: 9\n"
    monkeypatch.setattr(machine, "_cpuinfo", lambda: text)
    assert machine.cpu_generation() == expected
