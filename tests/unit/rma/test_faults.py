"""The fault dictionary (seed 001, case 10): the shipped file is valid; an unknown code is refused
naming `fault_code` and listing the valid codes; a bad file fails at start-up naming the key."""

from __future__ import annotations

import pytest

from libs.domain.errors import RuleViolation
from services.rma.bootstrap import CONFIG_DIR
from services.rma.domain.catalogue import parse_catalogue_seed, parse_substitution_policy
from services.rma.domain.faults import parse_faults

FAULTS = parse_faults((CONFIG_DIR / "faults.toml").read_text())


def test_the_left_button_failure_is_split_into_its_symptoms() -> None:
    left = sorted(f.symptom for f in FAULTS.faults if f.component == "left_button")
    assert left == ["double_click", "intermittent", "no_response"]
    assert FAULTS.require("left_button.double_click").label_en == "Left button: double-clicks"


def test_an_unknown_code_names_the_field_and_lists_the_valid_codes() -> None:
    with pytest.raises(RuleViolation) as err:
        FAULTS.require("BTN_L_DBL")
    assert err.value.field == "fault_code"
    assert all(code in err.value.rule for code in FAULTS.codes)


@pytest.mark.parametrize(("text", "names"), [
    ('version = "1"\nfaults = []', "faults"),
    ('version = "1"\n[[faults]]\ncode = "Bad Code"\ncategory = "c"\ncomponent = "c"\nsymptom = "s"\n'
     'label_zh = "x"\nlabel_en = "x"', "faults.0.code"),
    ('version = "1"\n' + '[[faults]]\ncode = "a"\ncategory = "c"\ncomponent = "c"\nsymptom = "s"\n'
     'label_zh = "x"\nlabel_en = "x"\n' * 2, "duplicate code"),
    ("version = ", "TOML syntax error"),
])
def test_a_bad_dictionary_fails_naming_the_key(text: str, names: str) -> None:
    with pytest.raises(ValueError, match=names.replace(".", r"\.")):
        parse_faults(text)


def test_the_shipped_policy_and_catalogue_seed_are_valid() -> None:
    policy = parse_substitution_policy((CONFIG_DIR / "substitution_policy.toml").read_text())
    seed = parse_catalogue_seed((CONFIG_DIR / "catalogue.toml").read_text())
    old = next(i for i in seed.items if i.eol)
    assert old.warranty_days == 365 and len(old.substitutes) == 3
    assert policy.approval_threshold.amount < policy.price_ceiling.amount
    assert {w.warehouse_id for w in seed.warehouses} >= {"tw-service-centre"}
