import logging

from ikto.log import LogfmtFormatter, fields


def test_reserved_names_renamed_and_values_quoted():
    rec = logging.makeLogRecord({"msg": "peer joined", "levelname": "INFO", "levelno": 20})
    for k, v in fields(name="node 2", msg="x", endpoint="198.18.0.1:51820", skip=None).items():
        setattr(rec, k, v)
    line = LogfmtFormatter().format(rec)
    assert 'msg="peer joined"' in line and 'node="node 2"' in line and "msg_=x" in line
    assert "endpoint=198.18.0.1:51820" in line and "skip" not in line
