"""Every template renders in both locales and on every channel from the real context builders, and a
variable the context lacks is an error (StrictUndefined), never an empty sentence."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from jinja2 import UndefinedError
from jinja2.exceptions import SecurityError

from services.notifications.adapters.templates import LOCALES, PARTS, TEMPLATES, Renderer
from services.notifications.application.messages import BUILDERS, Formatter, MessageInput, build_context
from services.notifications.application.subjects import Subject
from services.notifications.domain.stages import STAGE_MAP, templates
from tests.unit.notifications.samples import RMA_ID, T0, at, story

FORMATTER = Formatter(ZoneInfo("Asia/Taipei"), "https://closeloop.example/shipping")
SUBJECT = Subject(subject_id=RMA_ID, subject_type="rma", customer_id="cust-1", email="ming@example.com",
                  phone="+886912345678", locale="zh-TW", customer_name="王小明", shipment_id="shp-1", carrier="tcat",
                  tracking_number="TC987654321", carrier_eta=at(75))
NO_NAME = Subject(**{**SUBJECT.__dict__, "customer_name": None, "carrier": None, "tracking_number": None})

# (sample event, template) for every notifying row of the stage map
CASES = [(name, rule.template) for (event_type, status), rule in STAGE_MAP.items() if rule.template
         for name in ([status] if status else [event_type])]


def test_every_template_of_the_stage_map_has_a_context_builder_and_a_file_in_every_locale() -> None:
    assert set(templates()) == set(BUILDERS)
    for template in templates():
        for locale in LOCALES:
            assert (TEMPLATES / locale / f"{template}.j2").is_file(), f"{locale}/{template}.j2 is missing"


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(("event_name", "template"), CASES)
@pytest.mark.parametrize("subject", [SUBJECT, NO_NAME], ids=["known", "sparse"])
def test_template_renders_every_channel(event_name: str, template: str, locale: str, subject: Subject) -> None:
    renderer = Renderer()
    event = story()[event_name]
    for eta in (at(80), None):
        context = build_context(template, MessageInput(event, subject, RMA_ID, eta, locale, at(200)), FORMATTER)
        for channel, (title_part, _) in PARTS.items():
            out = renderer.render(template, channel, locale, context)
            assert out.locale == locale
            assert out.body.strip(), f"{template}/{channel}/{locale}: empty body"
            assert "\n\n\n" not in out.body
            if title_part:
                assert out.title.strip() and "\n" not in out.title
            else:
                assert out.title == ""
            if channel == "sms":
                assert len(out.body) <= 200, f"{template}/{locale}: SMS of {len(out.body)} characters"


def test_label_message_carries_the_label_qr_payload_and_tracking_link() -> None:
    event = story()["ReturnLabelIssued"]
    for locale in LOCALES:
        context = build_context("return_label_issued", MessageInput(event, SUBJECT, RMA_ID, at(80), locale, T0),
                                FORMATTER)
        body = Renderer().render("return_label_issued", "email", locale, context).body
        assert "lbl-1" in body and "closeloop://labels/lbl-1?rma=rma-mouse-1" in body and "RMA-MOUSE-1" in body
        assert "https://closeloop.example/shipping/track/RT123456789TW" in body


def test_shipped_out_message_has_tracking_number_eta_and_link_in_the_locale() -> None:
    event = story()["RmaShippedOut"]
    zh = Renderer().render("rma_shipped_out", "email", "zh-TW", build_context(
        "rma_shipped_out", MessageInput(event, SUBJECT, RMA_ID, at(75), "zh-TW", T0), FORMATTER))
    assert "TC987654321" in zh.title and "/track/TC987654321" in zh.body
    assert "2025年8月4日 週一 13:00" in zh.body  # 05:00 UTC = 13:00 in Taipei
    en = Renderer().render("rma_shipped_out", "sms", "en", build_context(
        "rma_shipped_out", MessageInput(event, SUBJECT, RMA_ID, at(75), "en", T0), FORMATTER))
    assert "expected Mon 4 Aug 2025, 13:00" in en.body


def test_a_missing_variable_is_an_error_not_an_empty_string() -> None:
    event = story()["RmaOpened"]
    context = build_context("rma_opened", MessageInput(event, SUBJECT, RMA_ID, None, "en", T0), FORMATTER)
    del context["serial"]
    with pytest.raises(UndefinedError, match="serial"):
        Renderer().render("rma_opened", "email", "en", context)


def test_templates_run_sandboxed() -> None:
    with pytest.raises(SecurityError):
        Renderer().env.from_string("{{ x.__class__.__mro__[1].__subclasses__() }}").render(x="")


def test_locale_falls_back_to_the_default_then_english(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "zh-TW").mkdir()
    (tmp_path / "en" / "only_en.j2").write_text("{% set sms_body %}hi {{ name }}{% endset %}")
    (tmp_path / "zh-TW" / "both.j2").write_text("{% set sms_body %}你好{% endset %}")
    (tmp_path / "en" / "both.j2").write_text("{% set sms_body %}hello{% endset %}")
    renderer = Renderer(tmp_path, default_locale="zh-TW")
    assert renderer.locale_for("both", "en") == "en"
    assert renderer.locale_for("both", None) == "zh-TW"
    assert renderer.locale_for("both", "fr") == "zh-TW"  # an unknown locale: the default
    assert renderer.locale_for("only_en", "zh-TW") == "en"
    assert renderer.render("only_en", "sms", "zh-TW", {"name": "Ming"}).body == "hi Ming"


def test_durations_and_dates_in_both_locales() -> None:
    assert FORMATTER.duration(timedelta(days=1, hours=2, minutes=5), "zh-TW") == "1 天 2 小時 5 分鐘"
    assert FORMATTER.duration(timedelta(seconds=20), "en") == "under a minute"
    assert FORMATTER.when(T0, "zh-TW") == "2025年8月1日 週五 10:00"
    assert FORMATTER.when(T0, "en") == "Fri 1 Aug 2025, 10:00"
    assert FORMATTER.when(None, "en") == ""
