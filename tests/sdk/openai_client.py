"""Drives tollgate in Envoy with the official OpenAI Python SDK, as its users do.

Usage: openai_client.py BASE_URL API_KEY. Prints one JSON object with what the SDK
returned and raised, for tests/sdk.rs to check.
"""
import json
import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
# No retries: a 429 must reach the test as the SDK shows it.
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
messages = [{"role": "user", "content": "Say hi"}]
out = {"sdk_version": openai.__version__}

raw = client.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=50)
completion = raw.parse()
out["chat"] = {
    "content": completion.choices[0].message.content,
    "usage": completion.usage.model_dump(),
    "remaining_tokens": raw.headers.get("x-ratelimit-remaining-tokens"),
    "limit_tokens": raw.headers.get("x-ratelimit-limit-tokens"),
}

stream = client.chat.completions.create(
    model="m", messages=messages, max_tokens=50, stream=True, stream_options={"include_usage": True}
)
text, usage = "", None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
out["stream"] = {"content": text, "usage": usage}

images = client.images.generate(prompt="a lighthouse", n=3)
out["images"] = len(images.data)

try:
    client.images.generate(prompt="a lighthouse", n=3)
    out["limited"] = None
except openai.RateLimitError as e:
    out["limited"] = {"status": e.status_code, "message": str(e), "code": e.code}

print(json.dumps(out))
