#!/usr/bin/env python3
"""Writes a gateway revocation state file (the feed's JSON-lines format)
with N jti revocations for ISS: first the jti values listed in LIST (the
peer-bench revoked list), then synthetic ones up to N.

    make-state.py OUT N ISS [LIST]
"""
import json, sys, time, uuid

out, n, iss = sys.argv[1], int(sys.argv[2]), sys.argv[3]
listed = []
if len(sys.argv) > 4:
    with open(sys.argv[4]) as f:
        listed = [l.strip() for l in f if l.strip()]
now = int(time.time())
with open(out, "w") as f:
    f.write(json.dumps({"type": "snapshot", "cursor": "bench-0"}) + "\n")
    for i in range(n):
        jti = listed[i] if i < len(listed) else str(uuid.UUID(int=i))
        f.write(json.dumps({"op": "put", "id": i + 1, "issuer": iss, "kind": "jti", "value": jti,
                            "reason": "logout", "created_at": now, "expires_at": now + 86400}) + "\n")
    f.write(json.dumps({"type": "end", "cursor": "bench-0"}) + "\n")
