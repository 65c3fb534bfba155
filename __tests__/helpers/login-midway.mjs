// A login spoiled between its token call and its write (os-hostility.test.mjs,
// login-lock.test.mjs).

/**
 * Starts a login whose token call is held until `meanwhile` has run: the code is spent by then,
 * and `meanwhile` makes the pool's write fail. Returns the pending `addAccount`.
 */
export async function loginSpoiledMidway(mock, path, email, meanwhile) {
  const { addAccount, authorize } = await import("../../index.mjs");
  const pkce = await authorize();
  const paste = mock.approve(pkce.url, email, { expiresIn: 3600 });
  let answer;
  mock.setTokenMode({ grant: "authorization_code", until: new Promise((r) => (answer = r)), times: 1 });
  const arrived = mock.waitFor("token", (r) => r.grant === "authorization_code");
  const adding = addAccount(paste, pkce, path);
  await arrived;
  await meanwhile();
  answer();
  return adding;
}

/** What a login kept by the process must say: who, why, that it is kept, and no advice to redo it now. */
export function keptLogin(code, email, why) {
  return (e) =>
    e.code === code &&
    e.message.includes(email) &&
    why.test(e.message) &&
    /only this process holds/.test(e.message) &&
    !/next call tries again/.test(e.message);
}
