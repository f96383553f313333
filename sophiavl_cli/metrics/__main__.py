"""`python -m sophiavl_cli.metrics > docs/metrics.md`: the metrics page, generated."""

from sophiavl_cli.metrics.registry import render_markdown

print(render_markdown(), end="")
