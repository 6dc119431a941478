"""The page's templates, translated when compiled: the same HTML as gettext at render time,
escaping included, and no catalogue look-up left in a render."""

from __future__ import annotations

import copy
import gettext
from collections import defaultdict
from typing import Any

import jinja2
import pytest

from dmz_api.registrar import i18n
from dmz_api.registrar.templating import TranslatedEnvironment

TEMPLATES = jinja2.PackageLoader("dmz_api.registrar", "templates")
HOSTILE = "<b>\"x\" & 'y'</b> %(server)s %%"


def runtime_environment(
    tr: gettext.NullTranslations, loader: jinja2.BaseLoader
) -> jinja2.Environment:
    """What the page used before: jinja2's newstyle gettext, called on every render."""
    env = jinja2.Environment(
        loader=loader,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(tr, newstyle=True)  # type: ignore[attr-defined]
    return env


def contexts(lang: str) -> list[tuple[str, dict[str, Any]]]:
    common: dict[str, Any] = {
        "page_title": "Guest <access>",
        "server_name": "dmz.test&co",
        "css_url": "/register/static/registrar.css?v=1&x",
        "lang": lang,
        "languages": i18n.LANGUAGES,
        "switch_url": lambda code: f"/register?token=a&b&lang={code}",
    }
    labels = {
        "username": "User<name>",
        "password": "Pass",
        "password_confirm": "Again",
        "display_name": "Name",
    }
    form = {
        "token": HOSTILE,
        "csrf_token": HOSTILE,
        "action": "/register",
        "labels": labels,
        "username": HOSTILE,
        "display_name": HOSTILE,
        "password_min_length": 12,
        "expires": "1 May <2026>",
    }
    return [
        ("form.html", {**common, **form, "errors": defaultdict(str), "sponsor": HOSTILE}),
        (
            "form.html",
            {
                **common,
                **form,
                "errors": defaultdict(str, {field: f"bad {HOSTILE}" for field in labels}),
                "sponsor": "",
            },
        ),
        (
            "message.html",
            {
                **common,
                "heading": HOSTILE,
                "paragraphs": [HOSTILE, "second"],
                "retry_url": "/register?token=t&lang=de",
                "sign_in_url": HOSTILE,
            },
        ),
        (
            "message.html",
            {
                **common,
                "switch_url": None,
                "heading": "h",
                "paragraphs": [],
                "retry_url": None,
                "sign_in_url": None,
            },
        ),
        (
            "success.html",
            {**common, "user_id": HOSTILE, "localpart": HOSTILE, "homeserver_url": HOSTILE},
        ),
    ]


@pytest.mark.parametrize("lang", list(i18n.LANGUAGES))
def test_every_page_is_the_html_gettext_renders(lang: str) -> None:
    tr = i18n.translations(lang)
    compiled = TranslatedEnvironment(tr, TEMPLATES)
    runtime = runtime_environment(tr, TEMPLATES)
    for name, context in contexts(lang):
        # Copies: a defaultdict of errors gains the keys the template reads.
        html = compiled.get_template(name).render(**copy.deepcopy(context))
        assert html == runtime.get_template(name).render(**copy.deepcopy(context)), name
        if HOSTILE in context.values():
            assert "&lt;b&gt;&#34;x&#34; &amp; &#39;y&#39;&lt;/b&gt;" in html
            assert "<b>" not in html


class Shouting(gettext.NullTranslations):
    """Translations that add markup, an entity and ``%%``; count their look-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def gettext(self, message: str) -> str:
        self.lookups += 1
        return f"<em>{message}</em> &amp; 100%%"


def test_markup_placeholders_and_percent_signs_are_kept_as_gettext_keeps_them() -> None:
    loader = jinja2.DictLoader(
        {
            "page.html": (
                "{{ _('plain') }}|{{ _('with %(v)s', v=value) }}|"
                "{{ _('outer %(t)s', t=_('inner')) }}|"
                "{% trans %}block {{ value }}{% endtrans %}|{% trans %}static{% endtrans %}|"
                "{{ _(computed) }}|"
                "{% trans count=n %}one{% pluralize %}{{ count }} many{% endtrans %}"
            )
        }
    )
    context = {"value": "<script>&", "computed": "a msgid in a variable", "n": 2}
    compiled = TranslatedEnvironment(Shouting(), loader).get_template("page.html")
    runtime = runtime_environment(Shouting(), loader).get_template("page.html")
    html = compiled.render(context)
    assert html == runtime.render(context)
    assert html.count("&lt;script&gt;&amp;") == 2 and "<script>" not in html
    assert "<em>a msgid in a variable</em>" in html  # translated at render time


class CountingLoader(jinja2.BaseLoader):
    """The page's templates; counts how often jinja2 asks whether a file changed."""

    def __init__(self) -> None:
        self.checks = 0

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Any]:
        source, filename, _ = TEMPLATES.get_source(environment, template)

        def uptodate() -> bool:
            self.checks += 1
            return True

        return source, filename, uptodate


def test_a_render_looks_up_no_message_and_reads_no_file() -> None:
    tr, loader = Shouting(), CountingLoader()
    env = TranslatedEnvironment(tr, loader)
    name, context = contexts("en")[0]
    env.get_template(name).render(**copy.deepcopy(context))
    compiled = tr.lookups
    assert compiled > 10
    for _ in range(3):
        env.get_template(name).render(**copy.deepcopy(context))
    assert tr.lookups == compiled
    assert loader.checks == 0
