"""Plain tables rendered as aligned text, Markdown, CSV or JSON records.

Counts stay exact integers in CSV/JSON; text and Markdown show parameters with thousands
separators and MACs with K/M/G units.
"""
import csv
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

KINDS = ("text", "int", "macs", "ratio", "ms")


def human(value: float) -> str:
    """``1234567`` -> ``"1.23M"``, ``55000000`` -> ``"55.0M"``: three significant digits and a
    K/M/G/T suffix (plain below 1000)."""
    if abs(value) < 999.5:
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    for scale, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "G")):
        digits = f"{value / scale:#.3g}"  # '#' keeps trailing zeros: 55.0, 1.00
        if "e" not in digits:  # 999.96K rounds to 1.00e+03: try the next unit
            return digits.rstrip(".") + suffix
    return f"{value / 1e12:#.3g}".rstrip(".") + "T"


@dataclass(frozen=True)
class Column:
    """A column: its heading, machine key (CSV/JSON) and kind (how text output formats it)."""

    title: str
    key: str
    kind: str = "text"


@dataclass
class Table:
    """A titled table; each row holds one raw value per column (``None`` = not measured, shown
    as ``-``; a str is shown as it is)."""

    title: str
    columns: Sequence[Column]
    rows: List[Sequence[object]] = field(default_factory=list)

    def _cell(self, value: object, kind: str) -> str:
        if value is None:
            return "-"
        if isinstance(value, str):
            return value  # already formatted
        if kind == "int":
            return f"{value:,}"
        if kind == "macs":
            return human(value)
        if kind == "ratio":
            return f"{value:.4f}"
        if kind == "ms":
            return f"{value:.2f}"
        return str(value)

    def _cells(self) -> List[List[str]]:
        return [[self._cell(v, c.kind) for v, c in zip(row, self.columns)] for row in self.rows]

    def to_text(self, footer: Sequence[str] = ()) -> str:
        """Aligned columns under the title, numbers right-aligned, then ``footer`` lines."""
        cells = self._cells()
        widths = [max([len(c.title)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]

        def line(values: Sequence[str]) -> str:
            parts = [
                v.ljust(w) if c.kind == "text" else v.rjust(w)
                for v, w, c in zip(values, widths, self.columns)
            ]
            return "  ".join(parts).rstrip()

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        out = [self.title, rule, line([c.title for c in self.columns]), rule]
        out += [line(r) for r in cells]
        out.append(rule)
        out += list(footer)
        return "\n".join(out)

    def to_markdown(self, footer: Sequence[str] = ()) -> str:
        """A GitHub Markdown table under a ``###`` heading."""
        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(c.title for c in self.columns) + " |")
        out.append("|" + "|".join("---" if c.kind == "text" else "---:" for c in self.columns) + "|")
        out += ["| " + " | ".join(r) + " |" for r in self._cells()]
        if footer:
            out += [""] + [f"- {line}" for line in footer]
        return "\n".join(out)

    def to_records(self) -> List[Dict[str, object]]:
        """Rows as dicts of raw values keyed by column key (exact ints)."""
        return [{c.key: v for c, v in zip(self.columns, row)} for row in self.rows]


def records_to_csv(records: Sequence[Dict[str, object]], keys: Optional[Sequence[str]] = None) -> str:
    """CSV text with a header row; ``keys`` orders the columns (default: the first record's)."""
    buffer = io.StringIO()
    fields = list(keys) if keys is not None else (list(records[0]) if records else [])
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if record.get(k) is None else record.get(k) for k in fields})
    return buffer.getvalue()
