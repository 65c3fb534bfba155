// Event streams of every framing the SSE specification allows, and some it does not, sent byte
// for byte by the mock: through the pool fetch (both transports) and the gateway the caller gets
// exactly the bytes the server sent, and the usage tap counts what a client reads from them
// (the SDKs' reading of the specification) or nothing, never numbers of its own making. Memory
// stays bounded for an event of 20 MB and a line of hundreds of megabytes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import * as lib from "../index.mjs";
import { seedPool, useMock } from "./helpers/pool-env.mjs";
import { throughPool } from "./helpers/raw-api.mjs";

const KEY = "test-gateway-key-0123456789abcdef";
const mock = useMock({ env: { OAUTH_POOL_GATEWAY_KEY: KEY } });
const READER = fileURLToPath(new URL("./helpers/sse-reader.mjs", import.meta.url));

const event = (name, data) => `event: ${name}\ndata: ${JSON.stringify({ type: name, ...data })}\n\n`;
const start = (usage) => event("message_start", { message: { id: "msg_1", content: [], usage } });
const delta = (usage) => event("message_delta", { delta: { stop_reason: "end_turn" }, usage });
const text = event("content_block_delta", { index: 0, delta: { type: "text_delta", text: "h\u00e9llo \u20ac\u{1d11e} \r\n usage" } });
const STREAM =
  start({ input_tokens: 120, output_tokens: 1, cache_creation_input_tokens: 30, cache_read_input_tokens: 400 }) + text + delta({ output_tokens: 57 });
const FULL = { requests: 1, input: 120, output: 57, cacheRead: 400, cacheWrite: 30 };
const counts = (input, output) => ({ requests: 1, input, output, cacheRead: 0, cacheWrite: 0 });
const SSE = { "content-type": "text/event-stream; charset=utf-8" };

// [name, body, expected usage (null: not counted), headers]
const CASES = [
  ["LF", STREAM, FULL],
  ["CRLF", STREAM.replaceAll("\n", "\r\n"), FULL],
  ["CR alone", STREAM.replaceAll("\n", "\r"), FULL],
  ["CR, CRLF and LF in one stream", STREAM.replace("\n\n", "\r\r").replace("\n", "\r\n").replace("\n\n", "\r\n\n"), FULL],
  ["a BOM first", `\u{feff}${STREAM}`, FULL],
  ["data: without the space, comments, id and retry", `: hello\nretry: 3000\n${STREAM.replaceAll("data: ", "id: 1\ndata:")}`, FULL],
  ["the JSON over several data lines", STREAM.replaceAll('"usage":', '\ndata: "usage":'), FULL],
  ["a key written with an escape", STREAM.replace('"usage"', '"\\u0075sage"'), FULL],
  [
    "counts written as whole floats",
    start({ input_tokens: 120 }).replace("120", "1.2e2") + delta({ output_tokens: 57 }).replace("57", "57.0"),
    counts(120, 57),
  ],
  // A client reads none of these as usage: nothing of theirs is counted.
  [
    "two JSON objects in one event",
    start({ input_tokens: 10 }) + delta({ output_tokens: 5 }).replace("\n\n", `\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n`),
    counts(10, 0),
  ],
  ["an event the stream ends before the blank line of", start({ input_tokens: 10 }) + delta({ output_tokens: 57 }).slice(0, -1), counts(10, 0)],
  [
    "usage in a ping, an error and a nameless event",
    `${start({ input_tokens: 10 })}${delta({ output_tokens: 1 }).replace("message_delta\n", "ping\n")}${event("error", { usage: { output_tokens: 2 } })}data: {"type":"message_delta","usage":{"output_tokens":3}}\n\n`,
    counts(10, 0),
  ],
  // "usage" in it: a tap that looks for the word before parsing still parses this one.
  [
    "a message that is an array",
    `${event("message_start", { message: [{ input_tokens: 999 }], note: "usage" })}${delta({ output_tokens: 57 })}`,
    counts(0, 57),
  ],
  [
    "hostile numbers",
    start({ input_tokens: -5, output_tokens: 1.5, cache_read_input_tokens: "9", cache_creation_input_tokens: 1e308 }) +
      delta({ output_tokens: 2 ** 53 + 2, input_tokens: null }),
    counts(0, 0),
  ],
  ["message_start twice, message_delta first", delta({ output_tokens: 3 }) + start({ input_tokens: 10 }) + start({ input_tokens: 20 }), counts(20, 3)],
  // What the type says: upper case is an event stream; a body without a type is not read.
  ["an upper-case content type", STREAM, FULL, { "content-type": "TEXT/EVENT-STREAM" }],
  ["no content type", STREAM, null, {}],
  ["a length given (read whole)", STREAM, FULL, { ...SSE, "content-length": String(Buffer.byteLength(STREAM)) }],
];

