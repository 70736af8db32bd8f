"""Inline masking: regulated values in result rows replaced on the wire (see docs/masking.md).

Modules: ``detectors`` (semantic types found in text), ``strategies`` (what a
masked string becomes), ``typed`` (maskers for one column's wire values, text
or binary, valid for the column's type), ``lineage`` (which source columns
each result column is computed from, by the PostgreSQL parser), ``catalog``
(relation OIDs and columns of a target), ``plan`` (per-result decisions),
``rows`` (DataRow and COPY rewriting) and ``errors`` (values echoed in
ErrorResponse and NoticeResponse).
"""
