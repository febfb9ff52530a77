"""Loading the orders service's configuration files: the prepayment policy and the
service catalogue (TOML). Paths come from settings; defaults ship in services/orders/config."""

from __future__ import annotations

from pathlib import Path

from services.orders.domain.catalogue import Catalogue, parse_catalogue
from services.orders.domain.prepayment import PrepaymentPolicy, parse_policy

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DEFAULT_POLICY = CONFIG_DIR / "prepayment_policy.toml"
DEFAULT_CATALOGUE = CONFIG_DIR / "catalogue.toml"


def load_policy(path: Path | None = None) -> PrepaymentPolicy:
    p = path or DEFAULT_POLICY
    try:
        return parse_policy(p.read_text())
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None


def load_catalogue(path: Path | None = None) -> Catalogue:
    p = path or DEFAULT_CATALOGUE
    try:
        return parse_catalogue(p.read_text())
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
