"""``fm9g prepare``: raw files to the JSONL records that ``fm9g index`` reads.

:mod:`fm9g.prepare.prepare` runs an adapter over a raw file, splits the records into train and
test exactly as the seed's ``train_test_split`` does and writes ``prepare_report.json``;
:mod:`fm9g.prepare.raw_input` reads the raw input as a stream (JSON arrays, JSON Lines,
concatenated JSON values, text lines) without loading the whole file.
"""
