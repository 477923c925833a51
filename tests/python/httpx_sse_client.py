"""The stream read by a third-party client: Python's httpx-sse. Every event must be a named one
whose data is JSON; an unnamed `message` event (httpx-sse yields one for a block holding only
`retry:`) is a failure, since `json.loads` on every event is what an app does.

Env: GATEWAY_URL, TOKEN. Prints one JSON line {counts, problems}; exit 0 once it saw connected,
2 notifications and a heartbeat.
"""
import json
import os
import sys

import httpx
from httpx_sse import connect_sse

url = os.environ["GATEWAY_URL"] + "/api/notifications/stream"
headers = {"Authorization": "Bearer " + os.environ["TOKEN"]}
counts: dict[str, int] = {}
problems: list[str] = []
done = False
with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
    with connect_sse(client, "GET", url, headers=headers) as source:
        for sse in source.iter_sse():
            counts[sse.event] = counts.get(sse.event, 0) + 1
            if sse.event == "message":
                problems.append(f"an unnamed message event: {sse.data!r} (retry={sse.retry})")
            try:
                json.loads(sse.data)
            except ValueError:
                problems.append(f"{sse.event}: data is not JSON: {sse.data!r}")
            if not sse.id:
                problems.append(f"{sse.event}: no id")
            if counts.get("connected", 0) >= 1 and counts.get("notification", 0) >= 2 and counts.get("heartbeat", 0) >= 1:
                done = True
                break
print(json.dumps({"counts": counts, "problems": problems}))
sys.exit(0 if done else 1)
