"""Runs ../shared/tools/loadgen.py unchanged, and also writes the raw latencies it summarises.

    python3 tests/bench/loadgen_raw.py RAW.json LOADGEN [loadgen's arguments...]

loadgen reports percentiles only; a CDF needs every sample. Its `summary_ms` is called once
for enqueue latencies and once for enqueue -> webhook latencies; this wrapper records both
lists (in ms) into RAW.json as {"enqueue_ms": [...], "e2e_ms": [...]}.
"""

import importlib.util
import json
import sys


def main():
    raw_path, loadgen_path, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    spec = importlib.util.spec_from_file_location("loadgen", loadgen_path)
    loadgen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loadgen)
    recorded = []
    summarise = loadgen.summary_ms

    def recording(seconds):
        recorded.append([s * 1000.0 for s in seconds])
        return summarise(seconds)

    loadgen.summary_ms = recording
    sys.argv = [loadgen_path] + args
    status = loadgen.main()
    names = ["enqueue_ms", "e2e_ms"]
    with open(raw_path, "w") as out:
        json.dump(dict(zip(names, recorded)), out)
    return status


if __name__ == "__main__":
    sys.exit(main())
