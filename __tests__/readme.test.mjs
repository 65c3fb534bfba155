// The README's code examples, run as they are written against the loopback mock (a temp HOME and
// pool file, never the real ~/.aidevops). Only what a reader must fill in is supplied: the code
// pasted after logging in, the request's headers and body, and the host's own parts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tempPoolPath, useMock } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

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

// ---- the README's tables against the code: drift a reader would meet first ----------------------

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const source = (file) => readFileSync(`${ROOT}${file}`, "utf8");
const CONTRACT_PATH = "/work/shared/CONTRACT.md";

/** The text of `## <section>` up to the next `## ` heading. */
function section(name) {
  const at = README.indexOf(`\n## ${name}\n`);
  assert.ok(at >= 0, `README has a section ${name}`);
  const end = README.indexOf("\n## ", at + 4);
  return README.slice(at, end < 0 ? undefined : end);
}

/** The first cells of a section's table rows (`| first | ... |`), from the row after `header`. */
function firstCells(text, header) {
  const at = text.indexOf(header);
  assert.ok(at >= 0, `the table headed ${header}`);
  const rows = [];
  for (const line of text.slice(at).split("\n").slice(2)) {
    if (!line.startsWith("|")) break;
    rows.push(line.slice(1, line.indexOf(" | ", 1)).trim());
  }
  return rows;
}

const ticked = (cell) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1].replaceAll("\\|", "|"));

test("CLI: every command in the README's table is the CLI's own synopsis, and every command of the CLI is in the table", async () => {
  const { COMMANDS, commandHelp } = await import("../lib/cli/commands.mjs");
  const documented = firstCells(section("CLI"), "| command | does |").flatMap(ticked);
  const names = [...COMMANDS.keys()].sort((a, b) => b.length - a.length);
  const seen = new Set();
  for (const synopsis of documented) {
    const name = names.find((n) => synopsis === n || synopsis.startsWith(`${n} `));
    assert.ok(name, `the README documents a command the CLI does not have: oauth-pool ${synopsis}`);
    seen.add(name);
    const real = commandHelp(COMMANDS.get(name)).split("\n")[0].replace("usage: oauth-pool ", "");
    assert.equal(synopsis, real, `the README's synopsis of ${name} is the CLI's`);
  }
  assert.deepEqual(
    names.filter((n) => !seen.has(n)),
    [],
    "every command of the CLI has a row in the README",
  );
  // The names the contract fixes (CLI names fixed by issues) are there, flags included.
  const serve = COMMANDS.get("serve");
  for (const flag of ["host", "port", "show-key", "allow-remote", "tls-cert", "tls-key"]) assert.ok(serve.options[flag], `serve --${flag}`);
  assert.deepEqual(Object.keys(COMMANDS.get("store copy").options).sort(), ["from", "to"]);
  assert.equal(COMMANDS.get("reserve").args, "<email> <fraction>");
  assert.ok(COMMANDS.has("store init"));
});

