"""Constrained string types shared by every service's events and commands, so that an id or a
code means the same thing (and validates the same way) everywhere."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                          description="an identifier: 1-64 of A-Z a-z 0-9 _ . : -")]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$",
                            description="a lower-case machine code, e.g. 'dishwashing' or 'payment_timeout'")]
Text = Annotated[str, Field(max_length=500)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Reference = Annotated[str, Field(min_length=1, max_length=128,
                                 description="a provider payment, wallet entry, voucher id or receipt")]
Version = Annotated[str, Field(min_length=1, max_length=64)]
