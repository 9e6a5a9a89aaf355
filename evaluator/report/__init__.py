"""``abgate report``: one experiment as a self-contained HTML page and a PDF of the same figures.

Loading → series (``evaluator.results``, which draws nothing) → ``figures`` (matplotlib) →
``render`` (text pages, HTML, PDF: ``write_report``); ``tables`` writes the numbers as text for
the pages of both. The command itself stands in ``evaluator.cli``.
"""

from evaluator.report.render import write_report

__all__ = ["write_report"]
