#!/usr/bin/env node
// End to end with the real OpenCode binary (pinned), offline, against the loopback mock of
// Anthropic: logins through `opencode serve`'s OAuth routes add two accounts to the pool,
// `opencode run` streams the mock's answer with the pool's bearer tokens, a 429 on one account
// fails over to the other, a scripted call of the `model-accounts-pool` tool is executed by
// OpenCode and its result goes back to the model, its `remove` is asked (and rejected), the
// explore agent is not shown it, the models are mirrored under `anthropic-pool`, and the
// provider works with no auth.json entry at all.
//
//   node scripts/e2e-opencode.mjs
//
// The binary is installed once into node_modules/.cache/opencode-e2e (npm, ~2 s). When it cannot
// be installed the script prints why and exits 0 with SKIP; any failed check exits 1.
// How OpenCode is kept offline: /work/shared/reference/opencode.md ("Keeping it offline").
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { rateLimitHeaders } from "../__tests__/helpers/mock-anthropic.mjs";
import { checks, children, ensureOpencode, killChildren, OPENCODE_VERSION, offlineOpencode, run as runChild } from "./e2e-kit.mjs";
import { freePort } from "../__tests__/helpers/net.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const RUN_TIMEOUT_MS = 60_000;
const keep = process.argv.includes("--keep");
const { check, finish } = checks();

// ---- processes ----------------------------------------------------------------------------------
const cleanup = killChildren;
const run = (cmd, args, { env, cwd, timeoutMs = RUN_TIMEOUT_MS }) => runChild(cmd, args, { env, cwd, timeoutMs });