const requestBody = (model) => JSON.stringify({ model, max_tokens: 8, stream: true, messages: [{ role: "user", content: "hi" }] });

async function bytesOf(res) {
  const parts = [];
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return Buffer.concat(parts);
    parts.push(Buffer.from(value));
  }
}

/** A way to reach the mock through the pool: `send(model)` resolves the Response. */
async function via(kind, path) {
  const pool = await throughPool(kind, path, { key: KEY });
  return {
    send: (model) =>
      pool.send({ method: "POST", headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" }, body: requestBody(model) }),
    close: pool.close,
  };
}

for (const kind of ["native", "runtime", "gateway"]) {
  test(`${kind}: every framing passes byte for byte, whole and one byte per write, and is counted as a client reads it`, async () => {
    const email = `sse-${kind}@x.test`;
    const path = await seedPool(mock, [email]);
    const pool = await via(kind, path);
    const expected = {};
    try {
      for (const [i, [name, body, usage, headers = SSE]] of CASES.entries()) {
        for (const chunkSize of [0, 1]) {
          const model = `claude-sse-${i}-${chunkSize}`;
          const sent = Buffer.from(body);
          mock.script(email, [{ raw: sent, headers, chunkSize }]);
          const res = await pool.send(model);
          assert.equal(res.status, 200, name);
          const got = await bytesOf(res);
          assert.ok(got.equals(sent), `${name} (writes of ${chunkSize || "all"}): ${JSON.stringify(got.toString())}`);
          expected[model] = [name, usage];
        }
      }
    } finally {
      await pool.close();
    }
    await lib.flushPool(path);
    const byModel = (await lib.poolStatus(path)).accounts[0].usage?.today?.byModel ?? {};
    // All cases at once: a failure names every one that differs.
    const wrong = Object.entries(expected)
      .filter(([model, [, usage]]) => !isDeepStrictEqual(byModel[model] ?? null, usage))
      .map(([model, [name, usage]]) => `${name} (${model}): counted ${JSON.stringify(byModel[model] ?? null)}, a client reads ${JSON.stringify(usage)}`);
    assert.deepEqual(wrong, []);
  });
}

for (const kind of ["native", "runtime", "gateway"]) {
  test(`${kind}: an event of 20 MB and a line of 384 MB without an end pass whole, in bounded memory`, { timeout: 120_000 }, async () => {
    const email = `sse-big-${kind}@x.test`;
    const path = await seedPool(mock, [email]);
    const mib = Buffer.alloc(1 << 20, "x");
    const bodies = {
      // Too big to read: its usage is not counted; the event after it is.
      event: [
        Buffer.from('event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":5}},"pad":"'),
        ...Array(20).fill(mib),
        Buffer.from(`"}\n\n${delta({ output_tokens: 7 })}`),
      ],
      line: [Buffer.from(`${start({ input_tokens: 5 })}event: message_delta\ndata: `), ...Array(384).fill(mib)],
    };
    for (const [name, pieces] of Object.entries(bodies)) {
      const hash = createHash("sha256");
      for (const p of pieces) hash.update(p);
      const size = pieces.reduce((n, p) => n + p.length, 0);
      mock.script(email, [{ raw: pieces, headers: SSE }]);
      const out = await read(kind, path, `claude-big-${name}`);
      assert.equal(out.size, size, name);
      assert.equal(out.sha256, hash.digest("hex"), name);
      if (name === "line") {
        // Half the line: a tap that kept it would hold all of it (the runtime's own buffers and
        // uncollected chunks stay well under: 40-90 MB here).
        const grown = out.peakRss - out.rssBefore;
        assert.ok(grown < size / 2, `${Math.round(grown / 2 ** 20)} MB more at the peak for a line of ${Math.round(size / 2 ** 20)} MB`);
      }
    }
    await lib.flushPool(path);
    const byModel = (await lib.poolStatus(path)).accounts[0].usage.today.byModel;
    assert.deepEqual(byModel["claude-big-event"], counts(0, 7));
    assert.deepEqual(byModel["claude-big-line"], counts(5, 0));
  });
}

/** Reads one answer in a process of its own (its peak RSS is the pool's and the reader's only). */
function read(kind, path, model) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [READER, kind, path, model, `${mock.url}/v1/messages`], { env: process.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`the reader exited ${code}: ${err}`));
      resolve(JSON.parse(out.trim().split("\n").at(-1)));
    });
  });
}
