// `oauth-pool doctor`'s look at OpenCode: whether its configuration loads the plugin (once, under
// the key the installed generation reads), which pool the plugin would use, whether the
// person's own settings send the requests elsewhere (a provider hidden, a baseURL off the pool's
// API, another SDK, a model of OpenCode's own `anthropic` provider or one the pool does not
// offer), and whether OpenCode's installed copy of the plugin has its native binary. The
// plugin's own rules are asked (its options, its provider entry, its models), never re-derived.
// Nothing here writes, and every read is of a small local file, bounded and never waiting on a
// FIFO or a device named like one (readRegularFile).
import { lstatSync, readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { unloadableReason } from "../binary-check.mjs";
import { scrubbed } from "../errors.mjs";
import { ANTHROPIC_MODELS } from "../plugin/models.mjs";
import {
  MAX_CATALOG_BYTES,
  apiBaseURL,
  cachedAnthropicModels,
  isPlaceholderEntry,
  mergeUserWins,
  modelsCachePath,
  readRegularFile,
  usableEntry,
} from "../plugin/config.mjs";
import { apiOrigin, pluginOptions, unknownOptions, unknownOptionsMessage } from "../plugin/shared.mjs";
import {
  MAX_MANIFEST_BYTES,
  isLocalSpec,
  loadedPlugins,
  localPackageDir,
  localSpecPath,
  opencodeConfigDir,
  pluginEntries,
  pluginIdentity,
  MAX_CONFIG_MB,
  readOpencodeConfigs,
} from "./opencode-config.mjs";

const PACKAGE = "opencode-oauth-pool";
const VERSION = (() => {
  try {
    return JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")).version;
  } catch {
    return null;
  }
})();
// A plugin file of OpenCode's plugin directories larger than this is no wrapper of ours.
const MAX_PLUGIN_FILE = 1024 * 1024;
// What a person adds, said the same way everywhere.
const ADD_LINE = `"plugin": ["${PACKAGE}"]`;

/** A value from a config file as a message quotes it: bounded, token-shaped text redacted. */
const shownText = (v) => scrubbed(String(v).slice(0, 120));
const isPlainObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const exists = (p) => {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
};

/** The file among `configs` that last sets `keys` (the one to edit), or null. */
function setter(configs, keys) {
  for (const { file, config } of [...configs].reverse()) {
    let v = config;
    for (const k of keys) v = isPlainObject(v) && Object.hasOwn(v, k) ? v[k] : undefined;
    if (v !== undefined) return file;
  }
  return null;
}

/** The configs merged as OpenCode merges them (later files win, key by key). */
function merged(configs) {
  let out = {};
  for (const { config } of configs) if (isPlainObject(config)) out = mergeUserWins(out, config);
  return out;
}

// ---- the plugin's entries -----------------------------------------------------------------------

function checkBroken(broken, r) {
  for (const { file, error } of broken) {
    r.add(
      "opencode config",
      "problem",
      `${file} is not valid JSON with comments (${error}): OpenCode refuses to start with it ("Config file at … is not valid JSON(C)"); ${/ at line \d+/.test(error) ? "fix that line" : "fix it (opencode debug config shows where)"}`,
      { file },
    );
  }
}

// A config path that holds a FIFO, a device, a directory or a huge file was passed over without
// a word (OPENCODE_CONFIG=/dev/zero), and what doctor then said of the plugin left it out.
function checkUnread(unread, r) {
  for (const { file, what, code } of unread) {
    // One this user may not read is no wrong kind of file: the note on what a config is would mislead.
    const kind = code ? "" : `; a config is a regular file of at most ${MAX_CONFIG_MB} MB`;
    r.add("opencode config", "warn", `${file} is left unread (${what}${kind}): what doctor says of the plugin leaves it out`, {
      file,
      ...(code ? { code } : {}),
    });
  }
}

/** The plugin's options in each entry, read by the plugin's own rules. */
function checkOptions(entries, replaced, r) {
  for (const e of entries) {
    const where = `${e.file} (${e.spec})`;
    const details = { file: e.file, spec: e.spec };
    const by = replaced.find((x) => x.entry === e)?.by;
    if (by && JSON.stringify(by.options ?? null) !== JSON.stringify(e.options ?? null)) {
      r.add(
        "plugin options",
        "info",
        `${where}: not used: OpenCode keeps one entry per plugin, the last it reads, which is ${by.file} (${by.spec}) with ${by.options === undefined ? "no options" : "its own options"}`,
        details,
      );
      continue;
    }
    try {
      pluginOptions(e.options);
    } catch (err) {
      r.add("plugin options", "problem", `${where}: ${err.message}: OpenCode does not load the plugin`, { ...details, code: err.code });
      continue;
    }
    const unknown = unknownOptions(e.options);
    if (unknown.length) r.add("plugin options", "warn", `${where}: ${unknownOptionsMessage(unknown)}`, { ...details, unknown });
    else r.add("plugin options", "ok", `${where}: ${e.options === undefined ? "no options" : "options taken as written"}`, details);
  }
}

/** Plugin files OpenCode loads from its plugin directories that mention this package (a wrapper). */
async function wrapperFiles(configs) {
  const dirs = new Set([join(opencodeConfigDir(), "plugin"), join(opencodeConfigDir(), "plugins")]);
  for (const sub of ["plugin", "plugins"]) {
    dirs.add(join(process.cwd(), ".opencode", sub));
    if (process.env.OPENCODE_CONFIG_DIR) dirs.add(join(process.env.OPENCODE_CONFIG_DIR, sub));
  }
  for (const { file } of configs) {
    if (file === "OPENCODE_CONFIG_CONTENT") continue;
    const dir = file.replace(/[/\\][^/\\]+$/, "");
    for (const sub of ["plugin", "plugins"]) dirs.add(join(dir.endsWith(".opencode") ? dir : join(dir, ".opencode"), sub));
  }
  const found = [];
  for (const dir of dirs) {
    let names;
    try {
      names = readdirSync(dir).filter((n) => /\.(js|ts|mjs)$/.test(n));
    } catch {
      continue;
    }
    for (const n of names.slice(0, 50)) {
      const file = join(dir, n);
      if ((await readRegularFile(file, MAX_PLUGIN_FILE))?.includes(PACKAGE)) found.push(file);
    }
  }
  return found;
}

/**
 * Whether OpenCode loads the plugin at all, once, and under the key it reads. Returns the
 * entries it loads (null when none).
 */
async function checkLoaded(configs, broken, unread, entries, r) {
  const ours = entries.filter((e) => e.ours);
  const { kept, replaced } = loadedPlugins(entries);
  checkOptions(ours, replaced, r);
  const global = join(opencodeConfigDir(), "opencode.json");
  if (ours.length === 0) {
    const via = [...entries.filter((e) => /aidevops/i.test(e.spec)).map((e) => `${e.spec} (${e.file})`), ...(await wrapperFiles(configs))];
    if (via.length) {
      r.add("opencode plugin", "info", `no OpenCode config lists ${PACKAGE}; ${via.join(", ")} may load the pool itself`, { via });
    } else if (broken.length) {
      // The file that does not parse may be the one that lists it; OpenCode does not start anyway.
    } else if (unread.length && configs.length === 0) {
      // A file is there (said above), unread: "no OpenCode config file here" was not so.
    } else if (configs.length === 0) {
      r.add(
        "opencode plugin",
        "info",
        `no OpenCode config file here (${global}, or opencode.json in the project): for OpenCode to use the pool, add ${ADD_LINE} to one`,
      );
    } else {
      r.add(
        "opencode plugin",
        "warn",
        `no OpenCode config here lists the plugin (read: ${configs.map((c) => c.file).join(", ") || "none that parses"}): OpenCode offers no anthropic-pool provider; add ${ADD_LINE} to ${global} (or the project's opencode.json)`,
      );
    }
    return null;
  }
  const loaded = kept.filter((e) => e.ours);
  const v2only = ours.filter((e) => e.key === "plugins");
  if (loaded.length === 0 && v2only.length) {
    const files = [...new Set(v2only.map((e) => e.file))].join(", ");
    r.add(
      "opencode plugin",
      "warn",
      `${files} lists the plugin under "plugins", OpenCode 2's key: OpenCode 1.x reads only "plugin" and loads nothing from "plugins"; on 1.x write ${ADD_LINE}`,
      { files: [...new Set(v2only.map((e) => e.file))] },
    );
    return v2only.slice(-1);
  }
  if (loaded.length > 1) {
    r.add(
      "opencode plugin",
      "warn",
      `OpenCode loads the plugin ${loaded.length} times, under different names: ${loaded.map((e) => `${e.spec} (${e.file})`).join(", ")}: each copy adds the login methods, the tool and the provider's hooks again; keep one entry`,
      { specs: loaded.map((e) => e.spec) },
    );
  } else {
    r.add("opencode plugin", "ok", `OpenCode loads ${loaded[0].spec} (${loaded[0].file})`, { file: loaded[0].file, spec: loaded[0].spec });
  }
  return loaded;
}

// ---- which pool ---------------------------------------------------------------------------------

/** `fn()` with `names` unset in this process's environment (the addon reads it at each call). */
function withoutEnv(names, fn) {
  const saved = names.map((n) => [n, process.env[n]]);
  for (const n of names) delete process.env[n];
  try {
    return fn();
  } finally {
    for (const [n, v] of saved) if (v !== undefined) process.env[n] = v;
  }
}

function checkPool(lib, files, entry, opts, report) {
  // Two copies without a path of their own would say the same: once is enough.
  const r = { add: (name, level, message, extra) => report.checks.some((c) => c.message === message) || report.add(name, level, message, extra) };
  const here = files.path ?? files.location;
  if (opts.path) {
    let there;
    try {
      const f = lib.poolFiles(opts.path);
      there = f.path ?? f.location;
    } catch (e) {
      return r.add("opencode pool", "problem", `${entry.file}: the plugin's path option: ${e.message}`, { code: e.code });
    }
    const relative = !isAbsolute(opts.path) && !opts.path.startsWith("~") && !/^postgres(ql)?:/i.test(opts.path);
    const note = relative ? ` (a relative path: OpenCode takes it from the directory it runs in, so each project has a pool of its own)` : "";
    if (there !== here) {
      return r.add(
        "opencode pool",
        "warn",
        `OpenCode's plugin uses ${there} (the path option in ${entry.file})${note}, not ${here} that this report is on: check it with: oauth-pool doctor --path ${there}`,
        { pool: there },
      );
    }
    return r.add("opencode pool", relative ? "warn" : "ok", `OpenCode's plugin uses this pool (the path option in ${entry.file})${note}`, { pool: there });
  }
  if (files.source !== "OAUTH_POOL_PATH" && files.source !== "AIDEVOPS_OAUTH_POOL_FILE" && files.source !== "argument") return;
  // The plugin has no path of its own: it takes the pool from OpenCode's environment.
  const fromEnv = files.source === "argument" ? lib.poolFiles() : null;
  if (fromEnv) {
    const there = fromEnv.path ?? fromEnv.location;
    if (there !== here) r.add("opencode pool", "info", `OpenCode's plugin (no path option) uses ${there}, not ${here} given with --path`, { pool: there });
    return;
  }
  let fallback;
  try {
    fallback = withoutEnv(["OAUTH_POOL_PATH", "AIDEVOPS_OAUTH_POOL_FILE", "OAUTH_POOL_STORE"], () => lib.poolFiles());
  } catch {
    return;
  }
  if (fallback.path === here) return;
  const other = exists(fallback.path);
  r.add(
    "opencode pool",
    other ? "warn" : "info",
    `${files.source} is set here: OpenCode uses ${here} only when it starts with the same ${files.source}; started without it (another terminal, a desktop launcher, a service) it uses ${fallback.path}${other ? ", which exists too: two pools" : ""}; to make it the same everywhere, give the plugin ${`["${PACKAGE}", { "path": "${here}" }]`}`,
    { pool: here, without: fallback.path },
  );
}

// ---- the provider and the models ----------------------------------------------------------------

function checkHidden(configs, all, provider, r) {
  const disabled = all.disabled_providers;
  if (Array.isArray(disabled) && disabled.includes(provider)) {
    r.add(
      "provider",
      "problem",
      `${setter(configs, ["disabled_providers"])}: "disabled_providers" lists "${provider}": OpenCode hides the pool's provider ("Provider not found"); remove it from that list`,
    );
  }
  const enabled = all.enabled_providers;
  if (Array.isArray(enabled) && !enabled.includes(provider)) {
    r.add(
      "provider",
      "problem",
      `${setter(configs, ["enabled_providers"])}: "enabled_providers" leaves out "${provider}": OpenCode offers only the providers listed there; add "${provider}" to it`,
    );
  }
}

function checkBaseURL(configs, entry, provider, r) {
  const base = entry?.options?.baseURL;
  if (typeof base !== "string" || base.trim() === "") return;
  const file = setter(configs, ["provider", provider, "options", "baseURL"]);
  const where = `${file}: provider["${provider}"].options.baseURL`;
  const ours = apiBaseURL();
  let url;
  try {
    url = new URL(base.trim());
  } catch {
    return r.add("provider", "problem", `${where} is not a URL: every request fails; remove it (the plugin sets ${ours})`);
  }
  const origin = new URL(apiOrigin()).origin;
  if (url.origin !== origin) {
    // Offered only where the pool would take it: plain http is refused off a loopback host.
    const loopback = /^(localhost|127(\.\d{1,3}){3}|\[::1\])$/i.test(url.hostname);
    const through =
      url.protocol === "https:" || (url.protocol === "http:" && loopback) ? `, or set OAUTH_POOL_API_URL=${url.origin} to pool through that origin` : "";
    return r.add(
      "provider",
      "problem",
      `${where} is ${url.origin}, not the pool's API origin (${origin}): no account of the pool serves it, every request fails with INSECURE_ENDPOINT and nothing is sent; remove options.baseURL (or set it to ${ours})${through}`,
    );
  }
  if (url.pathname.replace(/\/+$/, "") !== "/v1") {
    // Shown without what a URL can carry besides its place (a password, a query with a key).
    const shown = `${url.origin}${url.pathname}`;
    const sent = `${shown.replace(/\/+$/, "")}/messages`;
    r.add(
      "provider",
      "problem",
      `${where} is ${shown}: OpenCode sends to ${sent}, which the API does not serve (404, "Not found"); set it to ${ours} or remove it (the plugin sets it)`,
    );
  }
}

function checkPackage(configs, entry, provider, r) {
  const npm = entry?.npm;
  if (typeof npm !== "string" || /^@ai-sdk\/anthropic(@[^/]*)?$/.test(npm.trim())) return;
  r.add(
    "provider",
    "warn",
    `${setter(configs, ["provider", provider, "npm"])}: provider["${provider}"].npm is "${shownText(npm)}": OpenCode builds the provider with that package instead of @ai-sdk/anthropic, and the pool serves Anthropic's Messages API only; remove "npm" (the plugin sets @ai-sdk/anthropic)`,
  );
}

/** The models' catalog the plugin mirrors: OpenCode's cache, else the built-in table. */
async function checkCatalog(r) {
  const file = modelsCachePath();
  const cached = await cachedAnthropicModels(file);
  const builtIn = Object.keys(ANTHROPIC_MODELS).length;
  if (cached) {
    const n = Object.keys(cached).length;
    r.add("models", "ok", `${n} Anthropic model${n === 1 ? "" : "s"} from OpenCode's catalog cache ${file}, offered under the pool's provider`);
    return cached;
  }
  if (!exists(file)) {
    r.add(
      "models",
      "info",
      `OpenCode's catalog cache ${file} does not exist (yet): the pool offers its built-in table (${builtIn} models) until OpenCode has fetched its catalog`,
    );
    return ANTHROPIC_MODELS;
  }
  let parses = false;
  try {
    const text = await readRegularFile(file, MAX_CATALOG_BYTES);
    if (text !== null) {
      JSON.parse(text);
      parses = true;
    }
  } catch {}
  r.add(
    "models",
    parses ? "info" : "warn",
    parses
      ? `OpenCode's catalog cache ${file} has no Anthropic models: the pool offers its built-in table (${builtIn} models)`
      : `OpenCode's catalog cache ${file} does not parse: the pool offers its built-in table (${builtIn} models); delete the file and OpenCode fetches the catalog anew`,
  );
  return ANTHROPIC_MODELS;
}

/** Every `model` setting: top level, `small_model`, and each agent's and mode's. */
function modelSettings(configs, all) {
  const out = [];
  for (const key of ["model", "small_model"]) {
    if (typeof all[key] === "string") out.push({ key, value: all[key], file: setter(configs, [key]) });
  }
  for (const group of ["agent", "mode"]) {
    if (!isPlainObject(all[group])) continue;
    for (const [name, agent] of Object.entries(all[group])) {
      if (isPlainObject(agent) && typeof agent.model === "string") {
        out.push({ key: `${group}.${name}.model`, value: agent.model, file: setter(configs, [group, name, "model"]) });
      }
    }
  }
  return out;
}

/** The closest ids the pool offers: the same family first, at most five. */
function closest(id, offered) {
  const family = /^claude-([a-z]+)/.exec(id)?.[1];
  const same = family ? offered.filter((m) => m.startsWith(`claude-${family}`)) : [];
  return (same.length ? same : offered).slice(0, 5);
}

function checkModels(configs, all, provider, offered, r) {
  for (const { key, value: raw, file } of modelSettings(configs, all)) {
    const slash = raw.indexOf("/");
    if (slash === -1) continue;
    const [from, rawId] = [raw.slice(0, slash), raw.slice(slash + 1)];
    const [value, id] = [shownText(raw), shownText(rawId)];
    if (provider !== "anthropic" && from === "anthropic") {
      r.add(
        "model setting",
        "warn",
        `${file}: "${key}": "${value}" is OpenCode's own Anthropic provider: the pool serves none of its requests (they go out with your own key or login, if any); write "${provider}/${id}"`,
        { key, value },
      );
    } else if (from === provider && offered && !offered.includes(rawId)) {
      r.add(
        "model setting",
        "problem",
        `${file}: "${key}": "${value}": the pool's provider has no model "${id}" (OpenCode: "Model not found"); it has ${closest(id, offered).join(", ")}${offered.length > 5 ? `, … (${offered.length} in all: opencode models ${provider})` : ""}`,
        { key, value },
      );
    }
  }
}

// ---- OpenCode's copy of the plugin --------------------------------------------------------------

/** Where OpenCode 1.18 installs an npm plugin: `<cache>/opencode/packages/<spec>/node_modules/<name>`. */
function installedDir(spec) {
  const cache = process.env.XDG_CACHE_HOME || join(homedir(), ".cache");
  // OpenCode replaces the characters Windows refuses in a file name.
  const safe = process.platform === "win32" ? spec.replace(/[<>:"|?*\u0000-\u001f]/g, "_") : spec;
  const root = join(cache, "opencode", "packages", safe);
  // The same place as a message names it: a URL's password in the spec is not shown.
  const shown = join(cache, "opencode", "packages", scrubbed(safe));
  return { root, shown, dir: join(root, "node_modules", PACKAGE) };
}

/** The native binary a copy of the package at `dir` would load, or why there is none. */
function binaryOf(dir, triple) {
  const local = join(dir, `oauth-pool.${triple}.node`);
  let file = exists(local) ? local : null;
  if (!file) {
    try {
      file = createRequire(join(dir, "package.json")).resolve(`${PACKAGE}-${triple}`);
    } catch {
      return { missing: true };
    }
  }
  const reason = unloadableReason(file);
  return reason ? { file, reason } : { file };
}

async function checkInstalled(lib, loaded, report) {
  let triple;
  try {
    triple = lib.platformTriple();
  } catch {
    return;
  }
  for (const e of loaded) {
    // An npm copy's directory is named after the spec as written: a URL's password is in it.
    const { root, shown } = installedDir(e.spec);
    const hide = (text) => (isLocalSpec(e.spec) || typeof text !== "string" ? text : text.replaceAll(root, shown));
    const r = { add: (name, level, message, extra) => report.add(name, level, hide(message), extra && { ...extra, dir: hide(extra.dir) }) };
    const local = isLocalSpec(e.spec);
    let dir;
    let remove;
    if (local) {
      dir = localPackageDir(e.spec, e.file);
      if (dir === null) {
        r.add(
          "plugin install",
          "problem",
          `${e.file}: the plugin ${e.spec} names ${localSpecPath(e.spec, e.file) ?? e.spec}, which does not exist: OpenCode cannot load it`,
          { spec: e.spec },
        );
        continue;
      }
      remove = `npm run build in ${dir}, or npm install there`;
    } else {
      const at = installedDir(e.spec);
      dir = at.dir;
      remove = `rm -rf ${at.root}, then start OpenCode (it installs the plugin again)`;
      if (!exists(join(dir, "package.json"))) {
        r.add(
          "plugin install",
          "info",
          `OpenCode has not installed ${e.spec} yet (it does at its next start, into ${at.root}; a failed install is in its log: opencode --print-logs)`,
          { spec: e.spec },
        );
        continue;
      }
    }
    // Read, bounded, before anything resolves from the directory (Node's resolver reads a
    // package.json whole, and waits on a FIFO named so).
    const manifestFile = join(dir, "package.json");
    const manifest = exists(manifestFile) ? await readRegularFile(manifestFile, MAX_MANIFEST_BYTES) : undefined;
    if (manifest === null) {
      r.add(
        "plugin install",
        "problem",
        `OpenCode's copy of the plugin (${dir}) has a package.json that is not a regular file of at most ${MAX_MANIFEST_BYTES / 1024 / 1024} MB: no copy of the package; ${remove}`,
        { spec: e.spec, dir },
      );
      continue;
    }
    const bin = binaryOf(dir, triple);
    if (bin.missing || bin.reason) {
      r.add(
        "plugin install",
        "problem",
        bin.missing
          ? `OpenCode's copy of the plugin (${dir}) has no native binary for ${triple} (${PACKAGE}-${triple} is not installed beside it): every request and login there fails with NATIVE_MISSING; ${remove}`
          : `OpenCode's copy of the plugin (${dir}) cannot load its native binary ${bin.file}: ${bin.reason}; ${remove}`,
        { spec: e.spec, dir },
      );
      continue;
    }
    let version = null;
    try {
      version = JSON.parse(manifest ?? "null")?.version ?? null;
    } catch {}
    if (!local && version && VERSION && version !== VERSION) {
      const pinned = pluginIdentity(e.spec, e.file) !== e.spec;
      r.add(
        "plugin install",
        "info",
        pinned
          ? `OpenCode runs ${PACKAGE} ${version} (${dir}), the version ${e.file} asks for (${e.spec}); this oauth-pool is ${VERSION}`
          : `OpenCode runs ${PACKAGE} ${version} (${dir}), this oauth-pool is ${VERSION}: OpenCode keeps an installed plugin as it is; to update it: ${remove}`,
        { spec: e.spec, version },
      );
    } else {
      const what = version ? `${dir}, ${version}` : dir;
      r.add("plugin install", "ok", `OpenCode's copy of the plugin (${what}) has its native binary for ${triple}`, { spec: e.spec });
    }
  }
}

// ---- all of it ----------------------------------------------------------------------------------

/**
 * `report` for what is said here: each message and quoted detail scrubbed (a URL's password,
 * query and fragment, token shapes), since a plugin spec a person wrote may be a URL carrying a
 * key, and it is quoted as written in most of these messages.
 */
function scrubbing(report) {
  const shown = (v) => (typeof v === "string" ? scrubbed(v) : Array.isArray(v) ? v.map(shown) : v);
  const details = (extra) => extra && Object.fromEntries(Object.entries(extra).map(([k, v]) => [k, shown(v)]));
  return { ...report, add: (name, level, message, extra) => report.add(name, level, scrubbed(message), details(extra)) };
}

export async function checkOpencode(lib, files, report) {
  const r = scrubbing(report);
  const { configs, broken, unread } = await readOpencodeConfigs();
  checkBroken(broken, r);
  checkUnread(unread, r);
  const entries = await pluginEntries(configs);
  const loaded = await checkLoaded(configs, broken, unread, entries, r);
  // Not loaded by a config of ours (maybe by a host plugin, with options we cannot see): what
  // the rest would judge depends on those options.
  if (loaded === null) return;
  // Each copy takes its own options; a copy whose options OpenCode refuses is not loaded.
  const usable = [];
  for (const entry of loaded) {
    try {
      usable.push({ entry, opts: pluginOptions(entry.options) });
    } catch {}
  }
  if (usable.length === 0) return;
  if (files) for (const { entry, opts } of usable) checkPool(lib, files, entry, opts, r);
  const all = merged(configs);
  for (const provider of new Set(usable.map((u) => u.opts.provider))) {
    checkHidden(configs, all, provider, r);
    const own = isPlainObject(all.provider) ? all.provider[provider] : undefined;
    checkBaseURL(configs, own, provider, r);
    let offered = null;
    if (provider !== "anthropic") {
      if (!isPlaceholderEntry(own)) checkPackage(configs, own, provider, r);
      const mine = isPlaceholderEntry(own) ? {} : usableEntry(own);
      const catalog = await checkCatalog(r);
      offered = [...new Set([...Object.keys(catalog), ...Object.keys(isPlainObject(mine.models) ? mine.models : {})])];
    }
    checkModels(configs, all, provider, offered, r);
  }
  // OpenCode 2 installs its plugins elsewhere: only 1.x's copies are looked at.
  const v1 = loaded.filter((e) => e.key === "plugin");
  await checkInstalled(lib, v1, r);
}
