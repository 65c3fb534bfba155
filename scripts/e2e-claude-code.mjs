#!/usr/bin/env node
// End to end with the real Claude Code binary (pinned), offline, against the pool gateway
// (`serve()`) over the loopback mock of Anthropic: Claude Code is pointed at the gateway as the
// README says (ANTHROPIC_BASE_URL + ANTHROPIC_API_KEY = the gateway key) and must get the mock's
// streamed answer, sent upstream with the pool's bearer token and Claude Code's own identity; a
// 429 on the first account fails over to the second inside one Claude Code request; a tool call
// goes round trip; a wrong key gets Claude Code's auth error with nothing sent upstream; and
// nothing leaves loopback. Every request the mock receives is printed (secrets masked).
//
//   node scripts/e2e-claude-code.mjs [--keep] [--no-netns] [--no-strace]
//
// The binary (the platform package, ~400 MB unpacked) is installed once into
// node_modules/.cache/claude-code-e2e (npm). When it cannot be installed the script prints why and
// exits 0 with SKIP; any failed check exits 1.
//
// Keeping it offline, three layers, each used when the machine allows it:
//   1. a network namespace (`unshare -rn`, loopback brought up with `ip`): the whole scenario
//      re-runs inside it, so nothing can reach anything but loopback (not in most CI containers);
//   2. Claude Code's own switches (CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC and friends) and
//      HTTPS_PROXY / HTTP_PROXY pointing at a loopback guard that refuses and records every
//      tunnel or request (NO_PROXY keeps the gateway direct): without the switches, 2.1.332
//      asks the guard for api.anthropic.com:443 (MCP registry, event logging);
//   3. `strace -f -e trace=connect,sendto,sendmsg` around Claude Code when strace works: every
//      socket address it used, checked to be loopback.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { rateLimitHeaders, startMockAnthropic } from "../__tests__/helpers/mock-anthropic.mjs";
import { checks, installPinned, run as runChild, skip, versionOf } from "./e2e-kit.mjs";

const CLAUDE_CODE_VERSION = "2.1.332";
const SCRIPT = fileURLToPath(import.meta.url);
const ROOT = join(dirname(SCRIPT), "..");
const CACHE = join(ROOT, "node_modules", ".cache", "claude-code-e2e");
const RUN_TIMEOUT_MS = 60_000;
const MODEL = "claude-sonnet-4-5";
const keep = process.argv.includes("--keep");
const IN_NETNS = process.env.OAUTH_POOL_E2E_NETNS === "1";
const { check, finish } = checks();

// ---- the binary -------------------------------------------------------------------------------
function platformPackage() {
  const os = { linux: "linux", darwin: "darwin", win32: "win32" }[process.platform];
  const arch = { x64: "x64", arm64: "arm64" }[process.arch];
  if (!os || !arch) return null;
  const musl = process.platform === "linux" && !process.report?.getReport?.()?.header?.glibcVersionRuntime;
  return `@anthropic-ai/claude-code-${os}-${arch}${musl ? "-musl" : ""}`;
}

function ensureClaudeCode() {
  const pkg = platformPackage();
  if (!pkg) skip("e2e-claude-code", `no prebuilt Claude Code for ${process.platform}-${process.arch}`);
  return installPinned({
    script: "e2e-claude-code",
    cache: CACHE,
    pkg,
    version: CLAUDE_CODE_VERSION,
    bin: join(CACHE, "node_modules", ...pkg.split("/"), process.platform === "win32" ? "claude.exe" : "claude"),
    versionOf: (bin) => versionOf(bin)?.split(" ")[0],
  });
}

const bin = ensureClaudeCode();

