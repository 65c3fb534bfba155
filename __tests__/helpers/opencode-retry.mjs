// How OpenCode 1.18 decides, from an error's text, that a failed model call will pass by itself.
// Copied from the OpenCode 1.18.33 binary the e2e kit installs (scripts/e2e-kit.mjs
// ensureOpencode): SessionRetry.retryable and its patterns (session/retry.ts). For an error that
// is not an API call error (a fetch's rejection reaches it as MessageV2.fromError's UnknownError,
// whose message is the rejection's `message`), it retries when the lower-cased message includes
// "too_many_requests", "exhausted" or "unavailable", or when the message matches any of these,
// anywhere: digits of a path, a port or a time too. It then retries the request 5 times, 2, 4, 8,
// 16 and 30 s apart (RETRY_MAX_RETRIES, RETRY_INITIAL_DELAY, RETRY_MAX_DELAY_NO_HEADERS), printing
// nothing, before it shows the error: a silent minute for a failure that cannot pass.
// (An API call error is retried when it says so itself, when its status is 500 or more, or when
// its message or response body matches these patterns.)
export const OPENCODE_RETRY_PATTERNS = [
  /429|500|502|503|504|524/i,
  /rate increased too quickly|rate limit|rate-limit|rate_limit|too many requests/i,
  /overloaded|service unavailable|service_unavailable|service-unavailable|internal error|internal_error|internal server error|server error|server_error|server-error|provider returned error|provider_returned_error|provider-returned-error/i,
  /terminated|fetch failed|failed to fetch|network[-_\s]error|upstream connect|connection error|connection refused|connection lost|socket connection was closed|socket hang up|reset before headers|getaddrinfo|enotfound|eai_again|econnrefused|econnreset|etimedout/i,
  /^timeout$|\b(?:request|response|connection|network|stream|read) (?:timeout|timed out|time out)\b/i,
  /try your request again|retry your request|resource exhausted|resource_exhausted/i,
  /\btry again (?:later|in\b)|\b(?:currently|temporarily) at capacity\b/i,
];

/** What in `message` makes OpenCode 1.18 retry it silently (the matched text), or null. */
export function openCodeRetries(message) {
  if (typeof message !== "string") return null;
  const lower = message.toLowerCase();
  for (const word of ["too_many_requests", "exhausted", "unavailable"]) if (lower.includes(word)) return word;
  for (const pattern of OPENCODE_RETRY_PATTERNS) {
    const m = pattern.exec(message);
    if (m) return m[0];
  }
  return null;
}
