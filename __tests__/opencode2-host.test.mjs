// Self-test of the OpenCode 2.x host harness (helpers/opencode2-host.mjs) with a tiny fake plugin
// and a throwaway loopback server. Runs under `node --test` and `bun test`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createHost, loadPlugin, g1Context, registrationsOf, LOAD_ERROR_MESSAGE, ModelRequestError, HookDefect } from "./helpers/opencode2-host.mjs";

// --- loopback upstream: answers per the `x-api-key` / `authorization` it receives -------------
let server, baseURL;
const seen = [];
let script = () => [200, {}, { ok: true }];
before(async () => {
  server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const entry = { method: req.method, url: req.url, headers: req.headers, body: body ? JSON.parse(body) : undefined };
      seen.push(entry);
      const [status, headers, payload] = script(entry);
      res.writeHead(status, { "content-type": "application/json", ...headers });
      res.end(JSON.stringify(payload));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  baseURL = `http://127.0.0.1:${server.address().port}/v1`;
});
after(() => new Promise((r) => server.close(r)));
const reset = (fn) => {
  seen.length = 0;
  script = fn;
};
const noWait = [];
const host = (opts = {}) => createHost({ sleep: async (ms) => void noWait.push(ms), random: () => 0.5, ...opts });

// --- a tiny plugin in the shape ours will take: { id, server, setup } -------------------------
function fakePlugin(setupBody) {
  return { default: { id: "fake-pool", server: async () => ({}), setup: setupBody } };
}
// Registers an integration with a code-paste OAuth method and a key method, a provider on the
// native Anthropic route linked to it (models copied from `anthropic`), and per-provider hooks.
const poolSetup =
  (hooks = {}) =>
  async (ctx) => {
    if (typeof ctx.session?.hook !== "function") return; // G1: stand aside
    await ctx.integration.transform((e) => {
      e.update("anthropic-pool", (i) => {
        i.name = "Anthropic Pool";
      });
      e.method.update({
        integrationID: "anthropic-pool",
        method: { id: "oauth", type: "oauth", label: "Claude Pro/Max" },
        authorize: async () => ({
          mode: "code",
          url: "https://example.invalid/authorize",
          instructions: "paste the code",
          callback: async (code) => ({
            type: "oauth",
            methodID: "oauth",
            access: `at-${code}`,
            refresh: `rt-${code}`,
            expires: Date.now() + 3_600_000,
            metadata: { email: `${code}@example.invalid` },
          }),
        }),
        label: (cred) => cred.metadata?.email,
      });
      e.method.update({ integrationID: "anthropic-pool", method: { type: "key", label: "API key" } });
    });
    await ctx.provider.transform((e) => {
      const source = e.get("anthropic");
      e.add({
        info: {
          id: "anthropic-pool",
          name: "Anthropic Pool",
          activation: "auto",
          integrationID: "anthropic-pool",
          package: "@opencode/ai/providers/anthropic",
          settings: { baseURL: ctx.options.baseURL },
        },
        models: [...source.models.values()],
      });
    });
    for (const [name, fn] of Object.entries(hooks)) await ctx.session.hook(name, fn, { providerID: "anthropic-pool" });
    return () => {
      ctx.options.onCleanup?.();
    };
  };

test("loader decodes { id, setup } like 2.x and rejects anything else with 2.x's message", async () => {
  let self;
  const loaded = loadPlugin(
    fakePlugin(function () {
      self = this;
    }),
    { options: { a: 1 } },
  );
  assert.equal(loaded.kind, "setup");
  assert.deepEqual(loaded.options, { a: 1 });
  await host().start(loaded);
  assert.deepEqual(Object.keys(self).sort(), ["id", "setup"], "setup runs on the decoded copy, not the module object");
  assert.equal(loadPlugin({ default: { id: "e", effect: () => {}, setup: () => {} } }).kind, "effect", "the effect member wins");
  for (const bad of [
    {},
    { default: async () => ({}) },
    { default: { server: () => {} } },
    { default: { id: 1, setup() {} } },
    { default: { id: "x", server() {} } },
    { default: { id: "x", setup: "no" } },
  ]) {
    assert.throws(() => loadPlugin(bad), { name: "PluginModule.LoadError", message: LOAD_ERROR_MESSAGE });
  }
  assert.equal(LOAD_ERROR_MESSAGE, "Plugin must export a default definition with an id and an effect or setup function.");
});

