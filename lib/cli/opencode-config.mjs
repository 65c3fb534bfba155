// For `oauth-pool doctor`: the OpenCode configuration files that load this plugin, and the
// options each gives it. OpenCode reads JSON with comments and trailing commas (JSONC) from its
// global directory, `OPENCODE_CONFIG`, `OPENCODE_CONFIG_CONTENT` and the project's directories
// up to the repository's root; a file that does not parse stops OpenCode from starting, so it
// is reported as such.
import { constants, existsSync, statSync } from "node:fs";
import { open, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { readRegularFile } from "../plugin/config.mjs";

// Far above any real config; a path that names something huge must not fill memory.
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/**
 * JSONC as JSON: comments and trailing commas become spaces (strings kept as they are), so a
 * position JSON.parse reports is the same in the text as written. Empty text is `{}`, as
 * OpenCode takes an empty file.
 */
export function parseJsonc(text) {
  if (text.trim() === "") return {};
  return JSON.parse(jsoncAsJson(text));
}

const blank = (s) => s.replace(/[^\n]/g, " ");

function jsoncAsJson(text) {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === "/" && text[i + 1] === "/") {
      const end = text.indexOf("\n", i);
      const stop = end === -1 ? text.length : end;
      out += blank(text.slice(i, stop));
      i = stop;
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      const stop = end === -1 ? text.length : end + 2;
      out += blank(text.slice(i, stop));
      i = stop;
    } else {
      out += c;
      i++;
    }
  }
  // A comma followed only by white space and a closing bracket; strings were left whole above,
  // so one is skipped here the same way.
  let json = "";
  for (let k = 0; k < out.length; k++) {
    const c = out[k];
    if (c === '"') {
      let j = k + 1;
      while (j < out.length && out[j] !== '"') j += out[j] === "\\" ? 2 : 1;
      json += out.slice(k, j + 1);
      k = j;
    } else if (c === ",") {
      let j = k + 1;
      while (j < out.length && /\s/.test(out[j])) j++;
      json += out[j] !== "}" && out[j] !== "]" ? c : " ";
    } else json += c;
  }
  return json;
}

/**
 * Why `text` is no JSONC, with the line and column where it stops being so, found here: Node
 * names a position only for some faults ("Unexpected token" has none), Bun for none, and V8's
 * message quotes the text around the fault (the start of a secret left unquoted).
 */
function whyNotJsonc(text, err) {
  const at = faultAt(jsoncAsJson(text));
  if (at === null)
    return String(err?.message ?? err)
      .replace(/^JSON Parse error: /, "")
      .slice(0, 200);
  const before = text.slice(0, at);
  const line = before.split("\n").length;
  const column = before.length - before.lastIndexOf("\n");
  return `${said(text, at)} at line ${line}, column ${column}`;
}

/** What stands at `at` where JSON cannot have it, in a few words (one character at most). */
function said(text, at) {
  if (at >= text.length) return "the text ends where more was expected";
  const c = text.codePointAt(at) ?? 0;
  const shown = c > 0x20 && c < 0x7f ? `'${String.fromCodePoint(c)}'` : `character U+${c.toString(16).toUpperCase().padStart(4, "0")}`;
  return `unexpected ${shown}`;
}

const WHITE = new Set([" ", "\t", "\n", "\r"]);

/**
 * Where `json` stops being JSON (the index of the first character that cannot stand there, or
 * its length when it ends too soon), or null when it is JSON. Nesting is kept on a list of its
 * own, not the call stack: a config nested 500,000 deep is read as any other.
 */
