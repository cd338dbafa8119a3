#!/usr/bin/env python3
# Generates kpl_vectors.json (next to this script): KPL aggregated records built by the
# reference Python aggregator, for the de-aggregation tests in backend-kinesis/src/kpl.rs.
#
# Pinned versions: aws-kinesis-agg==1.2.3, six==1.17.0 (aws-kinesis-agg imports it but does
# not declare it), protobuf==7.36.2; Python 3.11.
#
# Run from the workspace root, with a throwaway venv outside the repository:
#
#   python3 -m venv /tmp/kplvenv
#   /tmp/kplvenv/bin/pip install aws-kinesis-agg==1.2.3 six==1.17.0 protobuf==7.36.2
#   /tmp/kplvenv/bin/python backend-kinesis/tests/data/make_kpl_vectors.py
#
# The output is deterministic (seeded PRNG; protobuf serialisation of these messages is
# canonical), so re-running it must leave kpl_vectors.json unchanged.
#
# Each case: {"name", "expect": "aggregate" | "plain", "aggregate_hex": the Kinesis record's
# data as hex, "records": [{"partition_key", "explicit_hash_key" (string or null),
# "data_hex"}]}. The expected records are the inputs handed to the aggregator, not the output
# of the package's de-aggregator (which invents explicit hash keys for records that have none).
# "plain" cases are data a de-aggregator must deliver untouched; their "records" is empty.

import json
import os
import random

import aws_kinesis_agg
from aws_kinesis_agg.aggregator import AggRecord, RecordAggregator

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kpl_vectors.json")

rng = random.Random(0x4B504C)  # "KPL"


def aggregate(records):
    """Aggregates (partition_key, data, explicit_hash_key) into exactly one Kinesis record."""
    agg = RecordAggregator()
    for pk, data, ehk in records:
        full = agg.add_user_record(pk, data, ehk)
        assert full is None, "vector case does not fit in one aggregated record"
    _pk, _ehk, blob = agg.clear_and_get().get_contents()
    assert blob[:4] == aws_kinesis_agg.MAGIC
    return blob


def expected(records):
    return [
        {"partition_key": pk, "explicit_hash_key": ehk, "data_hex": data.hex()}
        for pk, data, ehk in records
    ]


def aggregate_case(name, records):
    return {
        "name": name,
        "expect": "aggregate",
        "aggregate_hex": aggregate(records).hex(),
        "records": expected(records),
    }


def plain_case(name, blob):
    return {"name": name, "expect": "plain", "aggregate_hex": blob.hex(), "records": []}


cases = []

single = [("pk-1", b"hello, kinesis", None)]
cases.append(aggregate_case("single_record", single))

cases.append(
    aggregate_case(
        "many_records_shared_partition_keys",
        [("user-%d" % (i % 7), b"event %d:" % i + rng.randbytes(rng.randrange(0, 24)), None) for i in range(50)],
    )
)

# More than 127 distinct keys, so key-table indices need two-byte varints.
cases.append(
    aggregate_case("many_distinct_partition_keys", [("k%d" % i, bytes([i % 256]), None) for i in range(200)])
)

EHKS = ["0", "170141183460469231731687303715884105728", "340282366920938463463374607431768211455"]
cases.append(
    aggregate_case(
        "explicit_hash_keys_mixed",
        [
            ("order-%d" % (i % 4), b"line %d" % i, EHKS[i % 3] if i % 2 == 0 else None)
            for i in range(12)
        ],
    )
)

cases.append(
    aggregate_case(
        "explicit_hash_key_on_later_records_only",
        [("a", b"1", None), ("b", b"2", None), ("a", b"3", EHKS[2]), ("c", b"4", EHKS[1])],
    )
)

cases.append(aggregate_case("empty_data", [("k", b"", None), ("k", b"x", None), ("k2", b"", EHKS[0])]))

cases.append(
    aggregate_case(
        "binary_all_byte_values",
        [("bin", bytes(range(256)), None), ("bin", bytes(reversed(range(256))), None)],
    )
)

cases.append(
    aggregate_case(
        "unicode_partition_keys",
        [
            ("ключ", b"cyrillic", None),
            ("键", b"cjk", None),
            ("\U0001F511-key", b"astral plane", EHKS[1]),
            ("caf\u00e9", b"precomposed", None),
            ("cafe\u0301", b"decomposed (a different key)", None),
            ("ключ", b"cyrillic again", None),
        ],
    )
)

# Big enough for three-byte length varints; 80 KB rather than 100 so the JSON (which holds it
# twice, as hex) stays under 400 KB.
big = rng.randbytes(80_000)
cases.append(aggregate_case("large_record", [("big", big, None), ("small", b"after the big one", None)]))

# The reference encoder's output for an aggregate holding no records: magic + MD5 of nothing.
_pk, _ehk, empty_blob = AggRecord().get_contents()
cases.append({"name": "zero_records", "expect": "aggregate", "aggregate_hex": empty_blob.hex(), "records": []})

# Negative cases: data a de-aggregator must pass through as a plain record.
good = bytearray(aggregate(single))
body_len = len(good) - 4 - aws_kinesis_agg.DIGEST_SIZE
flipped = bytearray(good)
flipped[4 + body_len // 2] ^= 0x01
cases.append(plain_case("md5_mismatch_body_byte_flipped", bytes(flipped)))
cases.append(plain_case("digest_truncated_by_one_byte", bytes(good[:-1])))
cases.append(plain_case("magic_then_too_short", aws_kinesis_agg.MAGIC + bytes(range(15))))
cases.append(plain_case("magic_only", aws_kinesis_agg.MAGIC))
cases.append(plain_case("no_magic", b'{"not": "an aggregate"}'))
cases.append(plain_case("empty_data_record", b""))

with open(OUT, "w", encoding="utf-8") as f:
    json.dump(cases, f, indent=1, ensure_ascii=False)
    f.write("\n")

print("wrote %d cases, %d bytes, to %s" % (len(cases), os.path.getsize(OUT), OUT))
