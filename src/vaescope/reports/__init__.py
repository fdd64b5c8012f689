"""Measured data in, words and figures out: tables, report sections, figures, HTML and Markdown."""
