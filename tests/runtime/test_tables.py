"""The one text-table printer (convengine.runtime.tables) that every command's table goes through."""

from convengine.runtime.tables import format_table


def test_columns_are_as_wide_as_their_widest_cell_and_trailing_spaces_go():
    table = format_table(("name", "n", "why"), [("a", 1, ""), ("longer", 22, "a reason")])
    assert table.splitlines() == [
        "name    n   why",
        "a       1",
        "longer  22  a reason",
    ]


def test_right_aligned_columns_rules_and_footer():
    table = format_table(("layer", "MACs"), [("conv1", "1,000"), ("fc", "10")], right=(1,),
                         footer=[("total", "1,010")], rules=True)
    assert table.splitlines() == [
        "layer   MACs",
        "------------",
        "conv1  1,000",
        "fc        10",
        "------------",
        "total  1,010",
    ]


def test_rows_may_be_shorter_than_the_header():
    assert format_table(("a", "b", "c"), [("x",)]).splitlines() == ["a  b  c", "x"]
