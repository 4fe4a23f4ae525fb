"""Tollgate's 429s through the official OpenAI Python SDK, retrying as it does by default.

Usage: openai_retries.py BASE_URL API_KEY. Prints one JSON object with the statuses each
call saw on the wire and what the SDK returned or raised, for tests/sdk.rs to check.
"""
import json
import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
statuses = []
http_client = openai.DefaultHttpxClient(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
# The SDK's own defaults (2 retries, a 10-minute timeout), as users have them.
client = openai.OpenAI(base_url=base_url, api_key=api_key, http_client=http_client)
messages = [{"role": "user", "content": "Say hi"}]
out = {"sdk_version": openai.__version__}

client.chat.completions.create(model="m", messages=messages, max_tokens=5)
# The burst holds one request a second: the next is refused for under a second, then retried.
statuses.clear()
raw = client.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=5)
out["burst"] = {
    "statuses": list(statuses),
    "retries_taken": raw.retries_taken,
    "content": raw.parse().choices[0].message.content,
}

client.images.generate(prompt="a lighthouse", n=3)
# 2 of 5 images are left, and they come back one every 4.8 hours: no retry can help.
statuses.clear()
try:
    client.images.generate(prompt="a lighthouse", n=3)
    out["daily"] = {"statuses": list(statuses), "raised": None}
except openai.RateLimitError as e:
    body = e.body if isinstance(e.body, dict) else {}
    out["daily"] = {
        "statuses": list(statuses),
        "raised": type(e).__name__,
        "status": e.status_code,
        "code": e.code,
        "type": e.type,
        "message": body.get("message"),
    }

print(json.dumps(out))
