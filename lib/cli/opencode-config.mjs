// For `oauth-pool doctor`: the OpenCode configuration files that load this plugin, and the
// options each gives it. OpenCode reads JSON with comments and trailing commas (JSONC) from its
// global directory, `OPENCODE_CONFIG`, `OPENCODE_CONFIG_CONTENT` and the project's directories
// up to the repository's root; a file that does not parse is OpenCode's to report, not ours.
import { existsSync, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";

// Far above any real config; a path that names something huge must not fill memory.
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/** JSONC as JSON: comments out (strings kept as they are), then trailing commas. */
export function parseJsonc(text) {
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
      while (i < text.length && text[i] !== "\n") i++;
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      i = end === -1 ? text.length : end + 2;
      out += " ";
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
      if (out[j] !== "}" && out[j] !== "]") json += c;
    } else json += c;
  }
  return JSON.parse(json);
}

function readConfig(file) {
  try {
    const st = statSync(file);
    if (!st.isFile() || st.size > MAX_CONFIG_BYTES) return undefined;
    // A byte order mark (a file saved by a Windows editor) is no part of the JSON.
    return parseJsonc(readFileSync(file, "utf8").replace(/^\uFEFF/, ""));
  } catch {
    return undefined;
  }
}

/** The configuration files OpenCode reads here, global first, as `{ file, config }`. */
export function opencodeConfigs(env = process.env, cwd = process.cwd()) {
  const files = [];
  const global = join(env.XDG_CONFIG_HOME || join(env.HOME || homedir(), ".config"), "opencode");
  for (const name of ["config.json", "opencode.json", "opencode.jsonc"]) files.push(join(global, name));
  if (env.OPENCODE_CONFIG) files.push(resolve(cwd, env.OPENCODE_CONFIG));
  // The project's files, nearest last, up to the repository's root (or the file system's).
  const project = [];
  for (let dir = resolve(cwd); ; dir = dirname(dir)) {
    for (const name of ["opencode.jsonc", "opencode.json", ".opencode/opencode.jsonc", ".opencode/opencode.json"]) project.unshift(join(dir, name));
    if (existsSync(join(dir, ".git")) || dirname(dir) === dir) break;
  }
  files.push(...project);
  const found = [];
  for (const file of [...new Set(files)]) {
    const config = readConfig(file);
    if (config !== undefined) found.push({ file, config });
  }
  if (env.OPENCODE_CONFIG_CONTENT) {
    try {
      found.push({ file: "OPENCODE_CONFIG_CONTENT", config: parseJsonc(env.OPENCODE_CONFIG_CONTENT) });
    } catch {}
  }
  return found;
}

const OURS = /(^|[/@:])opencode-oauth-pool(@[^/]*)?($|\/)|oauth-pool[^/]*\/plugin\.mjs$/;

/**
 * Each entry of a config that loads this plugin: `{ file, spec, options }` (options undefined
 * when none are given). OpenCode 1.18's `plugin: [spec | [spec, options]]` and OpenCode 2's
 * `plugins: [spec | { package, options }]`.
 */
export function poolPluginEntries(configs) {
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
        if (typeof spec === "string" && OURS.test(spec)) entries.push({ file, spec, options });
      }
    }
  }
  return entries;
}