// ---- layer 1: a network namespace with loopback only, when this machine allows one --------------
if (!IN_NETNS && !process.argv.includes("--no-netns") && process.platform === "linux") {
  const probe = spawnSync("unshare", ["-rn", "sh", "-c", "ip link set lo up"], { encoding: "utf8", timeout: 10_000 });
  if (probe.status === 0) {
    const r = spawnSync("unshare", ["-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', process.execPath, SCRIPT, ...process.argv.slice(2)], {
      stdio: "inherit",
      env: { ...process.env, OAUTH_POOL_E2E_NETNS: "1" },
    });
    process.exit(r.status ?? 1);
  }
  console.log(`     (no network namespace here: ${(probe.stderr || probe.error?.message || `exit ${probe.status}`).trim().split("\n")[0]})`);
}

// ---- layer 3: strace, when it works here ---------------------------------------------------------
const STRACE_ARGS = ["-f", "--seccomp-bpf", "-qq", "-e", "signal=none", "-e", "trace=connect,sendto,sendmsg"];
const straceWorks =
  process.platform === "linux" &&
  !process.argv.includes("--no-strace") &&
  spawnSync("strace", [...STRACE_ARGS, "-o", "/dev/null", "true"], { timeout: 10_000 }).status === 0;

/** The IPv4/IPv6 socket addresses in an strace log (connect, sendto, sendmsg). */
function socketAddresses(log) {
  const out = [];
  for (const m of log.matchAll(/sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)/g)) out.push(`${m[2]}:${m[1]}`);
  for (const m of log.matchAll(/sin6_port=htons\((\d+)\),[^}]*?inet_pton\(AF_INET6, "([^"]+)"/g)) out.push(`[${m[2]}]:${m[1]}`);
  return out;
}
const isLoopback = (addr) => /^(127\.|\[::1\]|\[::ffff:127\.)/.test(addr);

// ---- processes ----------------------------------------------------------------------------------
const run = (cmd, args, { env, cwd, timeoutMs = RUN_TIMEOUT_MS }) => runChild(cmd, args, { env, cwd, timeoutMs });

/** A loopback server; resolves its URL. */
function listen(server) {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${server.address().port}`)));
}

// ---- the scenario -----------------------------------------------------------------------------
const dir = mkdtempSync(join(tmpdir(), "oauth-pool-e2e-cc-"));
const home = join(dir, "home");
const project = join(dir, "project");
const logs = join(dir, "logs");
// Claude Code's own temp files (claude-XXXX dirs, its shell snapshots) go with `dir`.
const tmp = join(dir, "tmp");
for (const d of [home, project, logs, tmp]) mkdirSync(d, { recursive: true });
const poolFile = join(dir, "pool", "oauth-pool.json");
const KEY = `e2e-gateway-key-${randomBytes(16).toString("hex")}`;

// This process hosts the pool and the gateway: its HOME and pool path are the temp ones, so
// nothing here reads or writes a real ~/.aidevops.
process.env.HOME = home;
process.env.OAUTH_POOL_PATH = poolFile;
process.env.OAUTH_POOL_GATEWAY_KEY = KEY;
const mock = await startMockAnthropic({ port: 0 });
process.env.OAUTH_POOL_TOKEN_URL = mock.tokenUrl;
process.env.OAUTH_POOL_API_URL = mock.url;
const lib = await import(pathToFileURL(join(ROOT, "index.mjs")).href);

// Layer 2's guard: a proxy that records and refuses everything.
const guardLog = [];
const guard = http.createServer((req, res) => {
  guardLog.push(`${req.method} ${req.url}`);
  res.writeHead(403).end();
});
guard.on("connect", (req, socket) => {
  guardLog.push(`CONNECT ${req.url}`);
  socket.on("error", () => {});
  socket.end("HTTP/1.1 403 Forbidden\r\n\r\n");
});
const GUARD = await listen(guard);

const emails = ["alice@example.com", "bob@example.com"];
const now = new Date().toISOString();
await lib.savePool(
  {
    version: 1,
    anthropic: emails.map((email) => ({ email, ...mock.addAccount(email), added: now, lastUsed: null, status: "idle", rateLimitUntil: null })),
  },
  poolFile,
);
await lib.setPriority("alice@example.com", 10, poolFile);
const gw = await lib.serve({ port: 0, path: poolFile });
writeFileSync(join(project, "note.txt"), "the word of the day is pelican\n");

const baseEnv = {
  PATH: process.env.PATH,
  LANG: "C.UTF-8",
  TERM: "dumb",
  HOME: home,
  TMPDIR: tmp,
  XDG_CONFIG_HOME: join(home, ".config"),
  XDG_CACHE_HOME: join(home, ".cache"),
  XDG_DATA_HOME: join(home, ".local", "share"),
  XDG_STATE_HOME: join(home, ".local", "state"),
  ANTHROPIC_BASE_URL: gw.url,
  ANTHROPIC_API_KEY: KEY,
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
  DISABLE_TELEMETRY: "1",
  DISABLE_AUTOUPDATER: "1",
  DISABLE_ERROR_REPORTING: "1",
  HTTPS_PROXY: GUARD,
  HTTP_PROXY: GUARD,
  ALL_PROXY: GUARD,
  https_proxy: GUARD,
  http_proxy: GUARD,
  all_proxy: GUARD,
  NO_PROXY: "127.0.0.1,localhost",
  no_proxy: "127.0.0.1,localhost",
};

const straceLogs = [];
let runs = 0;
/** One `claude -p` call; its stream-json events parsed, its socket addresses when strace runs. */
async function claude(prompt, { env = {}, args = [] } = {}) {
  const n = ++runs;
  const claudeArgs = [
    "-p",
    prompt,
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    "--model",
    MODEL,
    "--no-session-persistence",
    "--strict-mcp-config",
    ...args,
  ];
  const straceLog = join(logs, `claude-${n}.strace`);
  const [cmd, argv] = straceWorks ? ["strace", [...STRACE_ARGS, "-o", straceLog, bin, ...claudeArgs]] : [bin, claudeArgs];
  const r = await run(cmd, argv, { env: { ...baseEnv, ...env }, cwd: project });
  writeFileSync(join(logs, `claude-${n}.out`), r.stdout);
  writeFileSync(join(logs, `claude-${n}.err`), r.stderr);
  if (straceWorks && existsSync(straceLog)) straceLogs.push(readFileSync(straceLog, "utf8"));
  const events = r.lines.flatMap(({ ms, line }) => {
    try {
      return [{ ms, ...JSON.parse(line) }];
    } catch {
      return [];
    }
  });
  const result = events.find((e) => e.type === "result");
  const deltas = events.filter((e) => e.type === "stream_event" && e.event?.delta?.type === "text_delta");
  const retries = events.filter((e) => e.type === "system" && e.subtype === "api_retry");
  const why = `exit ${r.code}${r.timedOut ? " (timed out)" : ""}; result ${JSON.stringify(result?.result)}\nstderr: ${r.stderr.slice(-800)}`;
  return { ...r, events, result, deltas, retries, why };
}

// Every request the mock receives is printed (secrets masked) and kept in logs/requests.json.
const masked = (v) => (typeof v === "string" && v.length > 12 ? `${v.slice(0, v.indexOf(" ") + 1)}…${v.slice(-6)}` : v);
let mark = 0;
function newRequests(label) {
  const fresh = mock.requests.slice(mark);
  mark = mock.requests.length;
  for (const r of fresh) {
    const h = r.headers;
    console.log(
      `     mock <- ${r.method} ${r.path} ${r.status} ${r.email ?? "-"} | ua=${JSON.stringify(h["user-agent"])} x-app=${h["x-app"]} ` +
        `auth=${h.authorization ? masked(h.authorization) : "none"}${h["x-api-key"] ? ` x-api-key=${masked(h["x-api-key"])}` : ""} beta=${h["anthropic-beta"]}`,
    );
  }
  const file = join(logs, "requests.json");
  const all = existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : [];
  const view = (r) => ({
    label,
    method: r.method,
    path: r.path,
    status: r.status,
    email: r.email,
    headers: {
      ...r.headers,
      ...(r.headers.authorization && { authorization: masked(r.headers.authorization) }),
      ...(r.headers["x-api-key"] && { "x-api-key": masked(r.headers["x-api-key"]) }),
    },
    bodyBytes: r.body.length,
  });
  writeFileSync(file, JSON.stringify([...all, ...fresh.map(view)], null, 2));
  return fresh;
}
const bearerOf = (email) => `Bearer ${mock.tokens(email).access}`;
const bodyOf = (r) => {
  try {
    return JSON.parse(r.body);
  } catch {
    return {};
  }
};

try {
  // 1. A prompt: the mock's answer streams through the gateway into Claude Code, word by word.
  const text = "Hello from alice@example.com through the pool gateway";
  mock.script("alice@example.com", [{ text, delayMs: 120 }]);
  const r1 = await claude("say hi");
  const req1 = newRequests("prompt");
  check(
    `Claude Code answers with the mock's text through the gateway (${r1.ms} ms)`,
    r1.code === 0 && r1.result?.result === text && !r1.result.is_error,
    r1.why,
  );
  const spread = r1.deltas.length ? r1.deltas.at(-1).ms - r1.deltas[0].ms : 0;
  check(
    `the answer streamed: ${r1.deltas.length} text deltas over ${spread} ms, as the mock sent them (120 ms apart)`,
    r1.deltas.length >= 5 && r1.deltas.map((d) => d.event.delta.text).join("") === text && spread >= 4 * 120 * 0.8,
    JSON.stringify(r1.deltas.map((d) => [d.ms, d.event.delta.text])),
  );
  const msg1 = req1.filter((r) => r.path.startsWith("/v1/messages"));
  check(
    "upstream: one POST /v1/messages?beta=true, streamed, with alice's bearer token from the pool",
    req1.length === 1 &&
      msg1.length === 1 &&
      msg1[0].method === "POST" &&
      msg1[0].path === "/v1/messages?beta=true" &&
      msg1[0].headers.authorization === bearerOf("alice@example.com") &&
      msg1[0].status === 200 &&
      bodyOf(msg1[0]).stream === true &&
      bodyOf(msg1[0]).model === MODEL,
    JSON.stringify(req1.map((r) => [r.method, r.path, r.status, r.email, masked(r.headers.authorization)])),
  );
  const h1 = msg1[0]?.headers ?? {};
  check(
    "the gateway key never went upstream (no x-api-key, no trace of it in any header or body)",
    req1.length > 0 && req1.every((r) => !("x-api-key" in r.headers) && !JSON.stringify(r.headers).includes(KEY) && !r.body.includes(KEY)),
    JSON.stringify(req1.map((r) => Object.keys(r.headers))),
  );
  check(
    `Claude Code's own identity and betas passed through, plus the OAuth beta (${h1["user-agent"]})`,
    new RegExp(`^claude-cli/${CLAUDE_CODE_VERSION.replaceAll(".", "\\.")} `).test(h1["user-agent"] ?? "") &&
      h1["x-app"] === "cli" &&
      h1["anthropic-version"] === "2023-06-01" &&
      ["oauth-2025-04-20", "claude-code-20250219"].every((b) => (h1["anthropic-beta"] ?? "").split(",").includes(b)),
    JSON.stringify(h1),
  );
  const tokens = emails.flatMap((e) => [mock.tokens(e).access, mock.tokens(e).refresh]);
  check(
    "no pool token reached Claude Code (its output and logs)",
    !tokens.some((t) => r1.stdout.includes(t) || r1.stderr.includes(t)),
    "a pool token appeared in Claude Code's output",
  );

  // 2. A 429 on alice: the same Claude Code request is served by bob, Claude Code sees no error.
  mock.script("alice@example.com", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }]);
  const r2 = await claude("say hi again");
  const req2 = newRequests("failover");
  check(
    `a 429 on alice fails over to bob within the same Claude Code call (${r2.ms} ms)`,
    r2.code === 0 && r2.result?.result === "Hello from bob@example.com" && r2.retries.length === 0,
    `${r2.why}\nClaude Code retries: ${JSON.stringify(r2.retries)}`,
  );
  const sessions = new Set(req2.map((r) => r.headers["x-claude-code-session-id"]));
  check(
    "the mock answered alice 429 then bob 200, for one request of Claude Code (one session id, retry count 0)",
    JSON.stringify(req2.map((r) => [r.email, r.status])) ===
      JSON.stringify([
        ["alice@example.com", 429],
        ["bob@example.com", 200],
      ]) &&
      req2[1].headers.authorization === bearerOf("bob@example.com") &&
      sessions.size === 1 &&
      req2.every((r) => r.headers["x-stainless-retry-count"] === "0"),
    JSON.stringify(req2.map((r) => [r.email, r.status, r.headers["x-claude-code-session-id"], r.headers["x-stainless-retry-count"]])),
  );
  const alice = JSON.parse(readFileSync(poolFile, "utf8")).anthropic.find((a) => a.email === "alice@example.com");
  check("alice is rate-limited in the pool file", alice?.status === "rate-limited" && alice.rateLimitUntil > Date.now(), JSON.stringify(alice));

  // 3. A tool call round trip: the model asks for Read, Claude Code runs it, the result goes back.
  mock.scriptAll([{ toolUse: { name: "Read", input: { file_path: join(project, "note.txt") } } }, { text: "The note says pelican." }]);
  const r3 = await claude("what does note.txt say?", { args: ["--allowedTools", "Read"] });
  const req3 = newRequests("tool");
  const toolResult = req3
    .slice(1)
    .flatMap((r) => bodyOf(r).messages ?? [])
    .flatMap((m) => (Array.isArray(m.content) ? m.content : []))
    .find((p) => p.type === "tool_result");
  check(
    `a Read tool call goes round trip through the gateway (${r3.ms} ms)`,
    r3.code === 0 &&
      r3.result?.result === "The note says pelican." &&
      req3.length === 2 &&
      req3.every((r) => r.status === 200 && r.headers.authorization === bearerOf("bob@example.com")) &&
      JSON.stringify(toolResult?.content ?? "").includes("pelican"),
    `${r3.why}\nrequests: ${JSON.stringify(req3.map((r) => [r.email, r.status]))}\ntool_result: ${JSON.stringify(toolResult)}`,
  );

  // 4. A wrong key: Claude Code's auth error, nothing upstream. Claude Code retries a 401 ten
  // times over minutes (against Anthropic's API as well), so its retries are turned off here.
  const noRetry = { CLAUDE_CODE_MAX_RETRIES: "0" };
  const r4 = await claude("say hi", { env: { ...noRetry, ANTHROPIC_API_KEY: "not-the-gateway-key" } });
  const req4 = newRequests("wrong key");
  check(
    `a wrong key gets Claude Code's auth error (${JSON.stringify(r4.result?.result)})`,
    r4.code !== 0 && r4.result?.is_error === true && /Invalid API key/i.test(r4.result?.result ?? ""),
    r4.why,
  );
  check("a wrong key sends nothing upstream", req4.length === 0, JSON.stringify(req4.map((r) => [r.method, r.path, r.status])));

  // 5. Offline: nothing but loopback.
  const addresses = socketAddresses(straceLogs.join("\n"));
  const layers = [IN_NETNS && "network namespace", "proxy guard", straceWorks && `strace (${addresses.length} socket addresses)`].filter(Boolean);
  const gatewayAddr = `127.0.0.1:${new URL(gw.url).port}`;
  check(
    `no non-loopback connection attempted [${layers.join(", ")}]`,
    guardLog.length === 0 && addresses.every(isLoopback) && (!straceWorks || addresses.includes(gatewayAddr)),
    `guard: ${JSON.stringify(guardLog)}\nnon-loopback: ${JSON.stringify([...new Set(addresses.filter((a) => !isLoopback(a)))])}`,
  );
} catch (err) {
  check("scenario ran to the end", false, err?.stack ?? err);
} finally {
  await gw.close(1000).catch(() => {});
  await mock.close();
  guard.close();
  if (keep) console.log(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}

finish(`Claude Code ${CLAUDE_CODE_VERSION}`);
