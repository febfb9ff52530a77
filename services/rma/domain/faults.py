"""The fault dictionary (seed 001, case 10): every RMA names a fault code from it, so that faults are
counted by SKU and code instead of read out of free text. Loaded from TOML
(`services/rma/config/faults.toml`); a code is a lower-case `component.symptom`, e.g.
`left_button.double_click`."""

from __future__ import annotations

import tomllib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from libs.domain.errors import RuleViolation
from libs.domain.types import Code, Name


class Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: Code
    category: Code  # e.g. input, tracking, power, wireless, physical
    component: Code  # e.g. left_button
    symptom: Code  # e.g. double_click
    label_zh: Name
    label_en: Name


class FaultDictionary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[str, Field(min_length=1, max_length=64)]
    faults: Annotated[list[Fault], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique(self) -> FaultDictionary:
        seen: set[str] = set()
        for i, f in enumerate(self.faults):
            if f.code in seen:
                raise ValueError(f"faults[{i}].code: duplicate code {f.code!r}")
            seen.add(f.code)
        return self

    @property
    def codes(self) -> list[str]:
        return sorted(f.code for f in self.faults)

    def get(self, code: str) -> Fault | None:
        return next((f for f in self.faults if f.code == code), None)

    def require(self, code: str) -> Fault:
        """The fault with this code; RuleViolation naming `fault_code` and listing the valid codes."""
        fault = self.get(code)
        if fault is None:
            raise RuleViolation("fault_code", f"must be a code of the fault dictionary ({self.version}): "
                                              f"{', '.join(self.codes)}; got {code!r}")
        return fault


def parse_faults(text: str) -> FaultDictionary:
    """Parse the fault dictionary from TOML; a ValueError names the bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid fault dictionary: TOML syntax error: {exc}") from None
    try:
        return FaultDictionary.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ValueError("invalid fault dictionary: " + "; ".join(parts)) from None
