"""The use cases' feature SQL, written once in DuckDB's dialect, transpiled to Spark SQL.

sqlglot does most of it (GROUP BY ALL, FILTER, QUALIFY, named windows, casts, intervals,
`unnest` -> `explode`). Where DuckDB and Spark spell the same value differently and sqlglot
keeps the spelling, a rewrite here keeps the value:

1. `list(x ORDER BY k1 DESC, k2)` -> `collect_list` of structs sorted by a comparator, then the
   values (Spark's `collect_list` has no ORDER BY); a literal slice `[a:b]` after it -> `slice`.
2. `dayofweek(t)`: DuckDB counts Sunday as 0, Spark as 1.
3. `median` and `quantile_cont` -> `percentile` (exact, linearly interpolated, as DuckDB's):
   Spark refuses `median` and `percentile_cont` over an ordered window frame.
4. `epoch(t)` -> seconds as a double (`unix_micros / 1e6`), as DuckDB's; sqlglot's
   `unix_timestamp` truncates to whole seconds.
5. `timezone(zone, naive)` -> `to_utc_timestamp(naive, zone)`: DuckDB reads the naive time in
   the zone and returns an instant, which is what `to_utc_timestamp` does (session zone UTC).

An idiom neither engine nor this module can carry raises `SparkSqlError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import sqlglot
from sqlglot import exp

from feastflow.errors import FeastflowError


class SparkSqlError(FeastflowError):
    """A feature SQL file that cannot be run on Spark (what and where in the message)."""


def to_spark_sql(duckdb_sql: str, source: str | Path = "<sql>") -> str:
    """One DuckDB-dialect query as Spark SQL with the same values (see the module docstring)."""
    try:
        tree = sqlglot.parse_one(duckdb_sql, read="duckdb")
    except sqlglot.errors.ParseError as e:
        raise SparkSqlError(f"{source}: not parseable as DuckDB SQL: {e}") from e
    try:
        tree = tree.transform(_rewrite)
    except ValueError as e:
        raise SparkSqlError(f"{source}: {e}") from e
    return tree.sql(dialect="spark")


def _rewrite(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Bracket) and isinstance(node.this, exp.ArrayAgg):
        return _sliced(_ordered_list(node.this), node.expressions)
    if isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order):
        return _ordered_list(node)
    if isinstance(node, exp.DayOfWeek):
        return exp.paren(exp.Sub(this=node, expression=exp.Literal.number(1)), copy=False)
    if isinstance(node, exp.Median):
        return exp.Anonymous(this="percentile", expressions=[node.this, exp.Literal.number(0.5)])
    if isinstance(node, exp.PercentileCont) and node.expression is not None:
        return exp.Anonymous(this="percentile", expressions=[node.this, node.expression])
    if isinstance(node, exp.TimeToUnix):
        return sqlglot.parse_one("unix_micros(x) / 1000000D", read="spark").transform(
            lambda n: node.this.copy() if isinstance(n, exp.Column) and n.name == "x" else n)
    if isinstance(node, exp.Anonymous) and node.name.lower() == "timezone":
        zone, moment = node.expressions
        return exp.Anonymous(this="to_utc_timestamp", expressions=[moment, zone])
    return node


def _ordered_list(agg: exp.ArrayAgg) -> exp.Expression:
    """`list(x ORDER BY k...)` as Spark: sort collected structs (v, k0, k1...) by a comparator
    that keeps DuckDB's order (NULLS LAST either way), then keep v."""
    order = agg.this
    if not isinstance(order, exp.Order):
        return agg
    keys = order.expressions
    fields = [exp.alias_(order.this.copy(), "v")] + [
        exp.alias_(k.this.copy(), f"k{i}") for i, k in enumerate(keys)]
    collected = exp.Anonymous(this="collect_list", expressions=[
        exp.Anonymous(this="struct", expressions=fields)])
    cases = []
    for i, key in enumerate(keys):
        first, second = ("-1", "1") if not key.args.get("desc") else ("1", "-1")
        cases += [
            f"WHEN l.k{i} IS NULL AND r.k{i} IS NOT NULL THEN 1",
            f"WHEN l.k{i} IS NOT NULL AND r.k{i} IS NULL THEN -1",
            f"WHEN l.k{i} < r.k{i} THEN {first}",
            f"WHEN l.k{i} > r.k{i} THEN {second}",
        ]
    comparator = f"(l, r) -> CASE {' '.join(cases)} ELSE 0 END"
    sorted_sql = f"transform(array_sort(__collected__, {comparator}), e -> e.v)"
    return sqlglot.parse_one(sorted_sql, read="spark").transform(
        lambda n: collected if isinstance(n, exp.Column) and n.name == "__collected__" else n)


def _sliced(array: exp.Expression, index: list[exp.Expression]) -> exp.Expression:
    """DuckDB's 1-based inclusive `[a:b]` on a list as Spark's `slice(list, a, b - a + 1)`."""
    if len(index) != 1 or not isinstance(index[0], exp.Slice):
        raise ValueError("only a literal slice [a:b] of an ordered list() is supported on Spark")
    start, end = index[0].this, index[0].expression
    if not (isinstance(start, exp.Literal) and isinstance(end, exp.Literal)):
        raise ValueError("list slices need literal bounds [a:b] to run on Spark")
    first, last = int(start.this), int(end.this)
    return exp.Anonymous(this="slice", expressions=[
        array, exp.Literal.number(first), exp.Literal.number(last - first + 1)])