test("G1 context: the 1.18.33 keys, and a plugin that stands aside registers nothing", async () => {
  const ctx = g1Context({ accountsFile: "/x/pool.json" });
  assert.deepEqual(Object.keys(ctx).sort(), ["agent", "aisdk", "catalog", "command", "integration", "options", "plugin", "reference", "skill"]);
  await loadPlugin(fakePlugin(poolSetup())).plugin.setup(ctx);
  assert.deepEqual(registrationsOf(ctx), []);
  await ctx.catalog.transform(() => {});
  assert.equal(registrationsOf(ctx).length, 1, "registrations through the G1 context are recorded");
});

test("integration methods, login (code paste), key connect, provider linking and cleanup", async () => {
  const h = host();
  let cleaned = 0;
  const handle = await h.start(fakePlugin(poolSetup({ "http.request": () => {} })), { options: { baseURL, onCleanup: () => cleaned++ } });
  assert.deepEqual(
    h.integration("anthropic-pool").methods.map((m) => m.type),
    ["oauth", "key"],
  );
  assert.deepEqual(h.models("anthropic-pool"), [], "an integration-linked provider is unavailable until it has a connection");
  const { credential } = await h.login("anthropic-pool", "oauth", { code: "alice" });
  assert.equal(credential.label, "alice@example.invalid", "label() names the credential");
  h.connectKey("anthropic-pool", "sk-bob");
  assert.deepEqual(
    h.connections("anthropic-pool").map((c) => c.method),
    ["key", "oauth"],
    "the newest connection is active",
  );
  const models = h.models("anthropic-pool");
  assert.equal(models.length, 3);
  assert.ok(models.every((m) => m.providerID === "anthropic-pool" && m.package === "@opencode/ai/providers/anthropic" && m.settings.baseURL === baseURL));
  assert.equal(h.hooks().length, 1);
  await handle.context.integration.connection.status({
    integrationID: "anthropic-pool",
    connection: h.connections("anthropic-pool")[1],
    status: { status: "needs_auth", message: "revoked" },
  });
  assert.equal(h.connections("anthropic-pool")[1].status.status, "needs_auth");
  await handle.unload();
  assert.equal(cleaned, 1);
  assert.equal(h.hooks().length, 0, "unload disposes the plugin's registrations");
  assert.equal(h.integration("anthropic-pool"), undefined, "and its transforms");
});

test("model request: active key credential as x-api-key; an http.request hook rewrites auth", async () => {
  reset(() => [200, {}, { type: "message", content: [{ type: "text", text: "hi" }] }]);
  const h = host();
  await h.start(
    fakePlugin(
      poolSetup({
        "http.request": (event) => {
          const headers = new Headers(event.request.headers);
          headers.delete("x-api-key");
          headers.set("authorization", "Bearer pooled-token");
          event.request = new Request(event.request, { headers });
        },
      }),
    ),
    { options: { baseURL } },
  );
  h.connectKey("anthropic-pool", "sk-host");
  const res = await h.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body: { messages: [{ role: "user", content: "hi" }] } });
  assert.equal(res.status, 200);
  assert.equal((await res.json()).content[0].text, "hi");
  assert.equal(seen.length, 1);
  assert.equal(seen[0].url, "/v1/messages");
  assert.equal(seen[0].headers.authorization, "Bearer pooled-token");
  assert.equal(seen[0].headers["x-api-key"], undefined);
  assert.equal(seen[0].headers["anthropic-version"], "2023-06-01");
  assert.equal(seen[0].body.model, "claude-sonnet-4-5");
  assert.equal(seen[0].body.stream, true);

  // A hook scoped to anthropic-pool never sees another provider's request.
  reset(() => [200, {}, {}]);
  await h.start(
    fakePlugin(async (ctx) => {
      await ctx.provider.transform((e) =>
        e.update("anthropic", (p) => {
          p.settings = { baseURL };
        }),
      );
    }),
  );
  h.connectKey("anthropic", "sk-plain");
  await h.modelRequest({ providerID: "anthropic", modelID: "claude-haiku-4-5" });
  assert.equal(seen[0].headers["x-api-key"], "sk-plain");
  assert.equal(seen[0].headers.authorization, undefined);
});

