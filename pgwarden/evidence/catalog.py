"""The NIST SP 800-53 (rev. 5) controls pgwarden produces evidence for.

The ``requirement`` texts are short paraphrases written for this project, not
NIST's wording: they say what an assessor looks for, so a reader of the report
can judge the evidence without the catalog at hand. Only controls where the
gateway itself does something observable are listed; what stays the
organisation's job is in docs/nist-800-53.md.

``trail`` says whether the control's status is judged from the audit trail's
records (then a failed verification means it cannot be "satisfied", because
the records it rests on may have been altered) or from the configuration alone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Control", "CONTROLS", "control_id"]


@dataclass(frozen=True, slots=True)
class Control:
    label: str  # human form: AU-9(3)
    title: str
    requirement: str
    trail: bool = True  # status rests on records of the trail

    @property
    def id(self) -> str:
        return control_id(self.label)

    @property
    def family(self) -> str:
        return self.label.split("-", 1)[0]


def control_id(label: str) -> str:
    """OSCAL's control id: ``AU-9(3)`` -> ``au-9.3``, ``AC-2`` -> ``ac-2``."""
    base, _, enh = label.partition("(")
    out = base.strip().lower()
    return f"{out}.{enh.rstrip(')')}" if enh else out


CONTROLS: tuple[Control, ...] = (
    Control("AU-2", "Event Logging",
            "Decide which events the system must log (logins, data access, changes, security-relevant "
            "decisions) and make sure the system actually logs them."),
    Control("AU-3", "Content of Audit Records",
            "Each record must say what happened, when, where, from which source, with what outcome, and "
            "which user or process was involved."),
    Control("AU-6", "Audit Record Review, Analysis, and Reporting",
            "Records must be reviewed and analysed regularly for signs of inappropriate activity, and findings "
            "reported to the people who act on them."),
    Control("AU-8", "Time Stamps",
            "Records carry time stamps from the system clock, in a form that maps to UTC, with enough precision "
            "to order events."),
    Control("AU-9(3)", "Protection of Audit Information | Cryptographic Protection",
            "Cryptography protects the integrity of audit records, so that any change, removal or insertion "
            "can be detected."),
    Control("AU-10", "Non-repudiation",
            "Provide irrefutable evidence that a specific individual performed an action, so they cannot "
            "credibly deny it later."),
    Control("AU-11", "Audit Record Retention",
            "Keep audit records for an organisation-defined period to support investigations, and dispose of "
            "them in a controlled way afterwards.", trail=False),
    Control("AU-12", "Audit Record Generation",
            "The system components themselves generate the records for the chosen events, without relying on "
            "the cooperation of the user being audited."),
    Control("AU-14", "Session Audit",
            "Be able to capture and later review the content of a user's session: what was sent and what came "
            "back."),
    Control("AC-2", "Account Management",
            "Accounts are defined, authorised, monitored and removed through a managed process; use of accounts "
            "is observable."),
    Control("AC-3", "Access Enforcement",
            "Every access to protected resources is checked against approved authorisations before it happens."),
    Control("AC-4", "Information Flow Enforcement",
            "Control where information may flow, e.g. keep sensitive values from leaving the protected system "
            "in clear, and block channels that move data out."),
    Control("AC-6", "Least Privilege",
            "Users and processes get only the access their tasks need.", trail=False),
    Control("AC-6(9)", "Least Privilege | Log Use of Privileged Functions",
            "The execution of privileged functions (schema and permission changes, administrative actions) "
            "is logged."),
    Control("AC-12", "Session Termination",
            "Sessions end automatically when a defined condition is met (credential expiry, maximum duration, "
            "revocation, administrator action)."),
    Control("IA-2", "Identification and Authentication (Organizational Users)",
            "Users are uniquely identified and authenticated before they get access, and the outcome of each "
            "attempt is known."),
    Control("IA-9", "Service Identification and Authentication",
            "Services the system talks to (databases, identity providers) are identified and authenticated "
            "before data is exchanged.", trail=False),
    Control("SI-4", "System Monitoring",
            "Monitor the system for attacks and unauthorised use, and alert the right people when indicators "
            "appear."),
    Control("SI-10", "Information Input Validation",
            "Check inputs for validity (syntax, allowed content) before acting on them; refuse what cannot be "
            "understood."),
    Control("SC-8", "Transmission Confidentiality and Integrity",
            "Data in transit is protected against disclosure and modification, on every network hop."),
    Control("CM-5", "Access Restrictions for Change",
            "Changes to the system (schema, permissions, configuration) are restricted to authorised people "
            "and are traceable."),
)
