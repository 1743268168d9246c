"""Tests of boltzformer.evaluate.records: sample records through JSON, and the report rebuilt from them."""

from __future__ import annotations

import json

from boltzformer.evaluate import SampleRecord, summarize


def test_records_round_trip_through_dicts(report):
    r = report.compute()
    again = [SampleRecord.from_dict(json.loads(json.dumps(d))) for d in r["samples"]]
    assert again == report.records
    assert summarize(again) == r

