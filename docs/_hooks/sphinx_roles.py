"""An mkdocs hook: the docstrings' Sphinx roles (:func:`name`, :class:`Name`, ...) as plain code.

Markdown renders ``:func:`as_latent_model``` as ":func:" followed by the code span; this drops the
role and keeps the code span, on the pages that mkdocstrings generates from the docstrings.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return ROLE.sub("", html)
