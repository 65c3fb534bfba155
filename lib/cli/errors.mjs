// Exit codes and the errors that choose them. Scripts switch on the exit code, so these numbers
// are part of the CLI's interface.

export const EXIT = { OK: 0, ERROR: 1, USAGE: 2, PROBLEMS: 3 };

/** A mistake in how the CLI was called: exit 2 with code USAGE. */
export class UsageError extends Error {}

/** A refusal of the CLI itself that is not a usage mistake (exit 1, like a library error). */
export function cliError(code, message) {
  const err = new Error(message);
  err.code = code;
  return err;
}
