"""``analysis.tables``: unit formatting, aligned text, Markdown, and exact integers in CSV/records."""
import csv
import io

import pytest

from torchblocks.analysis.tables import Column, Table, human, records_to_csv

# value -> text: three significant digits, K/M/G/T suffixes, a rounding that crosses a unit.
HUMAN = [
    (0, "0"), (999, "999"), (1000, "1.00K"), (1234567, "1.23M"), (55_000_000, "55.0M"),
    (999_960, "1.00M"), (8_430_000_000, "8.43G"), (2.5e13, "25.0T"), (0.1424, "0.142"),
]


@pytest.mark.parametrize("value, text", HUMAN)
def test_human_units(value, text):
    assert human(value) == text


COLUMNS = [Column("layer", "name"), Column("params", "params", "int"), Column("MACs", "macs", "macs"),
           Column("ratio", "ratio", "ratio"), Column("ms", "ms", "ms")]
ROWS = [["a", 1344, 4_110_000, 0.142437, None], ["bb", 12_845_568, 40_300_000_000, 0.0224, 3.14159]]


def test_text_table_is_aligned_with_numbers_right_aligned():
    text = Table("Title", COLUMNS, ROWS).to_text(footer=["note"])
    lines = text.splitlines()
    assert lines[0] == "Title" and lines[-1] == "note"
    assert lines[1] == lines[3] == lines[-2] == "-" * len(lines[2])
    assert lines[2] == "layer      params   MACs   ratio    ms"
    assert lines[4] == "a           1,344  4.11M  0.1424     -"
    assert lines[5] == "bb     12,845,568  40.3G  0.0224  3.14"


def test_markdown_table():
    md = Table("Title", COLUMNS, ROWS).to_markdown(footer=["note"])
    assert md.splitlines() == [
        "### Title", "", "| layer | params | MACs | ratio | ms |", "|---|---:|---:|---:|---:|",
        "| a | 1,344 | 4.11M | 0.1424 | - |", "| bb | 12,845,568 | 40.3G | 0.0224 | 3.14 |", "", "- note",
    ]


def test_records_and_csv_keep_exact_integers():
    records = Table("Title", COLUMNS, ROWS).to_records()
    assert records[1] == {"name": "bb", "params": 12_845_568, "macs": 40_300_000_000, "ratio": 0.0224, "ms": 3.14159}
    rows = list(csv.DictReader(io.StringIO(records_to_csv(records))))
    assert rows[0]["ms"] == "" and rows[1]["macs"] == "40300000000" and rows[1]["params"] == "12845568"
    assert records_to_csv(records, keys=["ms", "name"]).splitlines()[0] == "ms,name"
    assert records_to_csv([]) == "\n"
