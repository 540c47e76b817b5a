"""Exit statuses of `poly`, as ``poly --help`` states them (the usual convention)."""

from __future__ import annotations

__all__ = ["CONFIGURATION_HINT", "FAILURE", "OK", "USAGE"]

OK = 0
"""Done; for `poly status`, every component is SERVING."""
FAILURE = 1
"""The command ran and failed: a component not SERVING, a database, broker or file unusable."""
USAGE = 2
"""The command never ran: a bad command line (argparse exits 2 too) or POLY_* setting."""

CONFIGURATION_HINT = "README.md, section Configuration, lists every POLY_* variable and its default"
