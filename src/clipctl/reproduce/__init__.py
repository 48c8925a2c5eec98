"""``clipctl reproduce``: each claim of arXiv 2509.26114 as one command with a verdict (docs/reproduction.md).

``claims`` (the registry), ``verdict`` (the rule and the power computation,
pure), ``runner`` (plan, run through ``clipctl.sweep``, decide) and ``report``
(report.md, claims.json, figures).
"""

from clipctl.reproduce.claims import CLAIMS, SCALES, get_claim
from clipctl.reproduce.runner import plan_table, reproduce

__all__ = ["CLAIMS", "SCALES", "get_claim", "plan_table", "reproduce"]
