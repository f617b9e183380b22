"""Child names and label values: deterministic, DNS-1123 safe, unique after truncation."""

import re

import pytest

from gptops.api.names import DNS_LABEL_MAX, JOB_NAME_MAX, child_name, dns_label, label_value

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    ("owner", "stage", "gen", "expected"),
    [
        ("tune", "train", 1, "tune-train-1"),
        ("my-ftj", "evaluate", 12, "my-ftj-evaluate-12"),
    ],
)
def test_short_names_are_plain(owner, stage, gen, expected):
    assert child_name(owner, stage, gen) == expected


@pytest.mark.parametrize("owner", ["a" * 60, "x" * 253, "very.long.dotted.name-" * 10])
def test_long_names_are_truncated_with_hash(owner):
    name = child_name(owner, "evaluate", 123)
    assert len(name) <= JOB_NAME_MAX <= DNS_LABEL_MAX
    assert DNS1123.match(name)
    assert name.endswith("-evaluate-123")
    assert name == child_name(owner, "evaluate", 123)


def test_truncated_names_of_different_owners_differ():
    assert child_name("a" * 70 + "1", "train", 1) != child_name("a" * 70 + "2", "train", 1)


def test_dns_label_cleans_invalid_characters():
    assert DNS1123.match(dns_label("My_Model.V2", "svc"))


@pytest.mark.parametrize("value", ["ok", "x" * 100, "a.b_c-d", "-bad-start-", "with/slash"])
def test_label_values_are_valid(value):
    out = label_value(value)
    assert len(out) <= 63 and LABEL.match(out)
