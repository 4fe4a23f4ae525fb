// Tollgate's 429s through the official OpenAI Node SDK, retrying as it does by default.
//
// Usage: NODE_PATH=<node_modules with openai> node openai_retries.cjs BASE_URL API_KEY.
// Prints one JSON object with the statuses each call saw on the wire and what the SDK
// returned or threw, for tests/sdk.rs to check.
'use strict';
const OpenAI = require('openai');
const { VERSION } = require('openai/version');

const [baseURL, apiKey] = process.argv.slice(2);
const statuses = [];
// The SDK's own defaults (2 retries, a 10-minute timeout), as users have them; the fetch
// only notes each status.
const client = new OpenAI({
  baseURL,
  apiKey,
  fetch: async (url, init) => {
    const response = await fetch(url, init);
    statuses.push(response.status);
    return response;
  },
});
const messages = [{ role: 'user', content: 'Say hi' }];

async function main() {
  const out = { sdk_version: VERSION };
  await client.chat.completions.create({ model: 'm', messages, max_tokens: 5 });
  // The burst holds one request a second: the next is refused for under a second, then retried.
  statuses.length = 0;
  const chat = await client.chat.completions.create({ model: 'm', messages, max_tokens: 5 });
  out.burst = { statuses: [...statuses], content: chat.choices[0].message.content };

  await client.images.generate({ prompt: 'a lighthouse', n: 3 });
  // 2 of 5 images are left, and they come back one every 4.8 hours: no retry can help.
  statuses.length = 0;
  try {
    await client.images.generate({ prompt: 'a lighthouse', n: 3 });
    out.daily = { statuses: [...statuses], raised: null };
  } catch (e) {
    if (!(e instanceof OpenAI.RateLimitError)) throw e;
    out.daily = {
      statuses: [...statuses],
      raised: 'RateLimitError',
      status: e.status,
      code: e.code,
      type: e.type,
      message: e.error?.message,
    };
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
