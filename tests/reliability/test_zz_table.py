"""The table of every bad-input outcome observed in this session (runs last; ``-s`` prints it):
kinds tried, runs, clear errors, counted skips, fine, tracebacks (0), silent garbage (0)."""

from corpus import OUTCOMES, summarise


def test_zz_table(capsys):
    table = summarise(OUTCOMES)
    with capsys.disabled():
        print("\nbad-input corpus:", ", ".join(f"{k} {v}" for k, v in table.items()))
    assert table["tracebacks"] == 0 and table["silent garbage"] == 0