function faultAt(json) {
  let i = 0;
  const closers = [];
  const skip = () => {
    while (i < json.length && WHITE.has(json[i])) i++;
  };
  const digits = () => {
    const start = i;
    while (i < json.length && json[i] >= "0" && json[i] <= "9") i++;
    return i > start;
  };
  // A string at `i`: past it, or false where it breaks.
  const string = () => {
    i++;
    while (i < json.length && json[i] !== '"') {
      const code = json.charCodeAt(i);
      if (code < 0x20) return false;
      if (json[i] === "\\") {
        const e = json[i + 1];
        if (e === "u") {
          i += 2;
          for (let digit = 0; digit < 4; digit++, i++) if (!/[0-9a-fA-F]/.test(json[i] ?? "")) return false;
          continue;
        }
        if (e === undefined || !'"\\/bfnrt'.includes(e)) {
          i++;
          return false;
        }
        i += 2;
        continue;
      }
      i++;
    }
    if (i >= json.length) return false;
    i++;
    return true;
  };
  let expect = "value";
  for (;;) {
    skip();
    if (expect === "value") {
      const c = json[i];
      if (c === "{" || c === "[") {
        closers.push(c === "{" ? "}" : "]");
        i++;
        skip();
        if (json[i] === closers.at(-1)) {
          closers.pop();
          i++;
          expect = "after";
        } else expect = c === "{" ? "key" : "value";
        continue;
      }
      if (c === '"') {
        if (!string()) return i;
      } else if (c === "t" || c === "f" || c === "n") {
        const word = c === "t" ? "true" : c === "f" ? "false" : "null";
        for (const letter of word) {
          if (json[i] !== letter) return i;
          i++;
        }
      } else {
        if (json[i] === "-") i++;
        if (json[i] === "0") i++;
        else if (!digits()) return i;
        if (json[i] === ".") {
          i++;
          if (!digits()) return i;
        }
        if (json[i] === "e" || json[i] === "E") {
          i++;
          if (json[i] === "+" || json[i] === "-") i++;
          if (!digits()) return i;
        }
      }
      expect = "after";
    } else if (expect === "key") {
      if (json[i] !== '"' || !string()) return i;
      skip();
      if (json[i] !== ":") return i;
      i++;
      expect = "value";
    } else {
      if (closers.length === 0) return i < json.length ? i : null;
      if (json[i] === ",") {
        i++;
        expect = closers.at(-1) === "}" ? "key" : "value";
      } else if (json[i] === closers.at(-1)) {
        closers.pop();
        i++;
      } else return i;
    }
  }
}

/**
 * What OpenCode does to a config's text before it parses it: `{env:NAME}` becomes the variable's
 * value, `{file:path}` the file's text. A file's text is not read here: an empty string stands
 * for it (these stand inside strings), so only the shape is judged.
 */
function substituted(text, env) {
  return text.replace(/\{env:([^}]+)\}/g, (_, name) => env[name] ?? "").replace(/\{file:[^}]+\}/g, "");
}

/** The most of a config file doctor reads, for its words. */
export const MAX_CONFIG_MB = MAX_CONFIG_BYTES / 1024 / 1024;

/**
 * What a path that is there but no file doctor reads is, in a few words, and `code`, the error's,
 * when it could not be read (permissions); null for a file it reads.
 */
async function unreadable(file) {
  let st;
  try {
    // stat, not open: opening a FIFO waits for a writer.
    st = await stat(file);
  } catch (e) {
    return e?.code === "ENOENT" || e?.code === "ENOTDIR" ? null : { what: `a path that cannot be read (${e?.code ?? e})`, code: e?.code };
  }
  if (st.isFile()) return st.size > MAX_CONFIG_BYTES ? { what: `${st.size} bytes` } : cannotOpen(file);
  if (st.isDirectory()) return { what: "a directory" };
  if (st.isFIFO()) return { what: "a FIFO" };
  if (st.isCharacterDevice() || st.isBlockDevice()) return { what: "a device" };
  if (st.isSocket()) return { what: "a socket" };
  return { what: "not a regular file" };
}

/**
 * Why a regular file could not be opened (its mode, an ACL), as unreadable() says it; null when it
 * can be, or is gone (the read above found nothing then). A file of mode 000 read as "no config
 * file here".
 */
async function cannotOpen(file) {
  try {
    // Non-blocking, as readRegularFile opens: a FIFO put there since the stat is not waited on.
    await (await open(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0))).close();
    return null;
  } catch (e) {
    return e?.code === "ENOENT" ? null : { what: `a file that cannot be read (${e?.code ?? e})`, code: e?.code };
  }
}

/**
 * `{ config }`, `{ error }` when it does not parse, `{ unread, code }` (what it is, and why when
 * it could not be read) when something is there that is not read (a FIFO or a device is not waited
 * on, nor read without end; a directory; a file past MAX_CONFIG_BYTES; a file or a directory this
 * user may not read), or undefined when there is nothing there.
 */