test("OAuth credential reaches the request as Authorization: Bearer", async () => {
  reset(() => [200, {}, {}]);
  const h = host();
  await h.start(fakePlugin(poolSetup()), { options: { baseURL } });
  await h.login("anthropic-pool", "oauth", { code: "carol" });
  await h.modelRequest({ providerID: "anthropic-pool", modelID: "claude-opus-4-1" });
  assert.equal(seen[0].headers.authorization, "Bearer at-carol");
  assert.equal(seen[0].headers["x-api-key"], undefined);
});

test("an http.response hook replaces a 429 with a retried answer; the host does not retry", async () => {
  reset((r) =>
    r.headers["x-api-key"] === "sk-a"
      ? [429, { "retry-after": "30" }, { type: "error", error: { type: "rate_limit_error", message: "slow down" } }]
      : [200, {}, { from: r.headers["x-api-key"] }],
  );
  const h = host();
  await h.start(
    fakePlugin(
      poolSetup({
        "http.response": async (event) => {
          if (event.response.status !== 429) return;
          const retry = event.request.clone(); // the request is still unread
          const headers = new Headers(retry.headers);
          headers.set("x-api-key", "sk-b");
          event.response = await fetch(retry.url, { method: "POST", headers, body: await retry.arrayBuffer() });
        },
      }),
    ),
    { options: { baseURL } },
  );
  h.connectKey("anthropic-pool", "sk-a");
  const res = await h.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5" });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { from: "sk-b" });
  assert.deepEqual(
    seen.map((r) => r.headers["x-api-key"]),
    ["sk-a", "sk-b"],
  );
  assert.equal(h.log.filter((e) => e.type === "retry.proposed").length, 0);
  assert.ok(h.log.some((e) => e.type === "http.response.replaced" && e.from === 429 && e.to === 200));
});

test("the retry hook is honoured: it can veto, force, and set the delay", async () => {
  const h = host();
  const decisions = [];
  let mode = "veto";
  await h.start(
    fakePlugin(
      poolSetup({
        retry: (event) => {
          decisions.push({ attempt: event.attempt, type: event.error.type, status: event.error.status, proposed: { ...event.decision } });
          if (mode === "veto") event.decision = { retry: false };
          else event.decision = { retry: true, delay: 0 };
        },
      }),
    ),
    { options: { baseURL } },
  );
  h.connectKey("anthropic-pool", "sk-a");

  // 429 is retryable; the host proposes max(jittered 2 s, retry-after 30 s) = 30000; the hook vetoes.
  reset(() => [429, { "retry-after": "30" }, { type: "error", error: { type: "rate_limit_error", message: "slow down" } }]);
  await assert.rejects(
    h.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5" }),
    (e) => e instanceof ModelRequestError && e.error.type === "provider.rate-limit" && e.error.status === 429 && e.attempts === 1,
  );
  assert.equal(seen.length, 1);
  assert.deepEqual(decisions.at(-1), { attempt: 2, type: "provider.rate-limit", status: 429, proposed: { retry: true, delay: 30000 } });

  // 401 is not retryable (proposal { retry: false }); the hook forces a retry with delay 0.
  mode = "force";
  noWait.length = 0;
  let n = 0;
  reset(() => (++n === 1 ? [401, {}, { type: "error", error: { type: "authentication_error", message: "invalid x-api-key" } }] : [200, {}, { ok: true }]));
  const res = await h.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5" });
  assert.equal(res.status, 200);
  assert.equal(seen.length, 2);
  assert.deepEqual(decisions.at(-1).proposed, { retry: false });
  assert.deepEqual(noWait, [0]);
});