test("CLI: every `oauth-pool <command>` a message or the README tells a person to run is a command of the CLI", async () => {
  const { COMMANDS, subcommands } = await import("../lib/cli/commands.mjs");
  const files = [
    ...["src", "lib"].flatMap((dir) =>
      readdirSync(`${ROOT}${dir}`, { recursive: true })
        .filter((f) => /\.(rs|mjs)$/.test(f))
        .map((f) => `${dir}/${f}`),
    ),
    "README.md",
    "plugin.mjs",
  ];
  const named = new Set();
  for (const file of files) {
    // As a person is told it: in backquotes, or after "with:" / "run:" in a message.
    for (const m of source(file).matchAll(/(?:`|(?:with|run|use): )oauth-pool ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?/g)) {
      const [, first, second] = m;
      if (first.startsWith("-")) continue;
      const name = second && COMMANDS.has(`${first} ${second}`) ? `${first} ${second}` : first;
      // `oauth-pool store --help`: a group's word alone is a command line too.
      assert.ok(
        COMMANDS.has(name) || name === "help" || subcommands(name).length > 0,
        `${file} tells a person to run oauth-pool ${name}, which the CLI does not have`,
      );
      named.add(name);
    }
  }
  assert.ok(named.size >= 10, `found the commands named (${[...named].join(", ")})`);
});

test("Error codes: the README's table, index.d.ts, the code that raises them and the contract agree", () => {
  const table = firstCells(section("Error codes"), "| code | when |").flatMap(ticked);
  const typed = [...source("index.d.ts").matchAll(/^ {2}\| "([A-Z_]+)"/gm)].map((m) => m[1]);
  assert.deepEqual([...table].sort(), [...typed].sort(), "index.d.ts's ErrorCode is the README's table");
  // Raised: the Rust error's code() strings, and the codes the JavaScript library sets itself.
  const codeFn = source("src/error.rs").match(/pub fn code\(&self\)[\s\S]*?\n {4}\}\n/);
  assert.ok(codeFn, "src/error.rs has code()");
  const raised = new Set([...codeFn[0].matchAll(/"([A-Z][A-Z_]+)"/g)].map((m) => m[1]));
  for (const file of readdirSync(`${ROOT}lib`, { recursive: true }).filter((f) => f.endsWith(".mjs") && !f.startsWith("cli"))) {
    for (const m of source(`lib/${file}`).matchAll(/\bcode = "([A-Z][A-Z_]+)"/g)) raised.add(m[1]);
  }
  assert.deepEqual(
    [...raised].filter((c) => !table.includes(c)),
    [],
    "every code the library raises is in the README's table",
  );
  // ABORT_ERR is the pool's own word for an abort; the rejection is the signal's reason (fetch's).
  assert.deepEqual(
    table.filter((c) => !raised.has(c) && c !== "ABORT_ERR"),
    [],
    "every code in the table is raised somewhere",
  );
  // The CLI's own two, named under the table.
  assert.match(section("Error codes"), /The CLI adds `USAGE` \(exit 2\) and `CANCELLED`/);
});

test("Error codes: every code the contract fixes is in the README's table", { skip: !existsSync(CONTRACT_PATH) && "no contract here" }, () => {
  const table = new Set(firstCells(section("Error codes"), "| code | when |").flatMap(ticked));
  const contract = readFileSync(CONTRACT_PATH, "utf8");
  const fixed = new Set(
    [...contract.matchAll(/`([A-Z][A-Z_]{3,})`/g)].map((m) => m[1]).filter((c) => !/^(OAUTH_POOL_|HTTPS?_PROXY|NO_PROXY|ANTHROPIC_MODELS$)/.test(c)),
  );
  assert.deepEqual(
    [...fixed].filter((c) => !table.has(c)),
    [],
  );
});

test("Configuration: the README's variables are the ones the pool reads, with the defaults it applies", () => {
  const cells = firstCells(section("Configuration"), "| variable | default | meaning |");
  const documented = new Set(cells.flatMap(ticked));
  // Every variable the addon reads goes through src/config.rs's list (HOME is the system's).
  const read = [...source("src/config.rs").matchAll(/^ {8}[A-Z_]+ = "([A-Za-z_]+)";$/gm)].map((m) => m[1]).filter((v) => !["HOME", "USERPROFILE"].includes(v));
  assert.ok(read.length > 15, "found src/config.rs's list");
  assert.deepEqual(
    read.filter((v) => !documented.has(v) && !documented.has(v.toUpperCase())),
    [],
    "every variable the addon reads is documented",
  );
  const jsRead = source("lib/plugin/config.mjs");
  assert.deepEqual(
    [...documented].filter((v) => !read.includes(v) && !jsRead.includes(`env.${v}`)),
    [],
    "every documented variable is read",
  );
  // The settings' defaults as src/settings.rs applies them.
  const settings = source("src/settings.rs");
  const names = Object.fromEntries([...source("src/config.rs").matchAll(/^ {8}([A-Z_]+) = "([A-Za-z_]+)";$/gm)].map((m) => [m[1], m[2]]));
  const rows = Object.fromEntries(
    README.slice(README.indexOf("| variable | default | meaning |"))
      .split("\n")
      .filter((l) => l.startsWith("| `OAUTH_POOL_"))
      .map((l) => l.split(" | ").map((c) => c.replace(/^\| /, "")))
      .map(([v, d]) => [v.replaceAll("`", ""), d]),
  );
  let checked = 0;
  for (const m of settings.matchAll(/variable: var::([A-Z_]+),\s*rule: Rule::(\w+)[^,]*,\s*default: ([\d._]+),/g)) {
    const [, constant, rule, value] = m;
    const variable = names[constant];
    const shown = rows[variable];
    assert.ok(shown, `${variable} has a row`);
    const number = Number(value.replaceAll("_", ""));
    if (rule === "OffSwitch") assert.match(shown, /^on\b/, `${variable}: on by default`);
    else assert.equal(Number(/`([\d.]+)`/.exec(shown)?.[1]), number, `${variable}'s default is ${number}`);
    checked++;
  }
  assert.equal(checked, 6, "every setting of src/settings.rs was compared");
});

test("Library: the README's table names every export, index.d.ts types each one", async () => {
  const library = section("Library");
  const names = new Set(firstCells(library, "| export | does |").flatMap((cell) => ticked(cell).map((t) => /^[A-Za-z_]+/.exec(t)?.[0])));
  const exports = Object.keys(await import(INDEX));
  assert.deepEqual(
    exports.filter((k) => !names.has(k)),
    [],
    "every export has a row",
  );
  assert.deepEqual(
    [...names].filter((n) => !exports.includes(n)),
    [],
    "every row is an export",
  );
  const dts = source("index.d.ts");
  assert.deepEqual(
    exports.filter((k) => !new RegExp(`export (?:function|const) ${k}\\b`).test(dts)),
    [],
    "every export is typed",
  );
  // createPoolFetch's options as documented are the ones it takes (and types).
  const documented = /`createPoolFetch\(\{ ([^}]*) \}\)`/.exec(library)?.[1];
  assert.ok(documented, "the README gives createPoolFetch's options");
  const options = documented.split(",").map((o) => o.trim().replace(/\?$/, ""));
  const fetchSource = source("lib/fetch.mjs");
  const taken = /knownOptions\("createPoolFetch's options", [^,]+, \[([^\]]+)\]\)/.exec(fetchSource)?.[1].match(/[a-zA-Z]+/g);
  assert.deepEqual([...options].sort(), [...taken].sort());
  const typed = /export interface PoolFetchOptions \{([\s\S]*?)\n\}/.exec(dts)?.[1];
  for (const o of options) assert.match(typed, new RegExp(`\\n {2}${o}\\?:`), `PoolFetchOptions types ${o}`);
});

// "A panic inside the addon ... must not take OpenCode down with it: ... every synchronous entry
// point is `#[napi(catch_unwind)]`". A panic that unwinds to a Node-API callback without it ends
// the process (an `extern "C"` function cannot unwind): the call that builds a promise runs its
// first part on the JavaScript thread too (`judge` reads the answer's headers there).
test("Reliability: every entry point of the addon not an `async fn` is #[napi(catch_unwind)]", () => {
  assert.match(section("Reliability: what is tested"), /every synchronous entry point is `#\[napi\(catch_unwind\)\]`/);
  const unguarded = [];
  let entries = 0;
  for (const file of readdirSync(`${ROOT}src`, { recursive: true }).filter((f) => f.endsWith(".rs"))) {
    const lines = source(`src/${file}`).split("\n");
    for (const [i, line] of lines.entries()) {
      if (!/^\s*#\[napi[\]( ]/.test(line)) continue;
      // The attribute, over as many lines as rustfmt gave it, and the item it is on (past doc
      // comments and other attributes).
      const end = lines.findIndex((l, j) => j >= i && /\]\s*$/.test(l));
      const attribute = lines.slice(i, end + 1).join(" ");
      const item = lines.slice(end + 1).find((l) => !/^\s*(\/\/|#\[)/.test(l)) ?? "";
      if (!/^\s*(pub(\([a-z]+\))? )?fn /.test(item)) continue; // a struct, an impl, an object, or an async fn
      entries++;
      if (!/\bcatch_unwind\b/.test(attribute)) unguarded.push(`src/${file}:${i + 1} ${item.trim()}`);
    }
  }
  assert.ok(entries >= 40, `found the entry points (${entries})`);
  assert.deepEqual(unguarded, []);
});

// "Two commands": the README shows what `npm run demo` prints; nothing ran the demo, and a change
// to an event's wording or to the demo left the README showing output it no longer gives.
test("Two commands: `npm run demo` prints what the README shows (times aside), and exits 0", async () => {
  const { spawnSync } = await import("node:child_process");
  const { rmSync } = await import("node:fs");
  const at = README.indexOf("`npm run demo` prints");
  assert.ok(at >= 0, "the README says what the demo prints");
  const shown = /```\n([\s\S]*?)```/.exec(README.slice(at))?.[1];
  assert.ok(shown, "the demo's output block");
  // The demo makes its throwaway pool under the temp directory: this one, removed after.
  const scratch = tempDir("oauth-pool-demo-test-");
  try {
    const env = { ...process.env, HOME: scratch, TMPDIR: scratch };
    for (const k of ["OAUTH_POOL_PATH", "OAUTH_POOL_LOG", "OAUTH_POOL_STORE", "OAUTH_POOL_HOLD_MAX_MS"]) delete env[k];
    const run = spawnSync(process.execPath, [fileURLToPath(new URL("../scripts/demo.mjs", import.meta.url))], { env, encoding: "utf8", timeout: 30_000 });
    assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
    // The README's lines in order; `...` stands for lines left out; times, dates, the "last
    // used" stamps and how many chunks the stream came in (the runtime's and the scheduler's
    // doing) vary.
    const literal = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = shown
      .trimEnd()
      .split("\n")
      .map((line) =>
        line === "..."
          ? "(?:.*\\n)*?"
          : `${literal(line)
              .replace(/\d\d:\d\d UTC \\\(in \d+ h \d+ min\\\)/g, "(?:\\w{3} \\d+ \\w{3} )?\\d\\d:\\d\\d UTC \\(in (?:1 h 59 min|2 h 0 min)\\)")
              .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\\\.\d{3}Z/g, "\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z")
              .replace(/last used \\\.\\\.\\\.$/, "last used \\S+")
              .replace(/, \d+ chunks streamed/, ", \\d+ chunks streamed")}\\n`,
      )
      .join("");
    assert.match(run.stdout, new RegExp(pattern), `the README's demo output, against:\n${run.stdout}`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});

// "Install": the table of prebuilt packages is what a user installs by hand when NATIVE_MISSING
// names one. Each row must be a package this project publishes (npm/<triple>, listed in
// optionalDependencies, built for a napi target), and each package must say which machine it is
// for (npm installs only the one that fits by `os`, `cpu` and, on Linux, `libc`).
test("Install: the README's prebuilt packages are the optional dependencies, one per napi target, each fenced to its machine", async () => {
  const { readdirSync } = await import("node:fs");
  const pkg = JSON.parse(source("package.json"));
  const cells = section("Install")
    .split("\n")
    .filter((l) => /^\| .* \| .*`.*\|$/.test(l))
    .flatMap((l) => ticked(l.split(" | ")[1]));
  const documented = cells.map((c) => (c.startsWith("-") ? `${pkg.name}${c}` : c)).sort();
  const optional = Object.keys(pkg.optionalDependencies).sort();
  assert.deepEqual(documented, optional, "the README's table is the optional dependencies");
  const dirs = readdirSync(`${ROOT}npm`).sort();
  assert.deepEqual(
    dirs.map((d) => `${pkg.name}-${d}`),
    optional,
    "one npm/<triple> per optional dependency",
  );
  assert.equal(pkg.napi.targets.length, dirs.length, "one napi target per platform package");
  const arch = { x64: "x86_64", arm64: "aarch64" };
  for (const d of dirs) {
    const manifest = JSON.parse(source(`npm/${d}/package.json`));
    const [os, cpu, abi] = d.split("-");
    assert.equal(manifest.name, `${pkg.name}-${d}`);
    assert.equal(manifest.version, pkg.optionalDependencies[manifest.name], `${d}: the version the package asks for`);
    assert.deepEqual([manifest.os, manifest.cpu], [[os], [cpu]], `${d}: os and cpu`);
    if (os === "linux") assert.deepEqual(manifest.libc, [abi === "musl" ? "musl" : "glibc"], `${d}: libc`);
    assert.equal(manifest.main, `${pkg.napi.binaryName}.${d}.node`, `${d}: the binary lib/native.mjs resolves`);
    assert.ok(
      pkg.napi.targets.some(
        (t) => t.startsWith(`${arch[cpu]}-`) && t.includes(os === "win32" ? "windows-msvc" : os === "darwin" ? "apple-darwin" : `linux-${abi}`),
      ),
      `${d}: built by a napi target`,
    );
  }
});
