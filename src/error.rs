//! The one error type of the crate. Every variant maps to a stable `err.code` string from the
//! public contract; messages never carry a secret (tokens, codes, verifiers).

use std::path::{Path, PathBuf};

use crate::printable::{bounded, bounded_message};
use crate::secret::Secret;

/// A path in a message: one from the environment (`OAUTH_POOL_PATH`) can be as long as the
/// variable.
fn shown(path: &Path) -> String {
    bounded(&path.display().to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pool file {} is not valid: {}. It was left untouched; {}", shown(.path), bounded(.reason), bounded(.hint))]
    PoolCorrupt {
        path: PathBuf,
        reason: String,
        hint: String,
    },
    #[error("pool file {} refused: {}", shown(.path), bounded(.reason))]
    PoolInsecure { path: PathBuf, reason: String },
    #[error("pool is not valid: {}", bounded_message(.0))]
    PoolInvalid(String),
    #[error("pool file {}: {action} failed: {}", shown(.path), bounded(&.source.to_string()))]
    PoolIo {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The OS refused the thread the pool's file work (or a host name lookup) runs on: the
    /// machine's or container's limit on processes and threads. Local I/O, said with its code.
    #[error("{}; the next call tries again", no_thread(.0))]
    NoThread(String),
    #[error("pool file {} is locked by another process for more than {seconds} s", shown(.path))]
    PoolBusy { path: PathBuf, seconds: u64 },
    #[error("{}: its token is still being refreshed (waited {seconds} s)", bounded(.email))]
    RefreshBusy { email: String, seconds: u64 },
    /// This request's own refresh of the login outlasted its patience (another account could
    /// serve): the token endpoint is slow or silent, not another process.
    #[error("{}: its refresh has not finished in {seconds} s (the token endpoint, or the pool's store, is slow to answer; the refresh goes on; the next request uses what it gets)", bounded(.email))]
    RefreshSlow { email: String, seconds: u64 },
    /// The refresh journal says another store on this machine presented the token moments ago
    /// and has not saved its successor yet: nothing was waited for here.
    #[error("{}: another pool on this machine ({}) is refreshing this login right now; the next request will know how it went", bounded(.email), bounded(.store))]
    RefreshElsewhere { email: String, store: String },
    /// Another process of the same store has the refresh token out (its refresh lock was lost
    /// meanwhile: the fleet store's session ended, the lock file was removed): the token is not
    /// presented a second time.
    #[error("{}: another process using {} is refreshing this login right now; the next request will use what it gets", bounded(.email), bounded(.store))]
    RefreshClaimed { email: String, store: String },
    #[error("no account with email {} in the pool", bounded(.0))]
    AccountNotFound(String),
    #[error("{0}")]
    NoUsableAccount(String),
    #[error("{}", bounded_message(.0))]
    OAuthStateMismatch(String),
    #[error("{}", bounded(.0))]
    OAuthBadInput(String),
    #[error("refresh token rejected by the token endpoint ({}); the account needs a new login", bounded(.0))]
    OAuthInvalidGrant(String),
    /// A refresh token not presented because the refresh journal knows it spent: the login lives
    /// in another store (or this one went back in time). The same code as a refused token: the
    /// account needs the live login or a new one.
    #[error("{}", bounded_message(.0))]
    LoginElsewhere(String),
    /// A login's code pasted again after it was exchanged in this process: refused before
    /// anything is sent, with the code the token endpoint gives a code used twice (the contract's
    /// `exchange` rejects with `OAUTH_INVALID_GRANT`; it was `OAUTH_BAD_INPUT` in the process
    /// that used it, and `OAUTH_INVALID_GRANT` in any other).
    #[error("{}", bounded_message(.0))]
    LoginCompleted(String),
    /// The same contract code as a dead refresh token, about a login code instead.
    #[error("the login code was refused by the token endpoint ({}): a code works once and for a few minutes; start the login again", bounded(.0))]
    OAuthCodeRefused(String),
    #[error("{what} answered HTTP {status}: {}", bounded(.detail))]
    OAuthHttp {
        /// Which of the login's endpoints: `token endpoint`, `profile endpoint`, `API key endpoint`.
        what: &'static str,
        status: u16,
        detail: String,
        /// Seconds the endpoint asked us to wait (429 `retry-after`), when given.
        retry_after: Option<u64>,
    },
    /// A refresh the endpoint answered with a new refresh token and nothing else usable (no valid
    /// access token or lifetime): the presented token is spent, and `refresh` is the login now.
    /// Said as the endpoint's unusable 200; the token never reaches the message.
    #[error("token endpoint answered HTTP 200: {}", bounded(.detail))]
    OAuthRotatedUnusable { refresh: Secret, detail: String },
    /// A refresh not tried because an earlier one failed: the token endpoint is left alone until
    /// `until`. Reported as `OAUTH_HTTP` 429 with the wait, but not as the endpoint's answer:
    /// it may have said nothing (a network failure, a 503 without `retry-after`).
    #[error("not refreshed before {until}: the last refresh failed, and the token endpoint is left alone until then; try again then, or run `oauth-pool reset-cooldowns` to try now")]
    RefreshBackoff { until: String, retry_after: u64 },
    #[error("network error talking to {what}: {}", bounded(.detail))]
    Network {
        what: &'static str,
        detail: String,
        /// No connection formed (refused, reset or timed out before it was up, a failed TLS
        /// handshake): nothing of the request was sent, so no answer can have been lost.
        never_connected: bool,
    },
    #[error("endpoint {} refused: {}", bounded(.url), bounded(.reason))]
    InsecureEndpoint { url: String, reason: String },
    #[error("request aborted")]
    Aborted,
    #[error("{}", bounded_message(.0))]
    InvalidArgument(String),
    #[error("the pool's store cannot be reached ({}); a running pool keeps serving with the tokens it holds and retries its writes", bounded(.0))]
    StoreUnavailable(String),
    #[error("{}", bounded_message(.0))]
    StoreKey(String),
    /// The fleet store's rows are not as its schema says: refused like a corrupt pool file.
    #[error("{}", bounded_message(.0))]
    StoreCorrupt(String),
    /// `refreshAccount` spent the refresh token, and the write of its successor failed: reported
    /// with the write's own code, since the refresh alone did not make the account durable.
    #[error("{} was refreshed, but its new tokens could not be saved ({}): the refresh token in the pool is spent. {}", bounded(.email), bounded(.reason), unsaved_advice(.kept.as_deref()))]
    TokensUnsaved {
        email: String,
        reason: String,
        code: &'static str,
        /// The file beside the pool (`store::rescue`) that holds them, when they could be kept.
        kept: Option<String>,
    },
    /// A login whose code was spent and whose account could not be written: reported with the
    /// write's own code, like `TokensUnsaved`.
    #[error("logged in as {}, but the account could not be written to the pool ({}). The login code is spent, and only this process holds the new login: it writes it as soon as the pool can take it, trying every few seconds while it runs. Fix that now: once this process ends with it unwritten, the account needs a new login", bounded(.email), bounded(.reason))]
    LoginUnsaved {
        email: String,
        reason: String,
        code: &'static str,
    },
}

/// What `TokensUnsaved` leaves the user to do: with the tokens kept on disk, nothing is lost
/// (it said "the account needs a new login", and a user believing it logged in again for
/// nothing, or deleted the kept file); with none, only this process holds them.
fn unsaved_advice(kept: Option<&str>) -> String {
    match kept {
        Some(file) => format!(
            "The new ones are kept in {} (0600), and the next write to the pool by a process or command of this package on this machine takes them (OpenCode's next request, `oauth-pool refresh` of the account, `priority`, `reset-cooldowns`; not a read such as `list`): fix what stopped the write, and do not delete that file",
            bounded(file)
        ),
        None => "Only this process holds the new one (it retries the save while it runs). Fix that now: once this process ends with them unsaved, the account needs a new login".into(),
    }
}

/// The codes of `Error::asking_again_cannot_help`.
pub const UNRETRIABLE_CODES: &[&str] = &[
    "POOL_NO_ACCOUNT",
    "POOL_CORRUPT",
    "POOL_INSECURE",
    "INSECURE_ENDPOINT",
    "INVALID_ARGUMENT",
    "STORE_KEY",
];

/// What `Error::NoThread` says apart from its advice, which a login whose code is spent cannot
/// follow.
pub fn no_thread(why: &str) -> String {
    format!("no thread could be started for the pool's file work or a host name lookup ({why}): the limit on processes and threads (a container's pids limit, systemd's TasksMax) is reached")
}

impl Error {
    /// The stable `err.code` string JavaScript callers switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::PoolCorrupt { .. } => "POOL_CORRUPT",
            Error::PoolInsecure { .. } => "POOL_INSECURE",
            Error::PoolInvalid(_) => "POOL_INVALID",
            Error::PoolIo { .. } | Error::NoThread(_) => "POOL_IO",
            Error::PoolBusy { .. }
            | Error::RefreshBusy { .. }
            | Error::RefreshElsewhere { .. }
            | Error::RefreshClaimed { .. } => "POOL_BUSY",
            Error::AccountNotFound(_) => "ACCOUNT_NOT_FOUND",
            Error::NoUsableAccount(_) => "POOL_NO_ACCOUNT",
            Error::OAuthStateMismatch(_) => "OAUTH_STATE_MISMATCH",
            Error::OAuthBadInput(_) => "OAUTH_BAD_INPUT",
            Error::OAuthInvalidGrant(_)
            | Error::OAuthCodeRefused(_)
            | Error::LoginElsewhere(_)
            | Error::LoginCompleted(_) => "OAUTH_INVALID_GRANT",
            Error::OAuthHttp { .. }
            | Error::OAuthRotatedUnusable { .. }
            | Error::RefreshBackoff { .. } => "OAUTH_HTTP",
            Error::Network { .. } | Error::RefreshSlow { .. } => "NETWORK",
            Error::InsecureEndpoint { .. } => "INSECURE_ENDPOINT",
            Error::Aborted => "ABORT_ERR",
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Error::StoreKey(_) => "STORE_KEY",
            Error::StoreCorrupt(_) => "POOL_CORRUPT",
            Error::TokensUnsaved { code, .. } | Error::LoginUnsaved { code, .. } => code,
        }
    }

    /// Whether asking again, a second or a minute later, cannot mend this failure: nothing in
    /// the pool is usable, the pool file or store is broken, refused or unreadable without its
    /// key, the endpoint is refused, the request itself is wrong. Answers for these tell the
    /// SDKs not to retry (`x-should-retry: false`): the gateway's, and OpenCode 2's local one.
    pub fn asking_again_cannot_help(code: &str) -> bool {
        UNRETRIABLE_CODES.contains(&code)
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        Error::PoolIo {
            path: path.into(),
            action,
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_contract_strings() {
        assert_eq!(
            Error::OAuthStateMismatch(String::new()).code(),
            "OAUTH_STATE_MISMATCH"
        );
        assert_eq!(Error::PoolInvalid("x".into()).code(), "POOL_INVALID");
        let e = Error::OAuthHttp {
            what: "token endpoint",
            status: 503,
            detail: "server_error".into(),
            retry_after: None,
        };
        assert_eq!(e.code(), "OAUTH_HTTP");
        assert!(e.to_string().contains("503"));
    }
}
