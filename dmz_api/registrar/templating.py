"""The onboarding page's jinja2 environments: one per language, messages translated when compiled.

The templates' messages are constant msgids, and an environment serves one language, so
``{{ _('…') }}`` and ``{% trans %}…{% endtrans %}`` are translated once, when a template is
compiled, instead of on every render: each such call becomes what newstyle gettext returns,
``Markup(translation) % {variables}``. Without variables that is a constant jinja2 folds into
the template's text; with variables the ``%`` is left for render time, where ``Markup``
escapes each value as before. Plural and context forms (``ngettext``, ``pgettext``) and
anything that is not a constant msgid are left to the gettext installed on the environment.

The templates are package data: they are read and compiled once (``auto_reload`` off, no
modification check per render); a changed template needs a restart.
"""

from __future__ import annotations

import gettext

import jinja2
from jinja2 import nodes
from jinja2.visitor import NodeTransformer

GETTEXT_NAMES = frozenset({"_", "gettext"})


class _TranslateMessages(NodeTransformer):
    def __init__(self, environment: jinja2.Environment, tr: gettext.NullTranslations) -> None:
        self.environment = environment
        self.tr = tr

    def visit_Call(self, node: nodes.Call) -> nodes.Node:
        self.generic_visit(node)  # in place: a message's variables may be messages too
        callee = node.node
        if not (
            isinstance(callee, nodes.Name)
            and callee.name in GETTEXT_NAMES
            and callee.ctx == "load"
            and len(node.args) == 1
            and isinstance(node.args[0], nodes.Const)
            and isinstance(node.args[0].value, str)
            and node.dyn_args is None
            and node.dyn_kwargs is None
        ):
            return node
        # jinja2.ext's newstyle gettext: Markup(gettext(msgid)) % variables, always formatted.
        translated = nodes.Mod(
            nodes.MarkSafeIfAutoescape(nodes.Const(self.tr.gettext(node.args[0].value))),
            nodes.Dict(
                [nodes.Pair(nodes.Const(keyword.key), keyword.value) for keyword in node.kwargs]
            ),
        )
        translated.set_lineno(node.lineno)
        translated.set_environment(self.environment)
        return translated


class TranslatedEnvironment(jinja2.Environment):
    """A jinja2 environment for one language's translations, applied when templates compile."""

    def __init__(self, tr: gettext.NullTranslations, loader: jinja2.BaseLoader) -> None:
        super().__init__(
            loader=loader,
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            extensions=["jinja2.ext.i18n"],
            auto_reload=False,
        )
        self.translations = tr
        # Line breaks inside {% trans %} are layout, not part of the message.
        self.policies["ext.i18n.trimmed"] = True
        # What is not translated when compiled (plurals, computed msgids) still is at render.
        self.install_gettext_translations(tr, newstyle=True)  # type: ignore[attr-defined]

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        translated: nodes.Template = _TranslateMessages(self, self.translations).visit(tree)
        return translated
