"""Claim-value identity (decision.value_key and friends): the one rule every comparison uses."""

from __future__ import annotations

from keycloak_policy_bridge.decision import claim_changes, claim_values, value_key, value_label, value_order


def test_a_string_and_a_number_with_the_same_text_are_two_values() -> None:
    assert value_key("1") != value_key(1)
    assert claim_values(["1", 1, "1"]) == {"1": "1", b"1": 1}
    assert claim_changes({"level": ["1"]}, {"level": [1]}) == ({"level": [1]}, {"level": ["1"]})


def test_equal_json_values_are_one_value_whatever_their_key_order() -> None:
    assert value_key({"a": 1, "b": [2]}) == value_key({"b": [2], "a": 1})
    assert claim_changes({"ctx": {"a": 1, "b": 2}}, {"ctx": {"b": 2, "a": 1}}) == ({}, {})


def test_values_sort_strings_first_then_by_canonical_json() -> None:
    keys = [value_key(v) for v in (2, "b", {"x": 1}, "a")]
    assert sorted(keys, key=value_order) == ["a", "b", b"2", b'{"x":1}']
    added, removed = claim_changes({}, {"mixed": [2, "b", "a"]})
    assert added == {"mixed": ["a", "b", 2]} and removed == {}


def test_a_scalar_claim_is_a_one_value_set_and_a_change_is_a_removal_and_an_addition() -> None:
    assert claim_changes({"tenant": "eu"}, {"tenant": "us"}) == ({"tenant": ["us"]}, {"tenant": ["eu"]})
    assert claim_changes({"tenant": "eu"}, {}) == ({}, {"tenant": ["eu"]})


def test_report_labels_are_text() -> None:
    assert value_label("crm:read") == "crm:read" and value_label({"b": 1, "a": 2}) == '{"a":2,"b":1}'
