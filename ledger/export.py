"""The ledger as CSV, one row per entry, streamed: a year of entries never sits in memory.

A view (the staff dashboard's download) picks the entries, e.g.
`csv_response(LedgerEntry.objects.between(start, end), "ledger-2026-12.csv")`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime

from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

from ledger.models import LedgerEntryQuerySet

COLUMNS = {
    "accepted_at": "accepted_at",
    "username": "user__username",
    "generation_id": "generation_pk",
    "task_id": "task_id",
    "resolution": "resolution",
    "credits": "credits",
    "money": "money",
    "currency": "currency",
    "outcome": "outcome",
    "reason_code": "outcome_code",
    "reason": "outcome_reason",
    "outcome_at": "outcome_at",
}
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A file for csv.writer whose write() hands the line back instead of keeping it."""

    def write(self, line: str) -> str:
        return line


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(entries: LedgerEntryQuerySet) -> Iterator[str]:
    """The header, then one line per entry, oldest first; times in ISO 8601 with their offset."""
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    rows = entries.order_by("accepted_at", "id").values_list(*COLUMNS.values())
    for row in rows.iterator(chunk_size=2000):
        yield writer.writerow([_cell(value) for value in row])


def csv_response(
    entries: LedgerEntryQuerySet, filename: str = "ledger.csv"
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(csv_lines(entries), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response
