// The library, loaded on first need: `--help` and `--version` must answer on a machine where no
// native binary fits, and every other command then fails with NATIVE_MISSING from the library.
export async function loadLibrary() {
  const [api, { platformTriple }] = await Promise.all([import("../api.mjs"), import("../platform.mjs")]);
  return { ...api, platformTriple };
}
