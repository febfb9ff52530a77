"""Rendering the message templates (services/notifications/templates/README.md): Jinja2 in a sandbox,
with StrictUndefined so that a variable the context lacks is an error and never a silently empty
sentence in a customer's message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LOCALES = ("zh-TW", "en")
# channel -> (title part, body part); SMS has no title
PARTS: dict[str, tuple[str | None, str]] = {
    "email": ("email_subject", "email_body"),
    "sms": (None, "sms_body"),
    "in_app": ("in_app_title", "in_app_body"),
}
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")


@dataclass(frozen=True)
class Rendered:
    template: str
    channel: str
    locale: str
    title: str
    body: str


class Renderer:
    def __init__(self, directory: Path = TEMPLATES, *, default_locale: str = "zh-TW") -> None:
        if default_locale not in LOCALES:
            raise ValueError(f"default locale must be one of {LOCALES}")
        self.directory = directory
        self.default_locale = default_locale
        self.env = SandboxedEnvironment(loader=FileSystemLoader(directory), undefined=StrictUndefined,
                                        autoescape=False, trim_blocks=True, lstrip_blocks=True)

    def locale_for(self, template: str, wanted: str | None) -> str:
        """The locale a message is written in: the wanted one when the template exists in it, else the
        default locale, else English."""
        for locale in (wanted, self.default_locale, "en"):
            if locale in LOCALES and (self.directory / locale / f"{template}.j2").is_file():
                return locale
        raise TemplateNotFound(f"{template} (no locale has it)")

    def render(self, template: str, channel: str, wanted_locale: str | None, context: dict[str, Any]) -> Rendered:
        """Render one channel of a template. Raises jinja2.UndefinedError on a missing variable."""
        if channel not in PARTS:
            raise ValueError(f"unknown channel {channel!r}")
        locale = self.locale_for(template, wanted_locale)
        module = self.env.get_template(f"{locale}/{template}.j2").make_module(context)
        title_part, body_part = PARTS[channel]
        title = _clean(str(getattr(module, title_part))) if title_part else ""
        body = _clean(str(getattr(module, body_part)))
        return Rendered(template, channel, locale, title, body)


def _clean(text: str) -> str:
    """Trim, drop trailing spaces on each line and collapse runs of blank lines left by empty blocks."""
    text = "\n".join(line.rstrip() for line in text.strip().splitlines())
    return _BLANK_LINES.sub("\n\n", text)