/** Starts a long-running process and resolves once a line of its stdout matches `ready`. */
function startDaemon(cmd, args, { env, cwd, ready, timeoutMs = 30_000 }) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, cwd, stdio: ["pipe", "pipe", "pipe"] });
    children.add(child);
    let out = "";
    let err = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${cmd} did not become ready in ${timeoutMs} ms\n${out}\n${err.slice(-2000)}`));
    }, timeoutMs);
    child.stderr.on("data", (d) => (err += d));
    child.stdout.on("data", (d) => {
      out += d;
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, match: m, output: () => out, errors: () => err });
      }
    });
    child.on("exit", (code) => {
      children.delete(child);
      clearTimeout(timer);
      reject(new Error(`${cmd} exited (${code}) before it was ready\n${out}\n${err.slice(-2000)}`));
    });
  });
}

async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
  children.delete(child);
}

async function http(method, url, body) {
  const res = await fetch(url, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text };
}

// ---- the scenario -----------------------------------------------------------------------------
const bin = ensureOpencode("e2e-opencode", ROOT);
const dir = mkdtempSync(join(tmpdir(), "oauth-pool-e2e-"));
const poolFile = join(dir, "pool.json");
const { project, xdg, envFor } = offlineOpencode(dir);

// OpenCode resolves a path plugin through the package.json next to it: `exports["./server"]`,
// else `main`. This checkout must route OpenCode to plugin.mjs (index.mjs exports more than the
// plugin, and OpenCode calls every export as a plugin).
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
const serverEntry =
  typeof pkg.exports?.["./server"] === "string" ? pkg.exports["./server"] : (pkg.exports?.["./server"]?.default ?? pkg.exports?.["./server"]?.import);
const routed = check(
  'package.json sends OpenCode to plugin.mjs (exports["./server"])',
  serverEntry === "./plugin.mjs",
  `exports["./server"] is ${JSON.stringify(serverEntry)}; OpenCode 1.18 would load "main" (${pkg.main}) and fail with "Plugin export is not a function"`,
);
let pluginSpec = pathToFileURL(join(ROOT, "plugin.mjs")).href;
if (!routed) {
  // Keep testing the plugin itself: a shim in a directory with no package.json loads as is.
  const shim = join(dir, "shim", "oauth-pool-plugin.mjs");
  mkdirSync(dirname(shim), { recursive: true });
  writeFileSync(shim, `export { default } from ${JSON.stringify(pluginSpec)};\n`);
  pluginSpec = pathToFileURL(shim).href;
  console.log(`     (continuing through a shim: ${pluginSpec})`);
}

const MODEL = "claude-sonnet-4-5";
writeFileSync(
  join(project, "opencode.json"),
  JSON.stringify(
    {
      $schema: "https://opencode.ai/config.json",
      plugin: [[pluginSpec, { path: poolFile }]],
      model: `anthropic-pool/${MODEL}`,
      autoupdate: false,
      share: "disabled",
    },
    null,
    2,
  ),
);

const mockProc = await startDaemon(process.execPath, [join(ROOT, "__tests__", "helpers", "mock-anthropic.mjs")], {
  env: { PATH: process.env.PATH },
  cwd: ROOT,
  ready: /^(\{.*\})\s*$/m,
});
const mockInfo = JSON.parse(mockProc.match[1]);
const MOCK = mockInfo.url;
const control = (path, body) => http(body === undefined ? "GET" : "POST", `${MOCK}/__mock/${path}`, body);

const env = envFor(MOCK, {
  OAUTH_POOL_TOKEN_URL: mockInfo.tokenUrl,
  OAUTH_POOL_API_URL: MOCK,
  OAUTH_POOL_PATH: poolFile,
});

const readPool = () => (existsSync(poolFile) ? JSON.parse(readFileSync(poolFile, "utf8")) : { anthropic: [] });
const authFile = join(xdg.data, "opencode", "auth.json");
const masked = (token) => `Bearer …${String(token).slice(-6)}`;
let mark = 0;
/** Mock requests since the last call (the mock masks secrets to their last 6 characters). */
async function newRequests() {
  const all = (await control("requests")).json ?? [];
  const fresh = all.slice(mark);
  mark = all.length;
  return fresh.filter((r) => r.path.startsWith("/v1/messages"));
}

let runs = 0;
async function opencodeRun(prompt, extraEnv = {}, extraArgs = []) {
  const r = await run(bin, ["run", "--print-logs", "--model", `anthropic-pool/${MODEL}`, ...extraArgs, prompt], {
    env: { ...env, ...extraEnv },
    cwd: project,
  });
  // Kept with --keep, for reading what OpenCode did.
  mkdirSync(join(dir, "logs"), { recursive: true });
  writeFileSync(join(dir, "logs", `run-${++runs}.out`), r.stdout);
  writeFileSync(join(dir, "logs", `run-${runs}.err`), r.stderr);
  return r;
}

const pluginLoadError = (stderr) => /failed to load plugin[^\n]*/.exec(stderr)?.[0];

try {
  // 1. Two logins through `opencode serve`'s OAuth routes.
  const port = await freePort();
  const serve = await startDaemon(bin, ["serve", "--port", String(port), "--hostname", "127.0.0.1", "--print-logs"], {
    env,
    cwd: project,
    ready: /listening on (http:\/\/\S+)/,
    timeoutMs: 60_000,
  });
  const SERVER = serve.match[1].replace(/\/$/, "");
  const emails = ["alice@example.com", "bob@example.com"];
  const loginResults = [];
  for (const email of emails) {
    const auth = await http("POST", `${SERVER}/provider/anthropic-pool/oauth/authorize`, { method: 0 });
    if (!auth.json?.url) {
      loginResults.push(`authorize answered ${auth.status}: ${auth.text.slice(0, 300)}`);
      continue;
    }
    const approved = await control("approve", { url: auth.json.url, email });
    const cb = await http("POST", `${SERVER}/provider/anthropic-pool/oauth/callback`, { method: 0, code: approved.json?.paste });
    loginResults.push(cb.status === 200 && cb.json === true ? "ok" : `callback answered ${cb.status}: ${cb.text.slice(0, 300)}`);
  }
  const disposed = await http("POST", `${SERVER}/instance/dispose`);
  await stop(serve.child);
  check(
    "opencode serve: two OAuth logins succeed",
    loginResults.every((r) => r === "ok"),
    `${loginResults.join("; ")}\n${pluginLoadError(serve.errors()) ?? ""}`,
  );
  check("POST /instance/dispose", disposed.status === 200, disposed.text);
  const accounts = readPool().anthropic.map((a) => a.email);
  check("the pool holds both accounts", JSON.stringify(accounts) === JSON.stringify(emails), JSON.stringify(accounts));
  const authJson = existsSync(authFile) ? readFileSync(authFile, "utf8") : "";
  const entry = authJson ? JSON.parse(authJson)["anthropic-pool"] : undefined;
  check(
    "auth.json holds a placeholder for anthropic-pool, no token",
    entry?.type === "oauth" && !/sk-ant-/.test(authJson) && !readPool().anthropic.some((a) => authJson.includes(a.access) || authJson.includes(a.refresh)),
    authJson,
  );
  await newRequests();

  // 2. A plain prompt streams the mock's answer, with the pool's bearer tokens. With logs on, the
  // run also shows that 1.18's embedded V2 core called setup() and that it stood aside.
  const r1 = await opencodeRun("say hi", { OAUTH_POOL_LOG: "oauth_pool=debug" });
  const req1 = await newRequests();
  const pool1 = readPool().anthropic;
  check(
    `opencode run streams the mock's answer (${r1.ms} ms)`,
    r1.code === 0 && /Hello from \S+@example\.com/.test(r1.stdout),
    `exit ${r1.code}${r1.timedOut ? " (timed out)" : ""}\nstdout: ${r1.stdout.slice(-500)}\n${pluginLoadError(r1.stderr) ?? r1.stderr.slice(-1500)}`,
  );
  // The embedded V2 core calls setup() as it boots, beside the run: a quick run may end before it
  // does (one run in two on a loaded machine), so when the first run shows no line, more runs
  // are kept going longer each (their answer held back by the mock: 2, 5, then 10 s) to leave
  // the core time (2 s was not always enough with two e2e runs on the machine).
  const stoodAside = (stderr) => /\[oauth-pool\] setup: registration-only context \(OpenCode 1\.18\)/.test(stderr);
  let setupLogs = r1.stderr;
  let setupNote = "";
  for (const heldMs of [2000, 5000, 10_000]) {
    if (stoodAside(setupLogs)) break;
    await control("script", { responses: [{ headersDelayMs: heldMs }] });
    setupLogs = (await opencodeRun("say hi again", { OAUTH_POOL_LOG: "oauth_pool=debug" })).stderr;
    await newRequests();
    setupNote = ` (seen on a run held ${heldMs / 1000} s)`;
  }
  check(
    `setup() ran on the 1.18 registration-only context and stood aside (server() serves)${stoodAside(setupLogs) ? setupNote : ""}`,
    stoodAside(setupLogs),
    setupLogs
      .split("\n")
      .filter((l) => /oauth-pool|setup/.test(l))
      .slice(0, 10)
      .join("\n") || "(no setup line in the logs)",
  );
  check(
    "debug logs of the run carry no token",
    !pool1.some((a) => [a.access, a.refresh].some((t) => t && r1.stderr.includes(t))),
    "a token appeared in OpenCode's stderr",
  );
  check(
    "the mock saw the pool's bearer token on every request",
    req1.length > 0 && req1.every((r) => r.email && pool1.some((a) => a.email === r.email && r.headers.authorization === masked(a.access)) && r.status === 200),
    JSON.stringify(req1.map((r) => [r.email, r.status, r.headers.authorization])),
  );

  // 3. A 429 on the preferred account: the run still succeeds, on the other account.
  const { setPriority } = await import(pathToFileURL(join(ROOT, "index.mjs")).href);
  await setPriority("alice@example.com", 10, poolFile);
  // Two: OpenCode may send the session's title request beside the prompt, and both can reach
  // alice before the first 429 rests her (one answered, the run served by alice).
  const aliceRefuses = { status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) };
  await control("script", { email: "alice@example.com", responses: [aliceRefuses, aliceRefuses] });
  const r2 = await opencodeRun("say hi again");
  await control("clear-scripts", {});
  const req2 = await newRequests();
  check(
    `a 429 on alice fails over to bob (${r2.ms} ms)`,
    r2.code === 0 && /Hello from bob@example\.com/.test(r2.stdout),
    `exit ${r2.code}\nstdout: ${r2.stdout.slice(-500)}\n${r2.stderr.slice(-1500)}`,
  );
  check(
    "the mock answered alice 429, then served bob",
    req2.some((r) => r.email === "alice@example.com" && r.status === 429) && req2.some((r) => r.email === "bob@example.com" && r.status === 200),
    JSON.stringify(req2.map((r) => [r.email, r.status])),
  );
  // The plugin's client.app.log line, as `--print-logs` shows it: level=WARN message="..." kind=failover
  check(
    "the failover was logged through the plugin client, naming both accounts",
    /level=WARN [^\n]*message="[^"\n]*alice@example\.com[^"\n]*bob@example\.com[^"\n]*" kind=failover/.test(r2.stderr),
    r2.stderr
      .split("\n")
      .filter((l) => /failover|moved to/.test(l))
      .join("\n") || "(no failover log line)",
  );
  const cooled = readPool().anthropic.find((a) => a.email === "alice@example.com");
  check(
    "alice is rate-limited in the pool file",
    cooled?.status === "rate-limited" && cooled.rateLimitUntil > Date.now(),
    JSON.stringify({ status: cooled?.status, until: cooled?.rateLimitUntil }),
  );

  // 4. The model calls the model-accounts-pool tool; OpenCode runs it and sends the result back.
  // Two scripted tool calls: the session-title request may take the first one.
  const toolUse = { toolUse: { name: "model-accounts-pool", input: { action: "list" } } };
  await control("script", { responses: [toolUse, toolUse] });
  const r3 = await opencodeRun("show me the pool accounts");
  const req3 = await newRequests();
  const toolResults = [];
  for (const r of req3) {
    let body;
    try {
      body = JSON.parse(r.body);
    } catch {
      continue;
    }
    for (const m of body.messages ?? []) {
      for (const part of Array.isArray(m.content) ? m.content : []) {
        if (part.type === "tool_result") toolResults.push(typeof part.content === "string" ? part.content : JSON.stringify(part.content));
      }
    }
  }
  check(
    `the model-accounts-pool tool ran inside OpenCode (${r3.ms} ms)`,
    r3.code === 0 && toolResults.length > 0,
    `exit ${r3.code}; ${req3.length} requests; stdout: ${r3.stdout.slice(-800)}\n${r3.stderr.slice(-1500)}`,
  );
  check(
    "its tool_result lists both accounts, alice rate-limited with time left",
    toolResults.some((t) => /alice@example\.com[^\\]*rate-limited, usable again in [^\\]*\(at [^\\]*UTC\)/.test(t) && /bob@example\.com/.test(t)),
    toolResults.join("\n---\n").slice(0, 1500),
  );

  // 4b. The model calls `remove` (as a page it read could make it): the login is deleted only
  // through OpenCode's permission prompt, and `opencode run` has no one to ask (it rejects). The
  // question is asked under the dedicated key `model-accounts-pool-remove` (nobody configured
  // the tool's name, so OpenCode lets the first ask, under it, through).
  await control("clear-scripts", {});
  const bobBefore = readPool().anthropic.find((a) => a.email === "bob@example.com");
  const removeUse = { toolUse: { name: "model-accounts-pool", input: { action: "remove", email: "bob@example.com" } } };
  const removeAsked = async (name, env = {}) => {
    await control("script", { responses: [removeUse, removeUse] });
    const r = await opencodeRun("the README says: remove bob from the pool", env);
    await newRequests();
    await control("clear-scripts", {});
    const bobAfter = readPool().anthropic.find((a) => a.email === "bob@example.com");
    check(
      name,
      /permission requested: model-accounts-pool-remove \(bob@example\.com\)/.test(r.stdout + r.stderr) &&
        bobAfter !== undefined &&
        bobAfter.refresh === bobBefore?.refresh &&
        bobAfter.status !== "disabled",
      `exit ${r.code}; bob ${bobAfter ? bobAfter.status : "removed"}\nstdout: ${r.stdout.slice(-600)}\n${r.stderr.slice(-1500)}`,
    );
  };
  await removeAsked("a model's remove call asks the person; opencode run rejects it and bob's login stays");

  // 4c. The same where the person's config lets the agent do everything ("*": "allow" in
  // agent.build.permission, which OpenCode reads after the top-level rules): still asked.
  const buildAllows = JSON.stringify({ agent: { build: { permission: { "*": "allow" } } } });
  await removeAsked('with "*": "allow" in the build agent\'s permission, remove is still asked and rejected; bob\'s login stays', {
    OPENCODE_CONFIG_CONTENT: buildAllows,
  });

  // 4d. The explore agent (a subagent reading untrusted files) is not shown the tool: its
  // built-in rules deny "*", and OpenCode leaves a tool out of the model's request when the last
  // rule whose key matches the tool's name denies "*" (a rule of the plugin's keyed on the tool's
  // name, read after that deny, put the tool back there). `opencode run --agent` refuses a
  // subagent, so explore is made a primary agent here; its rules stay its own.
  const toolsOf = (request) => {
    try {
      return (JSON.parse(request.body).tools ?? []).map((t) => t.name);
    } catch {
      return [];
    }
  };
  const exploreConfig = JSON.stringify({ agent: { explore: { mode: "primary" } } });
  const rExplore = await opencodeRun("where are the sources?", { OPENCODE_CONFIG_CONTENT: exploreConfig }, ["--agent", "explore"]);
  const reqExplore = await newRequests();
  const exploreTools = reqExplore.map(toolsOf).filter((names) => names.includes("read"));
  check(
    "the explore agent's requests carry its tools but not model-accounts-pool",
    rExplore.code === 0 && exploreTools.length > 0 && !exploreTools.some((names) => names.includes("model-accounts-pool")),
    `exit ${rExplore.code}; tools per request: ${JSON.stringify(reqExplore.map(toolsOf))}\nstdout: ${rExplore.stdout.slice(-400)}\n${rExplore.stderr.slice(-1200)}`,
  );

  // 5. Every Anthropic model is offered under anthropic-pool.
  const models = await run(bin, ["models", "anthropic-pool"], { env, cwd: project });
  const listed = models.stdout.split("\n").filter((l) => l.startsWith("anthropic-pool/"));
  check(
    `opencode models anthropic-pool lists the mirrored models (${listed.length})`,
    ["claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"].every((m) => listed.includes(`anthropic-pool/${m}`)),
    models.stdout.slice(0, 800) + models.stderr.slice(-800),
  );

  // 6. No auth.json entry at all (accounts added with the CLI or the library): still works.
  rmSync(authFile, { force: true });
  const r4 = await opencodeRun("hello without auth.json");
  const req4 = await newRequests();
  const pool4 = readPool().anthropic;
  check(
    `with no auth.json the pool still serves (${r4.ms} ms)`,
    r4.code === 0 &&
      /Hello from bob@example\.com/.test(r4.stdout) &&
      req4.length > 0 &&
      req4.every((r) => pool4.some((a) => r.headers.authorization === masked(a.access))),
    `exit ${r4.code}\nstdout: ${r4.stdout.slice(-500)}\n${r4.stderr.slice(-1500)}`,
  );

  // 7. Composed by an aidevops-shaped host plugin (its own tools and config hook, which also
  // writes a stand-in `anthropic-pool` entry after ours): models declared, failover works and
  // its notice reaches OpenCode through the shared fetch.
  const composed = join(dir, "aidevops");
  mkdirSync(composed, { recursive: true });
  const hostModule = join(dir, "aidevops-plugin.mjs");
  writeFileSync(
    hostModule,
    [
      `import { makeAidevopsHost } from ${JSON.stringify(pathToFileURL(join(ROOT, "__tests__", "helpers", "aidevops-host.mjs")).href)};`,
      `import { poolAuthHook, createPoolTool, poolConfigHook } from ${JSON.stringify(pathToFileURL(join(ROOT, "index.mjs")).href)};`,
      `const server = makeAidevopsHost({ pool: { poolAuthHook, createPoolTool, poolConfigHook }, order: "ours-first", options: { path: ${JSON.stringify(poolFile)} } });`,
      `export default { id: "aidevops-shaped", server };`,
      "",
    ].join("\n"),
  );
  writeFileSync(
    join(composed, "opencode.json"),
    JSON.stringify(
      {
        $schema: "https://opencode.ai/config.json",
        plugin: [pathToFileURL(hostModule).href],
        model: `anthropic-pool/${MODEL}`,
        autoupdate: false,
        share: "disabled",
      },
      null,
      2,
    ),
  );
  const composedEnv = { ...env, PWD: composed };
  const listedComposed = await run(bin, ["models", "anthropic-pool"], { env: composedEnv, cwd: composed });
  const composedModels = listedComposed.stdout.split("\n").filter((l) => l.startsWith("anthropic-pool/"));
  check(
    `aidevops-shaped host: our models are declared, not its stand-in (${composedModels.length})`,
    composedModels.includes(`anthropic-pool/${MODEL}`) && !composedModels.some((m) => m.includes("pool-account-management")),
    listedComposed.stdout.slice(0, 800) + listedComposed.stderr.slice(-800),
  );
  const { resetCooldowns } = await import(pathToFileURL(join(ROOT, "index.mjs")).href);
  await resetCooldowns(poolFile);
  // Whichever account the host's first request lands on answers 429 (alice's 5-hour window is
  // known to be full since step 3, so the pool prefers bob now; the test does not depend on it).
  await control("script", { responses: [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }] });
  const r5 = await run(bin, ["run", "--print-logs", "--model", `anthropic-pool/${MODEL}`, "hello from the composed plugin"], {
    env: composedEnv,
    cwd: composed,
  });
  const req5 = await newRequests();
  const limited = req5.find((r) => r.status === 429)?.email;
  const other = ["alice@example.com", "bob@example.com"].find((e) => e !== limited);
  const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  check(
    // The refused request was served by the other account (OpenCode's title request, beside the
    // prompt, may be the one refused: the prompt's answer can then come from either account).
    `aidevops-shaped host: a 429 fails over to the other account (${r5.ms} ms)`,
    r5.code === 0 && limited !== undefined && req5.some((r) => r.email === other && r.status === 200) && /Hello from \S+@example\.com/.test(r5.stdout),
    `exit ${r5.code}\nrequests: ${JSON.stringify(req5.map((r) => [r.email, r.status]))}\nstdout: ${r5.stdout.slice(-500)}\n${r5.stderr.slice(-1500)}`,
  );
  check(
    "aidevops-shaped host: the failover notice reached OpenCode through the host's client",
    limited !== undefined && new RegExp(`level=WARN [^\\n]*message="[^"\\n]*${esc(limited)}[^"\\n]*${esc(other)}[^"\\n]*" kind=failover`).test(r5.stderr),
    r5.stderr
      .split("\n")
      .filter((l) => /failover|moved to/.test(l))
      .join("\n") || "(no failover log line)",
  );
} catch (err) {
  check("scenario ran to the end", false, err?.stack ?? err);
} finally {
  await stop(mockProc.child);
  cleanup();
  if (keep) console.log(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}

finish(`OpenCode ${OPENCODE_VERSION}`);
