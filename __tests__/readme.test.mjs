// The README's code examples, run as they are written against the loopback mock (a temp HOME and
// pool file, never the real ~/.aidevops). Only what a reader must fill in is supplied: the code
// pasted after logging in, the request's headers and body, and the host's own parts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tempPoolPath, useMock } from "./helpers/pool-env.mjs";

const mock = useMock();
const INDEX = new URL("../index.mjs", import.meta.url).href;
const README = readFileSync(fileURLToPath(new URL("../README.md", import.meta.url)), "utf8");
const AsyncFunction = (async () => {}).constructor;

/** The first ```js block after the heading `## <section>`. */
function example(section) {
  const at = README.indexOf(`\n## ${section}\n`);
  assert.ok(at >= 0, `README has a section ${section}`);
  const block = /```js\n([\s\S]*?)```/.exec(README.slice(at));
  assert.ok(block, `section ${section} has a js example`);
  return block[1];
}

/** The example as a function body: its imports of the package read from index.mjs instead. */
function runnable(code) {
  const imports = /^import \{([^}]+)\} from "opencode-oauth-pool";$/gm;
  assert.match(code, imports, "the example imports the package");
  return code.replace(imports, (_, names) => `const {${names}} = await import(${JSON.stringify(INDEX)});`);
}

test("Library: log in, add the account, send a request through the pool fetch", async () => {
  const path = tempPoolPath();
  const saved = process.env.OAUTH_POOL_PATH;
  process.env.OAUTH_POOL_PATH = path;
  try {
    let code = runnable(example("Library"));
    // The reader opens the URL and pastes the code: the mock logs in and hands it over.
    code = code.replace(/^(const \{ url, verifier, state \} = await authorize\(\);.*)$/m, '$1\nconst pastedCode = mock.approve(url, "readme@x.test");');
    assert.match(code, /pastedCode = mock\.approve/, "the example still starts with authorize()");
    // The example talks to Anthropic; here the API origin is the mock's.
    code = code.replaceAll('"https://api.anthropic.com/v1/messages"', JSON.stringify(`${mock.url}/v1/messages`));
    const logged = [];
    const log = { log: (...args) => logged.push(args) };
    const headers = { "content-type": "application/json", "anthropic-version": "2023-06-01" };
    const body = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });
    await new AsyncFunction("mock", "console", "headers", "body", code)(mock, log, headers, body);
    assert.deepEqual(logged.at(-1), ["readme@x.test"], "res.poolAccount names the account that served it");
    const { listAccounts } = await import(INDEX);
    assert.deepEqual(
      (await listAccounts(path)).map((a) => a.email),
      ["readme@x.test"],
    );
  } finally {
    if (saved === undefined) delete process.env.OAUTH_POOL_PATH;
    else process.env.OAUTH_POOL_PATH = saved;
  }
});

test("From the opencode-aidevops plugin: the composed host declares the provider and shares the tool", async () => {
  const path = tempPoolPath();
  let code = runnable(example("From the opencode-aidevops plugin"));
  // A module's `export default` becomes the function's result.
  code = code.replace(/^export default /m, "return ");
  code = code.replace('const pool = { toolName: "model-accounts-pool" };', `const pool = { toolName: "model-accounts-pool", path: ${JSON.stringify(path)} };`);
  assert.match(code, /path: /, "the example still names its options `pool`");
  const ownTools = () => ({ "host-tool": { description: "the host's own", args: {}, execute: async () => "ok" } });
  const ownConfigHook = async (config) => {
    config.provider = { ...config.provider, host: { npm: "@ai-sdk/openai-compatible" } };
  };
  // The models come from the built-in list, not from this machine's OpenCode cache.
  const saved = { XDG_CACHE_HOME: process.env.XDG_CACHE_HOME, OPENCODE_MODELS_PATH: process.env.OPENCODE_MODELS_PATH };
  process.env.XDG_CACHE_HOME = dirname(path);
  delete process.env.OPENCODE_MODELS_PATH;
  try {
    const plugin = await new AsyncFunction("ownTools", "ownConfigHook", code)(ownTools, ownConfigHook);
    assert.equal(plugin.id, "aidevops");
    const input = { client: { app: { log: async () => {} } }, directory: process.cwd() };
    const hooks = await plugin.server(input);
    assert.equal(hooks.auth.provider, "anthropic-pool");
    assert.deepEqual(Object.keys(hooks.tool).sort(), ["host-tool", "model-accounts-pool"]);
    const config = {};
    await hooks.config(config);
    assert.ok(config.provider.host, "the host's provider stays");
    const pooled = config.provider["anthropic-pool"];
    assert.equal(pooled.options.baseURL, `${mock.url}/v1`);
    const { ANTHROPIC_MODELS } = await import(INDEX);
    assert.deepEqual(Object.keys(pooled.models).sort(), Object.keys(ANTHROPIC_MODELS).sort());
    assert.match(await hooks.tool["model-accounts-pool"].execute({ action: "list" }), /no accounts yet/);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});
