"""NIST SP 800-53 evidence reports built from the running config and the audit trail.

Why a package of its own: the report is read by auditors, not operators, and
its JSON shape (``pgwarden-evidence/1``) is a contract that the OSCAL converter
(``oscal.py``) and outside tools consume. Keeping catalog, collection, status
rules and rendering apart lets each be checked on its own:

* ``catalog.py``   the controls pgwarden supports and what each requires (our paraphrase)
* ``collect.py``   one streaming pass over the period's records: counters and bounded samples
* ``config_facts.py`` the config settings several controls cite, phrased once
* ``controls.py``  how each control is implemented (from the config) and its status rules
* ``report.py``    ``build_report(config, start, end)``: store, verification, collection, controls
* ``html.py``      the self-contained, printable HTML rendering
* ``oscal.py``     the OSCAL assessment-results rendering (``to_oscal(report)``)
"""

from __future__ import annotations

__all__ = ["FORMAT"]

#: The ``format`` key of the JSON report; bump the suffix on any incompatible change.
FORMAT = "pgwarden-evidence/1"
