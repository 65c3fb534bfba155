// Self-test of the shared Anthropic mock (__tests__/helpers/mock-anthropic.mjs), using only the
// runtime's own fetch. Runs under `node --test` and `bun test`.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { startMockAnthropic, rateLimitHeaders, callbackUrlFromPaste, parseSSE, readAll, DEFAULT_REDIRECT_URI } from "./helpers/mock-anthropic.mjs";

const MOCK_PATH = fileURLToPath(new URL("./helpers/mock-anthropic.mjs", import.meta.url));
const CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

function pkce() {
  const verifier = randomBytes(32).toString("base64url");
  const challenge = createHash("sha256").update(verifier).digest("base64url");
  const state = randomBytes(16).toString("hex");
  const url = new URL("https://claude.ai/oauth/authorize");
  for (const [k, v] of Object.entries({
    code: "true",
    client_id: CLIENT_ID,
    response_type: "code",
    redirect_uri: DEFAULT_REDIRECT_URI,
    scope: "org:create_api_key user:profile user:inference",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state,
  }))
    url.searchParams.set(k, v);
  return { verifier, state, url: url.toString() };
}

async function postJson(url, body, headers = {}) {
  const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, headers: res.headers, text, json };
}

const exchange = (mock, paste, verifier, extra = {}) => {
  const [code, state] = paste.split("#");
  return postJson(mock.tokenUrl, {
    grant_type: "authorization_code",
    code,
    state,
    client_id: CLIENT_ID,
    redirect_uri: DEFAULT_REDIRECT_URI,
    code_verifier: verifier,
    ...extra,
  });
};
const refresh = (mock, token) => postJson(mock.tokenUrl, { grant_type: "refresh_token", refresh_token: token, client_id: CLIENT_ID });
const bearer = (access) => ({ authorization: `Bearer ${access}`, "anthropic-beta": "oauth-2025-04-20" });
const message = (mock, headers, body = {}, path = "/v1/messages?beta=true", init = {}) =>
  fetch(mock.url + path, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", ...headers },
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: "hi" }], ...body }),
    ...init,
  });

