#!/usr/bin/env node
// `oauth-pool`, the CLI (lib/cli/main.mjs), imported by this file's real path: run through npm's
// `.bin` symlink with `--preserve-symlinks-main` (in NODE_OPTIONS), relative imports here were
// resolved from `node_modules/.bin/` and the command failed uncoded.
import { realpathSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

await import(new URL("../lib/cli/main.mjs", pathToFileURL(realpathSync(fileURLToPath(import.meta.url)))).href);
