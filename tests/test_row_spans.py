"""Row spans: equal runs of a Parquet table's rows planned from footers, and read back."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artefacts import row_spans


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 40])
def test_plan_cuts_the_row_groups_into_equal_runs_in_order(partitions):
    """Brute force: number every row of the table; the plans, concatenated, are rows 0..n-1
    once each in order, and the runs' sizes differ by at most one."""
    rng = np.random.default_rng(partitions)
    groups = [(f"f{i // 3}", i % 3, int(r)) for i, r in enumerate(rng.integers(0, 9, 12))]
    start_of = dict(zip([(f, g) for f, g, _ in groups],
                        np.concatenate([[0], np.cumsum([r for *_, r in groups])])))
    plans = row_spans.plan_spans(groups, partitions)
    rows_of = {(f, g): r for f, g, r in groups}
    runs = [[start_of[s.file, s.row_group] + i for s in plan for i in range(s.start, s.stop)]
            for plan in plans]
    for plan in plans:
        assert all(0 <= s.start < s.stop <= rows_of[s.file, s.row_group] for s in plan)
    n = sum(rows_of.values())
    assert len(plans) == partitions and sum(runs, []) == list(range(n))
    assert max(map(len, runs)) - min(map(len, runs)) <= 1


def test_a_task_reads_exactly_its_rows(tmp_path):
    t = pa.table({c: pa.array(np.arange(23) * (i + 1)) for i, c in enumerate(["a", "b"])})
    pq.write_table(t.slice(0, 10), tmp_path / "x.parquet", row_group_size=4)
    pq.write_table(t.slice(10), tmp_path / "y.parquet", row_group_size=5)
    groups = row_spans.row_group_rows(str(tmp_path / "x.parquet")) + \
        row_spans.row_group_rows(str(tmp_path / "y.parquet"))
    assert [r for *_, r in groups] == [4, 4, 2, 5, 5, 3]
    got = []
    for spans in row_spans.plan_spans(groups, 3):
        batches = list(row_spans.read_spans(spans, 3, columns=["a", "b"]))
        assert all(b.num_rows <= 3 for b in batches)
        got += pa.Table.from_batches(batches).to_pylist()
    assert got == t.to_pylist()


def test_a_span_beyond_its_row_group_names_the_file(tmp_path):
    t = pa.table({"a": pa.array(np.arange(10))})
    pq.write_table(t, tmp_path / "x.parquet", row_group_size=5)
    (plan,) = row_spans.plan_spans(row_spans.row_group_rows(str(tmp_path / "x.parquet")), 1)
    pq.write_table(t.slice(0, 7), tmp_path / "x.parquet", row_group_size=5)  # replaced
    with pytest.raises(ValueError, match="x.parquet: row group 1 has 2 rows"):
        list(row_spans.read_spans(plan, 4, columns=["a"]))
