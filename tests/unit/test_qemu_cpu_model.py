"""QEMU's -cpu option as data (pure), with QEMU 7.2's precedence of -feat over +feat."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segue.domain.errors import InvalidRequest
from segue.qemu.cpu_model import (
    CpuModel,
    cpu_option,
    parse_cpu_model,
    required_features,
)


def test_parse_name_and_props() -> None:
    model = parse_cpu_model("qemu64,+aes,-avx2,enforce,level=13,model-id=Old CPU,check=off")
    assert model == CpuModel("qemu64", {"aes": True, "avx2": False, "enforce": True,
                                        "level": 13, "model-id": "Old CPU", "check": False})
    assert model.enabled() == {"aes", "enforce"}
    assert parse_cpu_model("max") == CpuModel("max", {})


@pytest.mark.parametrize("text, aes", [
    ("max,+aes,-aes", False), ("max,-aes,+aes", False),  # minus wins, whatever the order
    ("max,aes=off,+aes", True), ("max,+aes,aes=off", True),  # +/- win over prop=value
    ("max,aes=on,aes=off", False), ("max,aes", True),
])
def test_precedence_is_qemus(text: str, aes: bool) -> None:
    assert parse_cpu_model(text).props["aes"] is aes


@pytest.mark.parametrize("text", ["", ",aes", "qemu64,", "qemu64,,aes", "qemu64,+aes=on",
                                  "qemu64,+", "qemu64,-a b", "-qemu64"])
def test_malformed_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_cpu_model(text)
    assert info.value.code == "VM_SPEC_INVALID"
    assert info.value.details["field"] == "cpu_model"


def test_required_features_are_the_explicitly_enabled_ones() -> None:
    among = ["avx2", "aes", "lahf_lm"]
    assert required_features("qemu64,+aes,avx2=on,+lahf-lm", among) == ["aes", "avx2", "lahf_lm"]
    assert required_features("qemu64,+aes,-aes,avx2=off", among) == []
    assert required_features("Haswell", among) == []  # implied by the model: not explicit


def test_cpu_option_appends_sorted_exclusions_and_enforce() -> None:
    assert cpu_option("qemu64") == "qemu64,enforce"
    assert cpu_option("max", ["avx2", "aes", "avx2"]) == "max,-aes,-avx2,enforce"


@given(st.lists(st.sampled_from(["aes", "avx2", "sse4.2", "pclmulqdq", "movbe"]), max_size=5),
       st.lists(st.sampled_from(["aes", "avx2", "sse4.2", "pclmulqdq", "movbe"]), max_size=5))
def test_an_excluded_feature_is_never_enabled_in_the_launched_cpu(
        wanted: list[str], exclude: list[str]) -> None:
    model = "max" + "".join(f",+{f}" for f in wanted)
    launched = parse_cpu_model(cpu_option(model, exclude))
    assert not launched.enabled() & set(exclude)
    assert launched.props["enforce"] is True
