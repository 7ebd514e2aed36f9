"""Convert the IBM AR sample to contract events: python scripts/ibm_ar_to_events.py CSV OUT.jsonl"""

import sys
from pathlib import Path

from pipeline.ibm_ar import convert, write_jsonl

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/ibm_ar_to_events.py WA_Fn-UseC_-Accounts-Receivable.csv OUT.jsonl")
    events = convert(Path(sys.argv[1]))
    write_jsonl(events, Path(sys.argv[2]))
    print(f"wrote {len(events)} events to {sys.argv[2]}")