test("without a retry hook the host's own policy retries 5xx with backoff", async () => {
  const h = host();
  await h.start(fakePlugin(poolSetup()), { options: { baseURL } });
  h.connectKey("anthropic-pool", "sk-a");
  let n = 0;
  noWait.length = 0;
  reset(() => (++n <= 2 ? [529, {}, { type: "error", error: { type: "overloaded_error", message: "Overloaded" } }] : [200, {}, {}]));
  const res = await h.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5" });
  assert.equal(res.status, 200);
  assert.deepEqual(noWait, [2000, 4000], "exponential from 2 s (jitter pinned to 1.0 by random() = 0.5)");
});

test("a throwing http.response hook is a defect: the request fails without retry", async () => {
  reset(() => [200, {}, {}]);
  const h = host();
  await h.start(
    fakePlugin(
      poolSetup({
        "http.response": () => {
          throw new Error("boom");
        },
      }),
    ),
    { options: { baseURL } },
  );
  h.connectKey("anthropic-pool", "sk-a");
  await assert.rejects(
    h.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5" }),
    (e) => e instanceof HookDefect && e.cause.message === "boom",
  );
  assert.equal(seen.length, 1);
});

test("tools take JSON Schema or Standard JSON Schema; a foreign Standard Schema is skipped; commands run code", async () => {
  const h = host();
  const foreign = { "~standard": { version: 1, vendor: "zod", validate: (v) => ({ value: v }) } };
  const standard = {
    "~standard": {
      version: 1,
      vendor: "x",
      validate: (v) => (typeof v?.n === "number" ? { value: v } : { issues: [{ message: "n must be a number" }] }),
      jsonSchema: { input: () => ({ type: "object" }), output: () => ({}) },
    },
  };
  await h.start(
    fakePlugin(async (ctx) => {
      await ctx.tool.transform((e) => {
        e.add({
          name: "model-accounts-pool",
          description: "pool",
          input: { type: "object", properties: { action: { type: "string" } } },
          execute: async (input) => ({ content: `did ${input.action}` }),
        });
        e.add({ name: "zodish", description: "x", input: foreign, execute: async () => ({}) });
        e.add({ name: "std", description: "x", input: standard, execute: async (input) => ({ metadata: { n: input.n }, content: "ok" }) });
      });
      await ctx.command.transform((e) =>
        e.add({ name: "model-accounts-pool", description: "pool", execute: async (input) => ({ type: "immediate", text: input.prompt.text }) }),
      );
    }),
  );
  assert.deepEqual(
    h.tools().map((t) => t.id),
    ["model-accounts-pool", "std"],
  );
  assert.ok(h.log.some((e) => e.type === "tool.rejected" && e.name === "zodish"));
  assert.deepEqual((await h.runTool("model-accounts-pool", { action: "list" })).content, [{ type: "text", text: "did list" }]);
  await assert.rejects(h.runTool("std", { n: "x" }), /Invalid tool input: n must be a number/);
  assert.deepEqual(await h.runCommand("model-accounts-pool", { text: "list" }), { type: "immediate", text: "list" });
});

test("a setup that rejects fails the plugin: what it had registered is disposed; hooks may be called without a signal", async () => {
  const h = host();
  const failing = fakePlugin(async (ctx) => {
    await poolSetup({ "http.request": () => {} })(ctx);
    throw new Error("setup failed late");
  });
  await assert.rejects(h.start(failing, { options: { baseURL } }), /setup failed late/);
  assert.deepEqual(h.hooks(), []);
  assert.ok(!h.providers().some((p) => p.id === "anthropic-pool"));

  reset(() => [200, {}, { ok: true }]);
  const plain = host({ hookSignal: false });
  const args = [];
  await plain.start(fakePlugin(poolSetup({ "http.request": (...a) => void args.push(a.length) })), { options: { baseURL } });
  plain.connectKey("anthropic-pool", "sk-a");
  await plain.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5" });
  assert.deepEqual(args, [1], "fromPromise calls callback(event) alone");
});
