"""A summary shows itself as its table (`repr(summarize(model))`), as at the prompt."""
import npmobilenet
from npmobilenet.analysis.summary import summarize


def test_summary_repr_is_the_table():
    summary = summarize(npmobilenet.build("mobilenet_v2", width=0.35, num_classes=10), 96)
    text = repr(summary)
    assert text == str(summary) == summary.format_table()
    lines = text.splitlines()
    assert lines[0] == "mobilenet_v2, width 0.35, input 96x96x3, batch 1"
    assert len(lines) > len(summary.rows) + 4 and "Row(" not in text
    assert f"total: {summary.params:,} parameters" in text
    # one column layout for every layer row
    rows = lines[3:3 + len(summary.rows)]
    assert len({len(line) for line in rows}) == 1