async function readConfig(file, env) {
  const raw = await readRegularFile(file, MAX_CONFIG_BYTES);
  if (raw === null) {
    const why = await unreadable(file);
    return why ? { unread: why.what, code: why.code } : undefined;
  }
  // A byte order mark (a file saved by a Windows editor) is no part of the JSON.
  const text = substituted(raw.replace(/^\uFEFF/, ""), env);
  try {
    return { config: parseJsonc(text) };
  } catch (e) {
    return { error: whyNotJsonc(text, e) };
  }
}

/** The global configuration directory of OpenCode (`$XDG_CONFIG_HOME/opencode`). */
export function opencodeConfigDir(env = process.env) {
  return join(env.XDG_CONFIG_HOME || join(env.HOME || homedir(), ".config"), "opencode");
}

/** Where an administrator's settings go, read last (OpenCode's "managed" configuration). */
function managedConfigDir(env) {
  if (env.OPENCODE_TEST_MANAGED_CONFIG_DIR) return env.OPENCODE_TEST_MANAGED_CONFIG_DIR;
  if (process.platform === "darwin") return "/Library/Application Support/opencode";
  if (process.platform === "win32") return join(env.ProgramData || "C:\\ProgramData", "opencode");
  return "/etc/opencode";
}

/**
 * The configuration files OpenCode reads here, in its order (OpenCode 1.18's config loading):
 * `configs` as `{ file, config }`, `broken` as `{ file, error }` for those that do not parse
 * (OpenCode refuses to start then), `unread` as `{ file, what, code }` for those that are there
 * but are no file doctor reads (`code` the error's when it could not read one).
 */
export async function readOpencodeConfigs(env = process.env, cwd = process.cwd()) {
  const files = [];
  const global = opencodeConfigDir(env);
  for (const name of ["config.json", "opencode.json", "opencode.jsonc"]) files.push(join(global, name));
  if (env.OPENCODE_CONFIG) files.push(resolve(cwd, env.OPENCODE_CONFIG));
  const projectOff = /^(1|true)$/i.test(env.OPENCODE_DISABLE_PROJECT_CONFIG ?? "");
  // The project's directories, the working directory first, up to the repository's root.
  const dirs = [];
  for (let dir = resolve(cwd); ; dir = dirname(dir)) {
    dirs.push(dir);
    if (existsSync(join(dir, ".git")) || dirname(dir) === dir) break;
  }
  if (!projectOff) {
    // The project's files, nearest last.
    for (const dir of [...dirs].reverse()) files.push(join(dir, "opencode.jsonc"), join(dir, "opencode.json"));
  }
  // Then the `.opencode` directories (the project's unless that is off, the home's) and
  // OPENCODE_CONFIG_DIR.
  const extra = [...(projectOff ? [] : dirs.map((d) => join(d, ".opencode"))), join(env.HOME || homedir(), ".opencode")];
  if (env.OPENCODE_CONFIG_DIR) extra.push(env.OPENCODE_CONFIG_DIR);
  for (const dir of extra) files.push(join(dir, "opencode.json"), join(dir, "opencode.jsonc"));
  const configs = [];
  const broken = [];
  const unread = [];
  const take = (file, read) => {
    if (read?.error !== undefined) broken.push({ file, error: read.error });
    else if (read?.unread !== undefined) unread.push({ file, what: read.unread, code: read.code });
    else if (read) configs.push({ file, config: read.config });
  };
  for (const file of [...new Set(files)]) take(file, await readConfig(file, env));
  if (env.OPENCODE_CONFIG_CONTENT) {
    const text = substituted(env.OPENCODE_CONFIG_CONTENT, env);
    try {
      configs.push({ file: "OPENCODE_CONFIG_CONTENT", config: parseJsonc(text) });
    } catch (e) {
      broken.push({ file: "OPENCODE_CONFIG_CONTENT", error: whyNotJsonc(text, e) });
    }
  }
  for (const name of ["opencode.json", "opencode.jsonc"]) {
    const file = join(managedConfigDir(env), name);
    take(file, await readConfig(file, env));
  }
  return { configs, broken, unread };
}

const OURS = /(^|[/@:])opencode-oauth-pool(@[^/]*)?($|\/)|oauth-pool[^/]*\/plugin\.mjs$/;
const PACKAGE = "opencode-oauth-pool";