describe("mock-anthropic", () => {
  let mock;
  before(async () => {
    mock = await startMockAnthropic({ port: 0 });
  });
  after(async () => {
    await mock.close();
  });

  test("listens on loopback with a token URL", () => {
    assert.match(mock.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(mock.tokenUrl, `${mock.url}/v1/oauth/token`);
  });

  test("approve + exchange (code single-use, PKCE and state checked)", async () => {
    const { verifier, state, url } = pkce();
    const paste = mock.approve(url, "a@example.com");
    assert.equal(paste.split("#")[1], state);
    const cb = new URL(callbackUrlFromPaste(paste));
    assert.equal(cb.origin + cb.pathname, DEFAULT_REDIRECT_URI);
    assert.equal(`${cb.searchParams.get("code")}#${cb.searchParams.get("state")}`, paste);

    const bad = await exchange(mock, paste, "wrong-verifier");
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.json, { error: "invalid_grant", error_description: "Invalid 'code' in request." });
    assert.equal((await exchange(mock, paste, verifier, { state: undefined })).status, 400, "state is required");

    const ok = await exchange(mock, paste, verifier);
    assert.equal(ok.status, 200);
    assert.equal(ok.json.token_type, "Bearer");
    assert.match(ok.json.access_token, /^sk-ant-oat01-mock-/);
    assert.match(ok.json.refresh_token, /^sk-ant-ort01-mock-/);
    assert.equal(ok.json.expires_in, 28800);
    assert.equal(ok.json.account.email_address, "a@example.com");
    assert.equal((await exchange(mock, paste, verifier)).status, 400, "a code is single-use");

    const res = await message(mock, bearer(ok.json.access_token));
    assert.equal(res.status, 200);
    assert.equal((await res.json()).content[0].text, "Hello from a@example.com");
  });

  test("includeEmail:false omits account; the profile endpoint gives the email", async () => {
    const { verifier, url } = pkce();
    const ok = await exchange(mock, mock.approve(url, "noemail@example.com", { includeEmail: false, expiresIn: 60 }), verifier);
    assert.equal(ok.status, 200);
    assert.equal(ok.json.account, undefined);
    assert.equal(ok.json.expires_in, 60);
    const prof = await fetch(`${mock.url}/api/oauth/profile`, { headers: { authorization: `Bearer ${ok.json.access_token}` } });
    assert.equal(prof.status, 200);
    const body = await prof.json();
    assert.equal(body.account.email, "noemail@example.com");
    assert.equal(body.account.email_address, "noemail@example.com");
    assert.ok(body.organization.uuid);
    const bad = await fetch(`${mock.url}/api/oauth/profile`, { headers: { authorization: "Bearer nope" } });
    assert.equal(bad.status, 401);
    await bad.text();
  });

  test("refresh rotates: new pair, old access token dead, generation++", async () => {
    const t0 = mock.addAccount("rot@example.com");
    assert.ok(t0.expires > Date.now() + 28000 * 1000);
    const r1 = await refresh(mock, t0.refresh);
    assert.equal(r1.status, 200);
    assert.notEqual(r1.json.access_token, t0.access);
    assert.notEqual(r1.json.refresh_token, t0.refresh);
    assert.equal((await message(mock, bearer(t0.access))).status, 401, "old access token revoked");
    assert.equal((await message(mock, bearer(r1.json.access_token))).status, 200);
    const fam = mock.stats().perFamily["rot@example.com"];
    assert.equal(fam.generation, 1);
    assert.equal(fam.refreshCalls, 1);
    assert.deepEqual(fam.perGeneration, { 0: 1 });
    assert.deepEqual(mock.tokens("rot@example.com").refresh, r1.json.refresh_token);
  });

  test("reuse of a consumed refresh token revokes the whole family", async () => {
    const before = mock.stats().reuse;
    const t0 = mock.addAccount("reuse@example.com");
    const r1 = await refresh(mock, t0.refresh);
    const again = await refresh(mock, t0.refresh);
    assert.equal(again.status, 400);
    assert.deepEqual(again.json, { error: "invalid_grant", error_description: "Refresh token not found or invalid" });
    const s = mock.stats();
    assert.equal(s.reuse, before + 1);
    assert.equal(s.perFamily["reuse@example.com"].revoked, true);
    assert.equal((await refresh(mock, r1.json.refresh_token)).status, 400, "current refresh token dies too");
    assert.equal((await message(mock, bearer(r1.json.access_token))).status, 401, "current access token dies too");
    assert.equal((await refresh(mock, "fake-refresh-unknown")).status, 400, "unknown token");
  });

  test("reuse grace window returns the current tokens instead of revoking", async () => {
    const m = await startMockAnthropic({ reuseGraceMs: 5000 });
    try {
      const t0 = m.addAccount("grace@example.com");
      const r1 = await refresh(m, t0.refresh);
      const again = await refresh(m, t0.refresh);
      assert.equal(again.status, 200);
      assert.equal(again.json.refresh_token, r1.json.refresh_token);
      assert.equal(m.stats().graceHits, 1);
      assert.equal(m.stats().perFamily["grace@example.com"].revoked, false);
    } finally {
      await m.close();
    }
  });

  describe("token fault modes", () => {
    test("delayMs", async () => {
      const t = mock.addAccount("f-delay@example.com");
      mock.setTokenMode({ delayMs: 150 });
      const start = Date.now();
      assert.equal((await refresh(mock, t.refresh)).status, 200);
      assert.ok(Date.now() - start >= 140);
    });

    test("429 with retry-after, then normal; nothing rotated", async () => {
      const t = mock.addAccount("f-429@example.com");
      mock.setTokenMode({ status: 429, retryAfter: 30 });
      const r = await refresh(mock, t.refresh);
      assert.equal(r.status, 429);
      assert.equal(r.headers.get("retry-after"), "30");
      assert.equal(r.json.error.type, "rate_limit_error");
      assert.equal(mock.stats().perFamily["f-429@example.com"].generation, 0);
      assert.equal((await refresh(mock, t.refresh)).status, 200, "the same token still works");
    });

    test("500, repeated with { mode, times }", async () => {
      const t = mock.addAccount("f-500@example.com");
      mock.setTokenMode({ mode: { status: 500 }, times: 2 });
      assert.equal((await refresh(mock, t.refresh)).status, 500);
      assert.equal((await refresh(mock, t.refresh)).status, 500);
      assert.equal((await refresh(mock, t.refresh)).status, 200);
    });

    test("html (200 and 502) and a queue of modes", async () => {
      const t = mock.addAccount("f-html@example.com");
      mock.setTokenMode([{ html: true }, { html: true, status: 502 }]);
      const a = await refresh(mock, t.refresh);
      assert.equal(a.status, 200);
      assert.match(a.headers.get("content-type"), /text\/html/);
      assert.match(a.text, /<html/);
      const b = await refresh(mock, t.refresh);
      assert.equal(b.status, 502);
      assert.match(b.headers.get("content-type"), /text\/html/);
      assert.equal(mock.stats().perFamily["f-html@example.com"].generation, 0);
    });

    test("reset: socket destroyed before rotating", async () => {
      const t = mock.addAccount("f-reset@example.com");
      mock.setTokenMode({ reset: true });
      await assert.rejects(refresh(mock, t.refresh));
      assert.equal(mock.stats().perFamily["f-reset@example.com"].generation, 0);
      assert.equal((await refresh(mock, t.refresh)).status, 200, "R0 was never consumed");
    });

    test("commitThenDrop: rotated server-side, answer lost; retrying R0 is reuse", async () => {
      const t = mock.addAccount("f-commit@example.com");
      mock.setTokenMode({ commitThenDrop: true });
      await assert.rejects(refresh(mock, t.refresh));
      const fam = mock.stats().perFamily["f-commit@example.com"];
      assert.equal(fam.generation, 1);
      const retry = await refresh(mock, t.refresh);
      assert.equal(retry.status, 400);
      assert.equal(mock.stats().perFamily["f-commit@example.com"].revoked, true);
    });

    test("hang: never answers; grant filter leaves other grants alone", async () => {
      const t = mock.addAccount("f-hang@example.com");
      mock.setTokenMode({ hang: true, grant: "refresh_token" });
      await assert.rejects(
        fetch(mock.tokenUrl, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ grant_type: "refresh_token", refresh_token: t.refresh, client_id: CLIENT_ID }),
          signal: AbortSignal.timeout(300),
        }),
      );
      assert.equal(mock.stats().pendingTokenModes, 0);
      assert.equal((await refresh(mock, t.refresh)).status, 200);
    });

    test("counters", () => {
      const s = mock.stats();
      assert.ok(s.tokenCalls >= s.refreshCalls + s.exchangeCalls);
      assert.ok(s.refreshCalls > 10);
      assert.ok(s.exchangeCalls >= 4);
      assert.ok(mock.tokenRequests.every((r) => r.headers["content-type"] === "application/json"));
    });
  });

  describe("/v1/messages", () => {
    test("scripted 429 with rate-limit headers, then the default answer with quota headers", async () => {
      const t = mock.addAccount("rl@example.com");
      const reset = Math.floor(Date.now() / 1000) + 7999;
      mock.script("rl@example.com", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 30, fiveHourReset: reset }) }]);
      const r = await message(mock, bearer(t.access));
      assert.equal(r.status, 429);
      assert.equal(r.headers.get("retry-after"), "30");
      assert.equal(r.headers.get("anthropic-ratelimit-unified-status"), "rejected");
      assert.equal(r.headers.get("anthropic-ratelimit-unified-5h-status"), "rejected");
      assert.equal(r.headers.get("anthropic-ratelimit-unified-5h-reset"), String(reset));
      assert.equal(r.headers.get("anthropic-ratelimit-unified-reset"), String(reset));
      assert.equal(r.headers.get("anthropic-ratelimit-unified-representative-claim"), "five_hour");
      assert.equal((await r.json()).error.type, "rate_limit_error");

      mock.setUtilization("rl@example.com", { fiveHour: 0.93 });
      const ok = await message(mock, bearer(t.access));
      assert.equal(ok.status, 200);
      assert.equal(ok.headers.get("anthropic-ratelimit-unified-status"), "allowed");
      assert.equal(ok.headers.get("anthropic-ratelimit-unified-5h-utilization"), "0.93");
      assert.equal(ok.headers.get("anthropic-ratelimit-unified-7d-utilization"), "0.2");
      assert.ok(Number(ok.headers.get("anthropic-ratelimit-unified-7d-reset")) > Date.now() / 1000 + 80000);
      assert.match(ok.headers.get("request-id"), /^req_/);
      const body = await ok.json();
      assert.equal(body.type, "message");
      assert.equal(body.stop_reason, "end_turn");
      assert.equal(body.model, "claude-sonnet-4-5");
      assert.ok(body.usage.input_tokens > 0 && body.usage.output_tokens > 0);
    });

    test("rateLimitHeaders variants", () => {
      const only = rateLimitHeaders({ only5h: true });
      assert.ok(Object.keys(only).every((k) => k.startsWith("anthropic-ratelimit-unified-5h-")));
      const both = rateLimitHeaders({ rejected: "both", fiveHourReset: 100, sevenDayReset: 200, retryAfter: 5 });
      assert.equal(both["anthropic-ratelimit-unified-reset"], "200");
      assert.equal(both["anthropic-ratelimit-unified-7d-status"], "rejected");
      assert.equal(both["retry-after"], "5");
    });

    test("529 and 401 default bodies; scriptAll serves whoever asks", async () => {
      const t = mock.addAccount("err@example.com");
      mock.scriptAll([
        { status: 529 },
        { status: 401 },
        { status: 400, body: { type: "error", error: { type: "invalid_request_error", message: "prompt is too long" } } },
      ]);
      const a = await message(mock, bearer(t.access));
      assert.equal(a.status, 529);
      assert.equal((await a.json()).error.type, "overloaded_error");
      const b = await message(mock, bearer(t.access));
      assert.equal(b.status, 401);
      assert.equal((await b.json()).error.type, "authentication_error");
      const c = await message(mock, bearer(t.access));
      assert.equal(c.status, 400);
      assert.equal((await c.json()).error.message, "prompt is too long");
    });

    test("default SSE stream parsed into events", async () => {
      const t = mock.addAccount("sse@example.com");
      const r = await message(mock, bearer(t.access), { stream: true });
      assert.equal(r.status, 200);
      assert.match(r.headers.get("content-type"), /^text\/event-stream/);
      assert.equal(r.headers.get("anthropic-ratelimit-unified-status"), "allowed");
      const events = parseSSE(await r.text());
      const names = events.map((e) => e.event).filter((n) => n !== "ping");
      assert.equal(names[0], "message_start");
      assert.equal(names[1], "content_block_start");
      assert.deepEqual(names.slice(-3), ["content_block_stop", "message_delta", "message_stop"]);
      const deltas = events.filter((e) => e.event === "content_block_delta");
      assert.ok(deltas.length >= 3);
      assert.equal(deltas.map((e) => e.data.delta.text).join(""), "Hello from sse@example.com");
      const md = events.find((e) => e.event === "message_delta").data;
      assert.equal(md.delta.stop_reason, "end_turn");
      assert.ok(md.usage.output_tokens > 0);
      assert.ok(events.every((e) => e.data.type === e.event));
    });

    test("chunkSize re-cuts the bytes but the stream stays identical", async () => {
      const t = mock.addAccount("chunk@example.com");
      mock.script("chunk@example.com", [{ sse: true, text: "split me into tiny writes", chunkSize: 7, delayMs: 1 }]);
      const r = await message(mock, bearer(t.access), { stream: true });
      const { reads, text } = await readAll(r.body);
      assert.ok(reads > 5, `expected many reads, got ${reads}`);
      const deltas = parseSSE(text).filter((e) => e.event === "content_block_delta");
      assert.equal(deltas.map((e) => e.data.delta.text).join(""), "split me into tiny writes");
    });

    test("tool_use stream", async () => {
      const t = mock.addAccount("tool@example.com");
      const input = { command: "ls -la", description: "list files" };
      mock.script("tool@example.com", [{ sse: true, toolUse: { name: "bash", input } }]);
      const events = parseSSE(await (await message(mock, bearer(t.access), { stream: true })).text());
      const start = events.find((e) => e.event === "content_block_start").data;
      assert.equal(start.content_block.type, "tool_use");
      assert.equal(start.content_block.name, "bash");
      assert.deepEqual(start.content_block.input, {});
      assert.match(start.content_block.id, /^toolu_/);
      const json = events
        .filter((e) => e.event === "content_block_delta")
        .map((e) => {
          assert.equal(e.data.delta.type, "input_json_delta");
          return e.data.delta.partial_json;
        })
        .join("");
      assert.deepEqual(JSON.parse(json), input);
      assert.equal(events.find((e) => e.event === "message_delta").data.delta.stop_reason, "tool_use");
    });

    test("errorAfterDeltas: in-band error event after n deltas", async () => {
      const t = mock.addAccount("inband@example.com");
      mock.script("inband@example.com", [{ sse: true, text: "one two three four", errorAfterDeltas: 2 }]);
      const r = await message(mock, bearer(t.access), { stream: true });
      assert.equal(r.status, 200);
      const events = parseSSE(await r.text());
      assert.equal(events.filter((e) => e.event === "content_block_delta").length, 2);
      const last = events.at(-1);
      assert.equal(last.event, "error");
      assert.deepEqual(last.data, { type: "error", error: { type: "overloaded_error", message: "Overloaded" } });
      assert.ok(!events.some((e) => e.event === "message_stop"));
    });

    test("resetAfterBytes: the body errors after exactly n bytes", async () => {
      const t = mock.addAccount("rst@example.com");
      mock.script("rst@example.com", [{ sse: true, resetAfterBytes: 300 }]);
      const r = await message(mock, bearer(t.access), { stream: true });
      assert.equal(r.status, 200);
      const reader = r.body.getReader();
      let got = 0;
      await assert.rejects(async () => {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return;
          got += value.length;
        }
      });
      assert.equal(got, 300);
    });

    test("hang: headers never come (aborted by the client)", async () => {
      const t = mock.addAccount("hang@example.com");
      mock.script("hang@example.com", [{ hang: true }]);
      await assert.rejects(message(mock, bearer(t.access), {}, "/v1/messages", { signal: AbortSignal.timeout(200) }));
      assert.equal((await message(mock, bearer(t.access))).status, 200, "the next request is served");
    });

    test("api-key auth", async () => {
      mock.addApiKey("fake-console-key-test-key", "console@example.com");
      const r = await message(mock, { "x-api-key": "fake-console-key-test-key" }, {}, "/v1/messages");
      assert.equal(r.status, 200);
      assert.equal((await r.json()).content[0].text, "Hello from console@example.com");
      const rec = mock.requests.at(-1);
      assert.equal(rec.auth, "api-key");
      assert.equal(rec.email, "console@example.com");
      assert.equal(rec.path, "/v1/messages");
      assert.equal(rec.method, "POST");
      assert.equal(rec.headers["anthropic-version"], "2023-06-01");
      assert.equal(JSON.parse(rec.body).max_tokens, 64);
      assert.equal((await message(mock, { "x-api-key": "fake-console-key-wrong" })).status, 401);
    });

    test("no auth, both credentials, bad bearer, missing oauth beta -> 401", async () => {
      const t = mock.addAccount("auth@example.com");
      const before = mock.stats().unauthenticated;
      const none = await message(mock, {});
      assert.equal(none.status, 401);
      assert.deepEqual((await none.json()).error, { type: "authentication_error", message: "invalid bearer token" });
      assert.equal(mock.requests.at(-1).auth, null);
      assert.equal(mock.requests.at(-1).email, null);
      assert.equal(mock.stats().unauthenticated, before + 1);
      mock.addApiKey("fake-console-key-both", "auth@example.com");
      assert.equal((await message(mock, { ...bearer(t.access), "x-api-key": "fake-console-key-both" })).status, 401);
      assert.equal(mock.requests.at(-1).auth, null);
      assert.equal((await message(mock, bearer("fake-access-nope"))).status, 401);
      assert.equal((await message(mock, { authorization: `Bearer ${t.access}` })).status, 401, "oauth beta required");
      assert.equal((await message(mock, { authorization: `Bearer ${t.access}`, "anthropic-beta": "foo-1, oauth-2025-04-20" })).status, 200);
      mock.revoke("auth@example.com");
      assert.equal((await message(mock, bearer(t.access))).status, 401, "revoked access token");
      assert.equal((await refresh(mock, t.refresh)).status, 200, "refresh still works after access revocation");
    });

    test("expired access token -> 401", async () => {
      const t = mock.addAccount("exp@example.com", { expiresIn: -1 });
      const r = await message(mock, bearer(t.access));
      assert.equal(r.status, 401);
      assert.match((await r.json()).error.message, /expired/);
    });
  });

  describe("bench endpoints", () => {
    test("small (GET and POST), not recorded as requests", async () => {
      const n = mock.requests.length;
      const a = await fetch(`${mock.url}/bench/small`);
      const text = await a.text();
      assert.equal(a.status, 200);
      assert.ok(text.length > 150 && text.length < 260, `size ${text.length}`);
      JSON.parse(text);
      const b = await fetch(`${mock.url}/bench/small`, { method: "POST", body: "x".repeat(1000) });
      assert.equal(b.status, 200);
      await b.text();
      assert.equal(mock.requests.length, n);
      assert.ok(mock.stats().bench.small >= 2);
    });

    test("bytes", async () => {
      const r = await fetch(`${mock.url}/bench/bytes?n=3000000&chunk=65536`);
      assert.equal(r.headers.get("content-type"), "application/octet-stream");
      const buf = new Uint8Array(await r.arrayBuffer());
      assert.equal(buf.length, 3000000);
      assert.equal(mock.stats().bench.bytes, 1);
    });

    test("sse carries sub-ms epoch timestamps", async () => {
      const start = Date.now();
      const r = await fetch(`${mock.url}/bench/sse?events=5&intervalMs=10`);
      const events = parseSSE(await r.text());
      assert.equal(events.length, 5);
      for (const [i, e] of events.entries()) {
        assert.equal(e.data.i, i);
        assert.ok(e.data.t >= start - 50 && e.data.t <= Date.now() + 50);
      }
      assert.ok(
        events.some((e) => !Number.isInteger(e.data.t)),
        "sub-ms precision",
      );
      assert.ok(events[4].data.t - events[0].data.t >= 35);
    });
  });

  test("close() ends hung requests promptly", async () => {
    const m = await startMockAnthropic();
    const t = m.addAccount("c@example.com");
    m.script("c@example.com", [{ hang: true }]);
    const pending = message(m, bearer(t.access)).then(
      (r) => r.status,
      () => "rejected",
    );
    await new Promise((r) => setTimeout(r, 50));
    const start = Date.now();
    await m.close();
    assert.equal(await pending, "rejected");
    assert.ok(Date.now() - start < 1000);
  });
});

