"""Words of the report that come from the articles or the configs, not from computation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vaescope.core.config import Config
from vaescope.reports.html import Paragraph, Section


@dataclass(frozen=True)
class Reference:
    key: str
    citation: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


REFERENCES: tuple[Reference, ...] = (
    Reference("kl", 'A. Asperti, "About the Kullback-Leibler divergence in Variational Autoencoders" (2018).'),
    Reference("sparsity", 'A. Asperti, "Sparsity in Variational Autoencoders" (arXiv:1812.07238, 2019).'),
    Reference("stationary", 'A. Asperti, "A stationary condition for Variational Autoencoders" (2019).'),
    Reference("burda", 'Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders" (2015): '
                       "the active-unit criterion Var(mu) < 0.01."),
    Reference("kingma", 'D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes" (2014), Appendix B: '
                        "the closed-form KL."),
)


def references_section() -> Section:
    return Section("references", "References", [Paragraph(ref.citation) for ref in REFERENCES])


def architecture(config: Config, image_shape: tuple[int, ...]) -> str:
    """The layer widths of a dense model, e.g. ``784-256-64-32-16``; a short description otherwise."""
    m = config.model
    if m.kind == "dense" and not m.factory:
        return "-".join(str(w) for w in (math.prod(image_shape), *m.hidden, m.latent_dim))
    if m.kind == "conv" and not m.factory:
        return f"convolutional, channels {list(m.conv_channels)}, dense {m.conv_dense}, latent {m.latent_dim}"
    return m.factory or m.kind