/** A spec OpenCode takes as a file of its own (`file://`, an absolute path, `./`, `../`). */
export const isLocalSpec = (spec) => /^(file:|\.|\/|[A-Za-z]:[\\/])/.test(spec);

/**
 * The file or directory a local spec names, relative ones from the config file's directory
 * (`OPENCODE_CONFIG_CONTENT`'s from the working directory), as OpenCode resolves them.
 */
export function localSpecPath(spec, file, cwd = process.cwd()) {
  if (spec.startsWith("file:")) {
    try {
      return fileURLToPath(spec);
    } catch {
      return null;
    }
  }
  return resolve(file === "OPENCODE_CONFIG_CONTENT" ? cwd : dirname(file), spec);
}

/**
 * The name under which OpenCode 1.18 keeps one entry per plugin (config `deduplicatePluginOrigins`,
 * later entries win): a local one's file URL, an npm one's package name without its version.
 */
export function pluginIdentity(spec, file, cwd = process.cwd()) {
  if (isLocalSpec(spec)) {
    const path = localSpecPath(spec, file, cwd);
    return path === null ? spec : pathToFileURL(path).href;
  }
  const alias = /^[^@/]+@npm:(.+)$/.exec(spec);
  const bare = alias ? alias[1] : spec;
  const at = bare.indexOf("@", bare.startsWith("@") ? 1 : 0);
  return at === -1 ? bare : bare.slice(0, at);
}

/** The directory of the package a local spec names (the file's own, or the directory itself). */
export function localPackageDir(spec, file, cwd = process.cwd()) {
  const path = localSpecPath(spec, file, cwd);
  if (path === null) return null;
  try {
    return statSync(path).isDirectory() ? path : dirname(path);
  } catch {
    return null;
  }
}

// A package.json is a few KB; one far larger is no manifest of ours.
export const MAX_MANIFEST_BYTES = 1024 * 1024;

/** Whether a local spec names this package: its package.json says so (a checkout named anyhow). */
async function namesThisPackage(spec, file, cwd) {
  const dir = localPackageDir(spec, file, cwd);
  if (dir === null) return false;
  try {
    return JSON.parse((await readRegularFile(join(dir, "package.json"), MAX_MANIFEST_BYTES)) ?? "null")?.name === PACKAGE;
  } catch {
    return false;
  }
}

/**
 * Every plugin entry of the configs, in the order OpenCode reads them: `{ file, key, spec,
 * options, ours }`, `key` "plugin" (OpenCode 1.x: `spec | [spec, options]`) or "plugins"
 * (OpenCode 2: `spec | { package, options }`), `options` undefined when none are given.
 */
export async function pluginEntries(configs, cwd = process.cwd()) {
  const entries = [];
  for (const { file, config } of configs) {
    if (!config || typeof config !== "object") continue;
    for (const key of ["plugin", "plugins"]) {
      const list = config[key];
      if (!Array.isArray(list)) continue;
      for (const item of list) {
        let spec;
        let options;
        if (typeof item === "string") spec = item;
        else if (Array.isArray(item)) [spec, options] = item;
        else if (item && typeof item === "object") ({ package: spec, options } = item);
        if (typeof spec !== "string" || spec.trim() === "") continue;
        const ours = OURS.test(spec) || (isLocalSpec(spec) && (await namesThisPackage(spec, file, cwd)));
        entries.push({ file, key, spec, options, ours });
      }
    }
  }
  return entries;
}

/**
 * What OpenCode 1.x loads of the `plugin` entries: one per identity, the last one read
 * (`kept`), and for each one dropped, the entry that replaced it (`replaced`: `{ entry, by }`).
 */
export function loadedPlugins(entries, cwd = process.cwd()) {
  const byIdentity = new Map();
  for (const e of entries.filter((x) => x.key === "plugin")) {
    const id = pluginIdentity(e.spec, e.file, cwd);
    byIdentity.set(id, [...(byIdentity.get(id) ?? []), e]);
  }
  const kept = [];
  const replaced = [];
  for (const group of byIdentity.values()) {
    const last = group.at(-1);
    kept.push(last);
    for (const e of group.slice(0, -1)) replaced.push({ entry: e, by: last });
  }
  return { kept, replaced };
}
