"""`csv`: the `table` plugin under its first name, for pipelines written before there was one.

Every key it took keeps its meaning (path, target, task, features, delimiter and the split's
fractions and seed), and `table`'s others are there too; see `plexa_data.table`.

    data: {plugin: csv, params: {path: data/iris.csv, target: species}}
"""

from __future__ import annotations

from plexa_data.table import Table


class CSV(Table):
    """`table` by its old name (its Config is Table.Config)."""
