"""The articles' experiments, one small module each. Every experiment takes models, data and
settings and returns plain data (dataclasses / dicts of numbers and arrays); figures and the
report are built from that data elsewhere."""