describe("standalone process mode", () => {
  function startChild(args = []) {
    const child = spawn(process.execPath, [MOCK_PATH, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
    const ready = new Promise((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
        const nl = out.indexOf("\n");
        if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)));
      });
      child.on("exit", () => reject(new Error(`mock exited early: ${stderr}`)));
    });
    return { child, ready, exited };
  }
  const control = async (base, route, body) => {
    const res = await fetch(
      `${base}/__mock/${route}`,
      body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) },
    );
    assert.equal(res.status, 200, route);
    return res.json();
  };

  test("prints its URL, obeys control routes, exits on SIGTERM", async () => {
    const { child, ready, exited } = startChild(["--port", "0"]);
    try {
      const { url, tokenUrl } = await ready;
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
      const mock = { url, tokenUrl };

      const tokens = await control(url, "account", { email: "s@example.com", expiresIn: 120 });
      assert.match(tokens.access, /^sk-ant-oat01-mock-/);
      assert.ok(Math.abs(tokens.expires - (Date.now() + 120000)) < 5000);

      const { verifier, url: authUrl } = pkce();
      const { paste, callbackUrl } = await control(url, "approve", { url: authUrl, email: "p@example.com", includeEmail: false });
      assert.ok(callbackUrl.startsWith(`${DEFAULT_REDIRECT_URI}?code=`));
      const ex = await exchange(mock, paste, verifier);
      assert.equal(ex.status, 200);
      assert.equal(ex.json.account, undefined);

      await control(url, "script", { email: "s@example.com", responses: [{ status: 429, headers: rateLimitHeaders({ retryAfter: 7 }) }] });
      const r429 = await message(mock, bearer(tokens.access));
      assert.equal(r429.status, 429);
      assert.equal(r429.headers.get("retry-after"), "7");
      await r429.text();
      await control(url, "script", { email: null, responses: [{ status: 529 }] });
      assert.equal((await message(mock, bearer(tokens.access))).status, 529);

      await control(url, "token-mode", { status: 500, times: -1 });
      assert.equal((await refresh(mock, tokens.refresh)).status, 500);
      assert.equal((await refresh(mock, tokens.refresh)).status, 500);
      await control(url, "token-mode", { clear: true });
      assert.equal((await refresh(mock, tokens.refresh)).status, 200);

      await control(url, "api-key", { key: "fake-console-key-standalone", email: "k@example.com" });
      assert.equal((await message(mock, { "x-api-key": "fake-console-key-standalone" })).status, 200);

      await control(url, "utilization", { email: "k@example.com", fiveHour: 0.5 });
      const u = await message(mock, { "x-api-key": "fake-console-key-standalone" });
      assert.equal(u.headers.get("anthropic-ratelimit-unified-5h-utilization"), "0.5");
      await u.text();

      const stats = await control(url, "stats");
      assert.equal(stats.perFamily["s@example.com"].generation, 1);
      assert.equal(stats.exchangeCalls, 1);
      assert.equal(stats.refreshCalls, 3);
      assert.equal(stats.messages, 4);

      const reqs = await control(url, "requests");
      assert.equal(reqs.length, 4);
      assert.equal(reqs[0].headers.authorization, `Bearer …${tokens.access.slice(-6)}`);
      assert.equal(reqs[2].headers["x-api-key"], "…dalone");
      assert.ok(!JSON.stringify(reqs).includes(tokens.access), "tokens masked");
      const treqs = await control(url, "token-requests");
      assert.ok(!JSON.stringify(treqs).includes(tokens.refresh), "refresh tokens masked");

      child.kill("SIGTERM");
      const { code, signal } = await exited;
      assert.ok(code === 0 || signal === "SIGTERM", `exit ${code} ${signal}`);
    } finally {
      child.kill("SIGKILL");
    }
  });

  test("exits when its stdin closes (never outlives the parent)", async () => {
    const { child, ready, exited } = startChild();
    try {
      const { url } = await ready;
      child.stdin.end();
      const { code } = await Promise.race([exited, new Promise((_, rej) => setTimeout(() => rej(new Error("did not exit")), 5000))]);
      assert.equal(code, 0);
      await assert.rejects(fetch(`${url}/bench/small`));
    } finally {
      child.kill("SIGKILL");
    }
  });
});
