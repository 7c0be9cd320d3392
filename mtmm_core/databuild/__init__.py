"""Tables in (docs/tables.md): a CSV, Parquet or pandas table with a schema, built into a data folder.

``build_data(table, schema, out)`` builds the folder, learning the preprocessing from the training
rows; ``RowsDataset(table, preprocessing)`` preprocesses new raw rows the same way, in memory.
pandas (and pyarrow for Parquet), Pillow and soundfile are imported only when a table, an image or
an audio file needs them (extras ``tables``, ``images``, ``audio``).
"""

from mtmm_core.databuild.build import TABLE_SUFFIXES, build_data, encode_rows, is_table, read_table
from mtmm_core.databuild.rows import RowsDataset, run_preprocessing, save_run_preprocessing, table_dataset
from mtmm_core.databuild.schema import SchemaError, parse_schema

__all__ = ["TABLE_SUFFIXES", "RowsDataset", "SchemaError", "build_data", "encode_rows", "is_table", "parse_schema",
           "read_table", "run_preprocessing", "save_run_preprocessing", "table_dataset"]
