"""The gradcheck report table (STYLE.md section 10): one line per parameter tensor and engine.

    case       engine    tensor          checked  max_abs  max_rel  worst    analytic   numeric    verdict
    ntm.small  manual    controller.W_x  1024     3.1e-11  8.2e-08  (17, 3)  -0.41720   -0.41720   ok

`checked` counts coordinates in full mode, directions in fast mode ("3 dir"), and says "rerun" when
a fast check failed and the tensor was checked again in full mode. For "manual~autodiff" rows the
analytic column is the manual engine's value and the numeric column the autodiff engine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass
class ReportRow:
    """One line of the report: one parameter tensor seen by one engine.

    engine is "manual" or "autodiff" (compared with finite differences), or "manual~autodiff"
    (the two engines compared with each other; analytic is then the manual value and numeric the
    autodiff one). checked counts coordinates in full mode and directions in fast mode; worst is
    an index tuple, or "u<k>" for the k-th random direction. verdict is "ok", "FAIL" or "kink"
    (the objective is not smooth within eps of the parameters there, see kinks).
    """
    case: str
    engine: str
    tensor: str
    checked: int
    max_abs: float
    max_rel: float
    worst: tuple | str | None
    analytic: float
    numeric: float
    verdict: str
    mode: str = "full"                              # "full", "fast" or "rerun" (full after fast failed)
    failures: int = 0                               # entries out of tolerance
    kinks: list = field(default_factory=list)       # index tuples where the objective is non-smooth
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


COLUMNS = ("case", "engine", "tensor", "checked", "max_abs", "max_rel", "worst", "analytic", "numeric", "verdict")
MIN_WIDTHS = {"case": 4, "engine": 15, "tensor": 6, "checked": 10, "max_abs": 7, "max_rel": 7, "worst": 8,
              "analytic": 10, "numeric": 10, "verdict": 7}
RIGHT_ALIGNED = {"max_abs", "max_rel", "analytic", "numeric"}


def format_value(value: float) -> str:
    """Gradient values: fixed point where readable (STYLE's -0.41720), scientific when tiny or huge."""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.5f}"
    return f"{value:.3e}"


def format_worst(worst) -> str:
    if worst is None:
        return "-"
    if isinstance(worst, tuple):
        return "(" + ", ".join(str(i) for i in worst) + ")"
    return str(worst)


def row_cells(row: ReportRow) -> dict[str, str]:
    checked = {"fast": f"{row.checked} dir", "rerun": f"{row.checked} rerun"}.get(row.mode, str(row.checked))
    return {"case": row.case, "engine": row.engine, "tensor": row.tensor, "checked": checked,
            "max_abs": f"{row.max_abs:.1e}", "max_rel": f"{row.max_rel:.1e}", "worst": format_worst(row.worst),
            "analytic": format_value(row.analytic), "numeric": format_value(row.numeric), "verdict": row.verdict}


def column_widths(rows: Iterable[ReportRow] = (), case_names: Sequence[str] = (),
                  tensor_names: Sequence[str] = (), worst_labels: Sequence[str] = ()) -> dict[str, int]:
    """Widths that fit the given rows, and also names known before the rows exist (so a run can
    print each case's lines as soon as they are ready under one header)."""
    widths = {c: max(MIN_WIDTHS[c], len(c)) for c in COLUMNS}
    for key, values in (("case", case_names), ("tensor", tensor_names), ("worst", worst_labels)):
        widths[key] = max([widths[key]] + [len(v) for v in values])
    for row in rows:
        for key, text in row_cells(row).items():
            widths[key] = max(widths[key], len(text))
    return widths


def format_header(widths: dict[str, int]) -> str:
    return "  ".join(c.rjust(widths[c]) if c in RIGHT_ALIGNED else c.ljust(widths[c]) for c in COLUMNS).rstrip()


def format_row(row: ReportRow, widths: dict[str, int]) -> str:
    cells = row_cells(row)
    return "  ".join(cells[c].rjust(widths[c]) if c in RIGHT_ALIGNED else cells[c].ljust(widths[c])
                     for c in COLUMNS).rstrip()


def format_table(rows: Sequence[ReportRow], header: bool = True) -> str:
    """The whole table as one string (header line first)."""
    widths = column_widths(rows)
    lines = [format_header(widths)] if header else []
    return "\n".join(lines + [format_row(r, widths) for r in rows])


def format_notes(rows: Sequence[ReportRow], max_kinks: int = 5) -> str:
    """Details under the table for rows that are not ok: how many entries failed, where the
    objective is non-smooth, and what fast mode saw before its full rerun."""
    lines = []
    for row in rows:
        if row.ok and not row.note:
            continue
        parts = []
        if row.failures:
            unit = "directions" if row.mode == "fast" else "entries"
            parts.append(f"{row.failures} of {row.checked} {unit} out of tolerance")
        if row.kinks:
            shown = ", ".join(format_worst(k) for k in row.kinks[:max_kinks])
            more = f" and {len(row.kinks) - max_kinks} more" if len(row.kinks) > max_kinks else ""
            parts.append(f"non-smooth within eps at {shown}{more} (reseed the case away from ties)")
        if row.note:
            parts.append(row.note)
        lines.append(f"  {row.case} {row.engine} {row.tensor}: " + "; ".join(parts))
    return "\n".join(lines)
