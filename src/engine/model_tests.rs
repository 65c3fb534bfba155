//! A model-based test of the request engine (reliability.md, item 82): random pools, random
//! interleavings of requests, upstream answers (JSON and event streams), token refreshes,
//! management actions and time passing, driven through the real `Exchange` (`next`/`try_next`,
//! `judge`/`try_judge`) against a pool file, as `fetch.rs` and the binding drive it, with the
//! engine's promises checked after every attempt, every request and every step.
//!
//! No network: the token endpoint is a fake in this process (`oauth::fake_token_endpoint`) that
//! rotates refresh tokens as Anthropic's does (each one works once) and answers as each step
//! says: new tokens, `invalid_grant`, a network error, a lost answer, a 5xx, a 429 with a wait.
//! Time is this thread's test clock (`account::test_clock`), moved on by the steps: cooldowns
//! run out, windows reset and access tokens expire without waiting.
//!
//! Not covered here: holding (`OAUTH_POOL_HOLD_MAX_MS`), aborts, the fleet store, and several
//! processes on one file (another process is only ever a writer of rests and tokens here).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use super::usage::{Opening, UsageTap};
use super::{limits, verdict, Blocked, Engine, RequestMeta, Step, Verdict};
use crate::account::{now_ms, test_clock, Account};
use crate::error::Error;
use crate::oauth::{fake_token_endpoint, Tokens};
use crate::pool::Pool;
use crate::secret::Secret;
use crate::store::Store;

const DAY_S: i64 = 86_400;
/// The longest any rest may be, and the longest `retry-after` the pool may answer.
const MAX_REST_MS: i64 = 8 * DAY_S * 1000;
/// What the fake token endpoint gives an access token to live.
const ISSUED_LIFE_MS: i64 = 8 * 3600 * 1000;
/// A token endpoint's failure without a wait of its own keeps it from being asked for this long.
const TOKEN_BACKOFF_MS: i64 = 30_000;
/// How long a bare 429 rests (no `retry-after`, nothing exhausted).
const BURST_MS: i64 = 5_000;
/// The least a 429 rests.
const MIN_REST_MS: i64 = 1_000;
/// A cooldown ending within this of one already known is that one (`overlay::SAME_COOLDOWN_MS`).
const SAME_COOLDOWN_MS: i64 = 1_000;
/// The paths whose own limits a throttle rests apart (`limits::endpoint_limits`).
const SCOPES: [(Option<&str>, Option<&str>); 6] = [
    (None, None),
    (Some("sonnet"), None),
    (Some("opus"), None),
    (None, Some(limits::COUNT_TOKENS)),
    (None, Some(limits::FILES_API)),
    (None, Some(limits::MESSAGE_BATCHES)),
];

#[derive(Debug, Clone)]
struct Member {
    api_key: bool,
    priority: Option<i64>,
    disabled: bool,
    /// Keeps a fifth of every window for its owner.
    reserve: bool,
    /// A login's access token lives this long from the start (negative: already expired).
    token_life_s: i64,
}

fn member() -> impl Strategy<Value = Member> {
    (
        any::<bool>(),
        prop::option::of(0i64..3),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.25),
        prop_oneof![Just(30 * DAY_S), Just(8 * 3600), Just(400i64), Just(-60i64)],
    )
        .prop_map(
            |(api_key, priority, disabled, reserve, token_life_s)| Member {
                api_key,
                priority,
                disabled,
                reserve,
                token_life_s,
            },
        )
}

#[derive(Debug, Clone, Copy)]
enum Said {
    Allowed,
    Warning,
    Rejected,
}

impl Said {
    fn text(self) -> &'static str {
        match self {
            Said::Allowed => "allowed",
            Said::Warning => "allowed_warning",
            Said::Rejected => "rejected",
        }
    }
}

fn said() -> impl Strategy<Value = Said> {
    prop_oneof![
        Just(Said::Allowed),
        Just(Said::Warning),
        Just(Said::Rejected)
    ]
}

/// A reset, in seconds from now: passed, soon, in a window's span, past the 8-day cap, absurd.
fn reset_in() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(-3600i64),
        Just(-1),
        5i64..120,
        Just(5 * 3600),
        Just(7 * DAY_S),
        Just(9 * DAY_S),
        Just(400 * DAY_S),
    ]
}

#[derive(Debug, Clone)]
struct WindowSaid {
    name: &'static str,
    said: Option<Said>,
    /// Percent.
    utilization: Option<u8>,
    reset_in: Option<i64>,
}

fn window() -> impl Strategy<Value = WindowSaid> {
    (
        prop::sample::select(vec![
            "5h",
            "7d",
            "7d_sonnet",
            "7d_opus",
            "7d_opus_4",
            "7d_oauth_apps",
        ]),
        prop::option::of(said()),
        prop::option::of(0u8..=120),
        prop::option::of(reset_in()),
    )
        .prop_map(|(name, said, utilization, reset_in)| WindowSaid {
            name,
            said,
            utilization,
            reset_in,
        })
}

#[derive(Debug, Clone)]
enum RetryAfter {
    Secs(i64),
    /// An HTTP date this many seconds from now.
    Date(i64),
    Millis(i64),
    Garbage,
}

fn retry_after() -> impl Strategy<Value = RetryAfter> {
    prop_oneof![
        prop_oneof![
            Just(0i64),
            1i64..60,
            Just(3600),
            Just(9 * DAY_S),
            Just(40 * DAY_S)
        ]
        .prop_map(RetryAfter::Secs),
        prop_oneof![Just(-60i64), 2i64..600, Just(20 * DAY_S)].prop_map(RetryAfter::Date),
        prop_oneof![Just(1i64), 500i64..90_000].prop_map(RetryAfter::Millis),
        Just(RetryAfter::Garbage),
    ]
}

/// What the unified headers of one answer say.
#[derive(Debug, Clone)]
struct Quota {
    status: Option<Said>,
    reset_in: Option<i64>,
    windows: Vec<WindowSaid>,
}

fn quota() -> impl Strategy<Value = Quota> {
    (
        prop::option::of(said()),
        prop::option::of(reset_in()),
        prop::collection::vec(window(), 0..3),
    )
        .prop_map(|(status, reset_in, windows)| Quota {
            status,
            reset_in,
            windows,
        })
}

/// The event stream a 200 carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Streamed {
    /// Content to its end.
    Whole,
    /// `message_start`, `ping`, then `error` of `rate_limit_error` before any content.
    OpeningLimit,
    /// `message_start`, then `error` of `overloaded_error`.
    OpeningOverloaded,
    /// Content began, then `error` of `rate_limit_error`.
    LateLimit,
}

#[derive(Debug, Clone)]
enum Reply {
    Ok(Quota),
    TooMany {
        retry_after: Option<RetryAfter>,
        quota: Quota,
        spend_limit: bool,
    },
    BadRequest {
        third_party: bool,
    },
    /// A 401. `elsewhere`: another process refreshed the login just before (the engine adopts
    /// its token, the token endpoint is not asked); else the engine must ask it.
    Unauthorized {
        elsewhere: bool,
    },
    NotFound,
    Overloaded,
    ServerError(u16),
    Stream(Streamed),
}

/// An upstream answer; `trouble` weighs how often it is not a plain success (and whether a 401
/// comes at all: a refusal is for good, and a long run would soon have no account left).
fn reply(trouble: u32) -> impl Strategy<Value = Reply> {
    let rare = trouble.min(1);
    prop_oneof![
        6 => quota().prop_map(Reply::Ok),
        trouble * 3 => (prop::option::of(retry_after()), quota(), prop::bool::weighted(0.15)).prop_map(
            |(retry_after, quota, spend_limit)| Reply::TooMany {
                retry_after,
                quota,
                spend_limit
            }
        ),
        1 => any::<bool>().prop_map(|third_party| Reply::BadRequest { third_party }),
        rare * 2 => any::<bool>().prop_map(|elsewhere| Reply::Unauthorized { elsewhere }),
        1 => Just(Reply::NotFound),
        1 => Just(Reply::Overloaded),
        1 => prop::sample::select(vec![500u16, 502, 503]).prop_map(Reply::ServerError),
        3 => prop_oneof![
            2 => Just(Streamed::Whole),
            trouble => Just(Streamed::OpeningLimit),
            1 => Just(Streamed::OpeningOverloaded),
            trouble => Just(Streamed::LateLimit),
        ]
        .prop_map(Reply::Stream),
    ]
}

/// What the token endpoint answers a refresh.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TokenAnswer {
    Tokens,
    InvalidGrant,
    /// No connection formed: nothing was sent.
    Network,
    /// Sent, and the answer lost; `arrived`: the endpoint rotated the token all the same.
    Lost {
        arrived: bool,
    },
    Status(u16),
    /// A 429 asking for this many seconds.
    Wait(u64),
}

fn token_answer(trouble: u32) -> impl Strategy<Value = TokenAnswer> {
    prop_oneof![
        8 => Just(TokenAnswer::Tokens),
        trouble.min(1) => Just(TokenAnswer::InvalidGrant),
        trouble => Just(TokenAnswer::Network),
        trouble => prop::sample::select(vec![500u16, 503]).prop_map(TokenAnswer::Status),
        trouble => prop::sample::select(vec![1u64, 60, 3600, 9 * DAY_S as u64, 29 * DAY_S as u64])
            .prop_map(TokenAnswer::Wait),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Path {
    Messages,
    CountTokens,
    FileCreate,
    /// The n-th file made so far (or one no account made).
    FileRead(u8),
    BatchCreate,
    BatchRead(u8),
}

fn path() -> impl Strategy<Value = Path> {
    prop_oneof![
        6 => Just(Path::Messages),
        1 => Just(Path::CountTokens),
        1 => Just(Path::FileCreate),
        1 => (0u8..4).prop_map(Path::FileRead),
        1 => Just(Path::BatchCreate),
        1 => (0u8..4).prop_map(Path::BatchRead),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Request {
        model: Option<String>,
        path: Path,
        session: Option<u8>,
        /// The answers to its attempts, in order; past them, a plain 200.
        replies: Vec<Reply>,
        /// What the token endpoint answers the refreshes made meanwhile; past them, new tokens.
        token: Vec<TokenAnswer>,
        /// Driven as OpenCode 2's hooks do (`try_next`/`try_judge` first), else as the fetch.
        sync: bool,
        /// Another process (the CLI) removes the account of this attempt (counted from 0)
        /// while its answer is on the way.
        remove_at: Option<u8>,
    },
    /// Requests sent at the same moment, each answered with a plain 200.
    Together(u8, Vec<TokenAnswer>),
    /// `reset-cooldowns`: in this process (`true`: the binding also clears the engine's memory),
    /// or from another (the CLI while OpenCode runs: this process learns it from the store).
    ResetCooldowns(bool),
    Priority(usize, i64),
    /// `enable`/`disable` of an account: in this process (`true`: as the binding's
    /// `setEnabled`, which also forgets what this process decided about it), or from another
    /// (the CLI: this process learns it from the store at its next request).
    Enable(usize, bool, bool),
    /// Another process (this plugin's, or aidevops's `cooldownUntil`) writes that account `.0`
    /// rests for `.3` seconds, for the model family `.1` only when given.
    ElseRests(usize, Option<&'static str>, bool, u16),
    /// Another process refreshed the login: new tokens in the file.
    ElseRefreshed(usize),
    /// A person logs in again (or adds a new key) under that name; a removed account comes
    /// back, at the end of the file.
    Relogin(usize),
    /// `remove` of an account: in this process (`true`: as the binding's `removeAccount`, which
    /// also forgets what this process decided about it), or from another (the CLI).
    Remove(usize, bool),
    /// The clock moves on this many seconds.
    Pass(i64),
    /// A real pause, in ms: reorders what the engine does in the background.
    Pause(u8),
}

fn op(trouble: u32) -> impl Strategy<Value = Op> {
    let model = prop_oneof![
        4 => prop::sample::select(vec![
            Some("claude-sonnet-4-5".to_string()),
            Some("claude-opus-4-1".to_string()),
            Some("claude-haiku-4-5".to_string()),
            None,
        ]),
        1 => (0u8..100).prop_map(|n| Some(format!("custom-model-{n}"))),
    ];
    prop_oneof![
        12 => (
            model,
            path(),
            prop::option::of(0u8..3),
            prop::collection::vec(reply(trouble), 0..4),
            prop::collection::vec(token_answer(trouble), 0..3),
            any::<bool>(),
            prop::option::weighted(0.04, 0u8..3)
        )
            .prop_map(|(model, path, session, replies, token, sync, remove_at)| Op::Request {
                model,
                path,
                session,
                replies,
                token,
                sync,
                remove_at
            }),
        1 => (2u8..5, prop::collection::vec(token_answer(trouble), 0..2))
            .prop_map(|(n, token)| Op::Together(n, token)),
        1 => any::<bool>().prop_map(Op::ResetCooldowns),
        1 => (0usize..5, 0i64..3).prop_map(|(i, p)| Op::Priority(i, p)),
        trouble => (0usize..5, any::<bool>(), any::<bool>())
            .prop_map(|(i, on, here)| Op::Enable(i, on, here)),
        1 => (
            0usize..5,
            prop::sample::select(vec![None, Some("sonnet"), Some("opus")]),
            any::<bool>(),
            30u16..3600
        )
            .prop_map(|(i, family, theirs, secs)| Op::ElseRests(i, family, theirs, secs)),
        // (One arm for two: past ten arms, proptest refuses the weight 0 of a calm run.)
        2 => prop_oneof![
            (0usize..5).prop_map(Op::ElseRefreshed),
            (0usize..5, any::<bool>()).prop_map(|(i, here)| Op::Remove(i, here)),
        ],
        trouble => (0usize..5).prop_map(Op::Relogin),
        4 => prop_oneof![
            1i64..60,
            Just(301),
            Just(3600),
            Just(5 * 3600),
            Just(8 * 3600),
            Just(DAY_S),
            Just(8 * DAY_S + 30),
        ]
        .prop_map(Op::Pass),
        1 => (0u8..20).prop_map(Op::Pause),
    ]
}

/// A credential as the model expects to find it in the file.
#[derive(Debug, Clone, PartialEq)]
enum Cred {
    Login {
        access: String,
        refresh: String,
        expires: i64,
    },
    Key(String),
}

/// The fake token endpoint: rotates refresh tokens as Anthropic's does (each works once), answers
/// as the step says, and notes every way the engine breaks the credential protocol.
struct TokenServer {
    /// Every token of this world starts with it (the fake endpoint is the process's).
    prefix: String,
    /// The refresh token it accepts, per account.
    current: Vec<String>,
    made: u64,
    /// Tokens presented and answered: spent, whatever the answer.
    spent: HashSet<String>,
    /// Tokens whose answer was lost: presenting one once more is the protocol's one exception.
    lost: HashSet<String>,
    /// The login whose refresh token it refused (`invalid_grant`), until a new login.
    dead: Vec<bool>,
    /// Until when it asked each account's refreshes to wait (its failures' backoff).
    wait_until: Vec<i64>,
    /// What the next refreshes get; past them, new tokens.
    script: VecDeque<TokenAnswer>,
    /// Tokens it issued to the engine, not yet seen by the model.
    issued: Vec<Option<(String, String, i64)>>,
    /// Accounts whose refresh failed since the model last looked.
    failed: HashSet<usize>,
    violations: Vec<String>,
}

static WORLDS: AtomicU64 = AtomicU64::new(0);

impl TokenServer {
    fn index(&self, token: &str) -> Option<usize> {
        token
            .strip_prefix(&self.prefix)?
            .split('-')
            .next()?
            .parse()
            .ok()
    }

    /// New tokens for account `i`: the old refresh token stops working.
    fn issue(&mut self, i: usize) -> (String, String, i64) {
        self.made += 1;
        let access = format!("{}{i}-access-{}", self.prefix, self.made);
        let refresh = format!("{}{i}-{}", self.prefix, self.made);
        self.current[i] = refresh.clone();
        self.dead[i] = false;
        (access, refresh, now_ms() + ISSUED_LIFE_MS)
    }

    fn answer(&mut self, token: &str) -> crate::error::Result<Tokens> {
        let now = now_ms();
        let Some(i) = self.index(token).filter(|i| *i < self.current.len()) else {
            self.violations
                .push("a refresh token the endpoint never issued was presented".into());
            return Err(Error::OAuthInvalidGrant("invalid_grant".into()));
        };
        if self.spent.contains(token) && !self.lost.remove(token) {
            self.violations.push(format!(
                "member {i}'s refresh token was presented again after it was answered"
            ));
        }
        if self.dead[i] && self.current[i] == token {
            self.violations
                .push(format!("member {i}'s dead login was refreshed again"));
        }
        if self.wait_until[i] > now {
            self.violations.push(format!(
                "member {i}'s refresh was presented {} ms into the endpoint's wait",
                self.wait_until[i] - now
            ));
        }
        let answer = self.script.pop_front().unwrap_or(TokenAnswer::Tokens);
        // Spent once the endpoint rotated it or refused it for good; a 5xx, a 429 or a
        // connection that never formed leaves it as it was, to be presented again later.
        if matches!(
            answer,
            TokenAnswer::Tokens | TokenAnswer::InvalidGrant | TokenAnswer::Lost { .. }
        ) {
            self.spent.insert(token.to_string());
        }
        let fail = |me: &mut TokenServer, wait_ms: i64| {
            // The engine keeps to it, up to the 8-day cap on any rest.
            me.wait_until[i] = now + wait_ms.min(MAX_REST_MS);
            me.failed.insert(i);
        };
        match answer {
            TokenAnswer::Tokens if self.current[i] == token && !self.dead[i] => {
                let (access, refresh, expires) = self.issue(i);
                self.issued[i] = Some((access.clone(), refresh.clone(), expires));
                Ok(Tokens {
                    access: Secret::new(access),
                    refresh: Secret::new(refresh),
                    expires,
                    email: None,
                })
            }
            TokenAnswer::Tokens | TokenAnswer::InvalidGrant => {
                self.dead[i] = true;
                self.failed.insert(i);
                Err(Error::OAuthInvalidGrant(
                    "invalid_grant: Refresh token not found or invalid".into(),
                ))
            }
            TokenAnswer::Network => {
                fail(self, TOKEN_BACKOFF_MS);
                Err(Error::Network {
                    what: "the token endpoint",
                    detail: "connection refused".into(),
                    never_connected: true,
                })
            }
            TokenAnswer::Lost { arrived } => {
                self.lost.insert(token.to_string());
                if arrived {
                    self.issue(i);
                }
                Err(Error::Network {
                    what: "the token endpoint",
                    detail: "connection reset".into(),
                    never_connected: false,
                })
            }
            TokenAnswer::Status(status) => {
                fail(self, TOKEN_BACKOFF_MS);
                Err(Error::OAuthHttp {
                    what: "token endpoint",
                    status,
                    detail: "unavailable".into(),
                    retry_after: None,
                })
            }
            TokenAnswer::Wait(secs) => {
                fail(self, secs as i64 * 1000);
                Err(Error::OAuthHttp {
                    what: "token endpoint",
                    status: 429,
                    detail: "rate limited".into(),
                    retry_after: Some(secs),
                })
            }
        }
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    engine: Arc<Engine>,
    server: Arc<Mutex<TokenServer>>,
    _endpoint: fake_token_endpoint::Registered,
    emails: Vec<String>,
    members: Vec<Member>,
    creds: Vec<Cred>,
    enabled: Vec<bool>,
    /// Accounts removed (and not added again since): never sent again, gone from the file.
    removed: Vec<bool>,
    /// The accounts in the file, in its order: an account added again comes last.
    order: Vec<usize>,
    /// Accounts whose credential the engine refused (a 401, a dead login): never sent again
    /// until a new login.
    refused: HashSet<String>,
    files: Vec<String>,
    batches: Vec<String>,
    /// (email, field) -> the rest's end as last read from the file.
    rests: HashMap<(String, String), i64>,
    /// (email, family or None) -> until when another process said it rests (a lower bound:
    /// this process may rest it longer).
    said_rests: HashMap<(String, Option<String>), i64>,
    /// (email, family, endpoint) -> until when a 429's `retry-after` rests such requests on it
    /// at least.
    retry_after_rests: HashMap<(String, Option<String>, Option<&'static str>), i64>,
    /// email -> until when a 401 the token endpoint could not answer rests it (this process's
    /// own: an enable or disable of the account forgets it).
    token_rests: HashMap<String, i64>,
    /// Per account: by when every rest decided for it so far is over (then it serves again,
    /// unless disabled or refused).
    free_at: Vec<i64>,
    /// Per subscription: by when the rest of a third-party refusal is over, which holds it back
    /// only while a Console key can serve instead (once none can, the next attempt lifts it).
    for_keys_until: Vec<i64>,
    /// (email, until) of each 429 with a `retry-after` in this step: the rest it decided is
    /// shared through the file, so that other processes leave the account alone as long.
    to_share: Vec<(String, i64)>,
    /// email -> when answers with usage were delivered from it: each is counted once in its
    /// `usage` (for 30 days).
    served: HashMap<String, Vec<i64>>,
    made: u64,
}

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($arg)+)));
        }
    };
}

type Checked<T = ()> = Result<T, TestCaseError>;

/// How long after its rest ends an account may still be held: the reopening spread, and two
/// seconds for the engine's clock against the model's.
fn reopening_margin() -> i64 {
    super::jitter_max() + 2_000
}

fn header(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(n, v);
    }
}

fn put_quota(headers: &mut HeaderMap, q: &Quota, now_s: i64) {
    const P: &str = "anthropic-ratelimit-unified-";
    if let Some(s) = q.status {
        header(headers, &format!("{P}status"), s.text());
    }
    if let Some(r) = q.reset_in {
        header(headers, &format!("{P}reset"), &(now_s + r).to_string());
    }
    for w in &q.windows {
        if let Some(s) = w.said {
            header(headers, &format!("{P}{}-status", w.name), s.text());
        }
        if let Some(u) = w.utilization {
            header(
                headers,
                &format!("{P}{}-utilization", w.name),
                &format!("{}", f64::from(u) / 100.0),
            );
        }
        if let Some(r) = w.reset_in {
            header(
                headers,
                &format!("{P}{}-reset", w.name),
                &(now_s + r).to_string(),
            );
        }
    }
}

/// Whether a 429's unified headers may say a window (or the whole quota) is exhausted, rather
/// than a throttle: a window's use of 100 % or more counts unless it says it is allowed. (An
/// overall rejection always counts here, though it is a throttle when its reset is another
/// model's window's: this only bounds when a rest is over.)
fn exhausts_something(q: &Quota) -> bool {
    matches!(q.status, Some(Said::Rejected))
        || q.windows.iter().any(|w| {
            matches!(w.said, Some(Said::Rejected))
                || (!matches!(w.said, Some(Said::Allowed | Said::Warning))
                    && w.utilization.is_some_and(|u| u >= 100))
        })
}

/// The wait a `retry-after` says, as the engine can read it (ms; a date loses up to a second to
/// its whole seconds; a number past 30 days is read as 30 days); None when it cannot be read.
fn retry_after_wait(r: &RetryAfter) -> Option<i64> {
    const MOST: i64 = 30 * DAY_S * 1000;
    match r {
        RetryAfter::Secs(s) => Some((s * 1000).min(MOST)),
        RetryAfter::Date(s) => Some((s * 1000 - 1000).max(0)),
        RetryAfter::Millis(ms) => Some((*ms).min(MOST)),
        RetryAfter::Garbage => None,
    }
}

/// The chunks of an event stream, and how many of them are its opening's (what a driver reads
/// before judging).
fn stream_chunks(kind: Streamed, n: u64) -> Vec<Vec<u8>> {
    let event = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n").into_bytes();
    let start = event(
        "message_start",
        format!(
            r#"{{"type":"message_start","message":{{"id":"msg_s{n}","usage":{{"input_tokens":{},"output_tokens":1}}}}}}"#,
            10 + n
        ),
    );
    let ping = event("ping", r#"{"type":"ping"}"#.into());
    let error = |kind: &str| {
        event(
            "error",
            format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{kind}"}}}}"#),
        )
    };
    let block = event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
            .into(),
    );
    let delta = event(
        "content_block_delta",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#
            .into(),
    );
    let end = event(
        "message_delta",
        r#"{"type":"message_delta","usage":{"output_tokens":3}}"#.into(),
    );
    let stop = event("message_stop", r#"{"type":"message_stop"}"#.into());
    match kind {
        Streamed::Whole => vec![start, ping, block, delta, end, stop],
        Streamed::OpeningLimit => vec![start, ping, error("rate_limit_error")],
        Streamed::OpeningOverloaded => vec![start, error("overloaded_error")],
        Streamed::LateLimit => vec![start, block, delta, error("rate_limit_error")],
    }
}

fn base_headers() -> HeaderMap {
    let mut base = HeaderMap::new();
    header(&mut base, "content-type", "application/json");
    header(&mut base, "anthropic-version", "2023-06-01");
    header(&mut base, "anthropic-beta", "files-api-2025-04-14");
    header(&mut base, "x-model-test", "the same request");
    base
}

/// Whether `sent` carries the caller's request as it was (its credential added).
fn same_request(base: &HeaderMap, sent: &HeaderMap) -> bool {
    base.iter().all(|(name, value)| {
        let got: Vec<&str> = sent
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        match value.to_str() {
            Ok(v) if name.as_str() == "anthropic-beta" => {
                got.iter().flat_map(|g| g.split(',')).any(|b| b.trim() == v)
            }
            Ok(v) => got == [v],
            Err(_) => false,
        }
    })
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

impl World {
    async fn new(members: Vec<Member>) -> Checked<World> {
        // In memory where there is such a directory: a pool write is two fsyncs, and a case
        // writes after every step.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .map_err(fail)?;
        let store = Store::file(dir.path().join("pool.json"));
        let now = now_ms();
        let prefix = format!("fake-refresh-w{}-", WORLDS.fetch_add(1, Ordering::Relaxed));
        let mut pool = Pool::default();
        let (mut emails, mut creds, mut enabled, mut current) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, m) in members.iter().enumerate() {
            let email = format!("member{i}@model.test");
            let refresh = format!("{prefix}{i}-0");
            let (mut a, cred) = if m.api_key {
                let key = format!("fake-key-{i}");
                (
                    Account::new_api_key(&email, Secret::new(key.clone()), now),
                    Cred::Key(key),
                )
            } else {
                let access = format!("{prefix}{i}-access-0");
                let expires = now + m.token_life_s * 1000;
                (
                    Account::new_oauth(
                        &email,
                        Secret::new(access.clone()),
                        Secret::new(refresh.clone()),
                        expires,
                        now,
                    ),
                    Cred::Login {
                        access,
                        refresh: refresh.clone(),
                        expires,
                    },
                )
            };
            a.priority = m.priority;
            if m.disabled {
                a.enabled = Some(false);
                a.status = "disabled".into();
            }
            if m.reserve {
                a.extra.insert("reserve".into(), serde_json::json!(0.2));
            }
            pool.upsert(a);
            emails.push(email);
            creds.push(cred);
            enabled.push(!m.disabled);
            current.push(refresh);
        }
        store.save(pool).await.map_err(fail)?;
        let n = members.len();
        let server = Arc::new(Mutex::new(TokenServer {
            prefix: prefix.clone(),
            current,
            made: 0,
            spent: HashSet::new(),
            lost: HashSet::new(),
            dead: vec![false; n],
            wait_until: vec![0; n],
            script: VecDeque::new(),
            issued: vec![None; n],
            failed: HashSet::new(),
            violations: Vec::new(),
        }));
        let answering = server.clone();
        let endpoint = fake_token_endpoint::register(
            &prefix,
            Arc::new(move |token: &str| crate::store::lock(&answering).answer(token)),
        );
        let engine = Engine::for_store(store.clone());
        Ok(World {
            _dir: dir,
            store,
            engine,
            server,
            _endpoint: endpoint,
            emails,
            members,
            creds,
            enabled,
            removed: vec![false; n],
            order: (0..n).collect(),
            refused: HashSet::new(),
            files: Vec::new(),
            batches: Vec::new(),
            rests: HashMap::new(),
            served: HashMap::new(),
            said_rests: HashMap::new(),
            retry_after_rests: HashMap::new(),
            token_rests: HashMap::new(),
            free_at: vec![0; n],
            for_keys_until: vec![0; n],
            to_share: Vec::new(),
            made: 0,
        })
    }

    fn index(&self, email: &str) -> Checked<usize> {
        self.emails
            .iter()
            .position(|e| e == email)
            .ok_or_else(|| TestCaseError::fail(format!("{email} was sent but is no member")))
    }

    async fn blocked(&self, email: &str, family: Option<&str>, endpoint: Option<&str>) -> Blocked {
        let Ok(pool) = self.engine.snapshot().await else {
            return Blocked::Out;
        };
        match pool.find(email) {
            Some(a) => self.engine.blocked_for(a, family, endpoint, now_ms()),
            None => Blocked::Out,
        }
    }

    /// The latest end of what holds `email` back for such requests (a request naming no model
    /// may rest the model-scoped window that refused it).
    async fn held_until(&self, email: &str, family: Option<&str>, endpoint: Option<&str>) -> i64 {
        let families: Vec<Option<&str>> = match family {
            Some(f) => vec![Some(f)],
            None => vec![None, Some("sonnet"), Some("opus")],
        };
        let mut until = 0;
        for f in families {
            match self.blocked(email, f, endpoint).await {
                Blocked::Until(t) => until = until.max(t),
                Blocked::Out => return i64::MAX,
                Blocked::No => {}
            }
        }
        until
    }

    /// What the token endpoint did since last looked: tokens the engine got, logins it refused,
    /// failures (and their waits), and any breach of the credential protocol.
    fn sync(&mut self) -> Checked<HashSet<usize>> {
        let mut server = crate::store::lock(&self.server);
        if let Some(v) = server.violations.first() {
            return Err(TestCaseError::fail(v.clone()));
        }
        for i in 0..self.emails.len() {
            if let Some((access, refresh, expires)) = server.issued[i].take() {
                self.creds[i] = Cred::Login {
                    access,
                    refresh,
                    expires,
                };
            }
            if server.dead[i] && matches!(self.creds[i], Cred::Login { .. }) {
                self.refused.insert(self.emails[i].clone());
            }
        }
        let failed = std::mem::take(&mut server.failed);
        for i in &failed {
            self.free_at[*i] = self.free_at[*i].max(server.wait_until[*i]);
        }
        Ok(failed)
    }

    /// A login whose access token is due for a refresh the token endpoint will not give yet:
    /// it cannot serve until then. The end of that wait.
    fn token_wait(&self, i: usize) -> Option<i64> {
        let Cred::Login { expires, .. } = &self.creds[i] else {
            return None;
        };
        let now = now_ms();
        let due = expires - super::credentials::REFRESH_MARGIN_MS <= now;
        let until = crate::store::lock(&self.server).wait_until[i];
        (due && until > now && self.enabled[i] && !self.refused.contains(&self.emails[i]))
            .then_some(until)
    }

    /// Another process refreshed the login: new tokens in the file (its old refresh token spent).
    /// Account `i` removed, from this process or another: the file loses it, and nothing it
    /// served is counted any more.
    async fn remove(&mut self, i: usize, here: bool) -> Checked {
        let email = self.emails[i].clone();
        let (n, emails) = crate::manage::remove(&self.store, &email)
            .await
            .map_err(fail)?;
        check!(
            n == 1 && emails == [email.clone()],
            "removing {email} removed {n} entries ({emails:?})"
        );
        if here {
            // As the binding's `removeAccount` does.
            self.engine.forget(&email);
        }
        self.removed[i] = true;
        self.enabled[i] = false;
        self.order.retain(|&j| j != i);
        self.served.remove(&email);
        Ok(())
    }

    /// Account `i`'s email, while it is in the pool.
    fn present(&self, i: usize) -> Option<&String> {
        self.emails.get(i).filter(|_| !self.removed[i])
    }

    fn is_removed(&self, email: &str) -> bool {
        self.emails
            .iter()
            .position(|e| e == email)
            .is_some_and(|i| self.removed[i])
    }

    async fn else_refreshed(&mut self, i: usize) -> Checked {
        if !matches!(self.creds[i], Cred::Login { .. }) || self.refused.contains(&self.emails[i]) {
            return Ok(());
        }
        let (access, refresh, expires) = {
            let mut server = crate::store::lock(&self.server);
            let old = server.current[i].clone();
            server.spent.insert(old);
            server.issue(i)
        };
        self.creds[i] = Cred::Login {
            access: access.clone(),
            refresh: refresh.clone(),
            expires,
        };
        let email = self.emails[i].clone();
        // The rest after a 401 was about the old token.
        self.token_rests.remove(&email);
        self.store
            .update(move |pool| {
                if let Some(a) = pool.find_mut(&email) {
                    a.access = Some(Secret::new(access));
                    a.refresh = Some(Secret::new(refresh));
                    a.expires = Some(expires);
                }
                Ok(())
            })
            .await
            .map_err(fail)
    }

    /// A person logs in again under that name (or adds a new key): what upsert does.
    async fn relogin(&mut self, i: usize) -> Checked {
        let email = self.emails[i].clone();
        let now = now_ms();
        let account = match &self.creds[i] {
            Cred::Login { .. } => {
                let (access, refresh, expires) = {
                    let mut server = crate::store::lock(&self.server);
                    server.wait_until[i] = 0;
                    server.issue(i)
                };
                self.creds[i] = Cred::Login {
                    access: access.clone(),
                    refresh: refresh.clone(),
                    expires,
                };
                Account::new_oauth(
                    &email,
                    Secret::new(access),
                    Secret::new(refresh),
                    expires,
                    now,
                )
            }
            Cred::Key(_) => {
                self.made += 1;
                let key = format!("fake-key-{i}-{}", self.made);
                self.creds[i] = Cred::Key(key.clone());
                Account::new_api_key(&email, Secret::new(key), now)
            }
        };
        self.store
            .update(move |pool| {
                pool.upsert(account);
                Ok(())
            })
            .await
            .map_err(fail)?;
        // A removed account is added again, last, enabled.
        if self.removed[i] {
            self.removed[i] = false;
            self.enabled[i] = true;
            self.order.push(i);
        }
        // A new login lifts what rested the old one: its refusal, and its cooldowns.
        self.refused.remove(&email);
        self.token_rests.remove(&email);
        self.said_rests.retain(|(who, _), _| *who != email);
        self.retry_after_rests
            .retain(|(who, _, _), _| *who != email);
        Ok(())
    }

    fn path_text(&mut self, path: Path) -> String {
        let nth = |made: &[String], n: u8, kind: &str| {
            made.get(usize::from(n))
                .cloned()
                .unwrap_or_else(|| format!("{kind}_011nobody{n}"))
        };
        match path {
            Path::Messages => "/v1/messages".into(),
            Path::CountTokens => "/v1/messages/count_tokens".into(),
            Path::FileCreate => "/v1/files".into(),
            Path::FileRead(n) => format!("/v1/files/{}/content", nth(&self.files, n, "file")),
            Path::BatchCreate => "/v1/messages/batches".into(),
            Path::BatchRead(n) => format!(
                "/v1/messages/batches/{}/results",
                nth(&self.batches, n, "msgbatch")
            ),
        }
    }

    /// Checks an attempt the engine handed out against what the model knows of its account.
    fn check_sent(
        &self,
        email: &str,
        sent: &HeaderMap,
        base: &HeaderMap,
        family: Option<&str>,
        endpoint: Option<&'static str>,
        resource: bool,
    ) -> Checked {
        let i = self.index(email)?;
        check!(!self.removed[i], "{email} was removed and was sent");
        check!(self.enabled[i], "{email} is disabled and was sent");
        check!(
            !self.refused.contains(email),
            "{email}'s credential was refused (or its login is dead) and it was sent again"
        );
        check!(
            same_request(base, sent),
            "the request sent to {email} is not the caller's: {sent:?}"
        );
        let presented = match &self.creds[i] {
            Cred::Login { access, .. } => sent
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(|v| v == format!("Bearer {access}")),
            Cred::Key(key) => sent
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(|v| v == key),
        };
        check!(
            presented == Some(true),
            "{email} was sent without its own current credential"
        );
        if let Cred::Login { expires, .. } = &self.creds[i] {
            check!(
                *expires > now_ms(),
                "{email} was sent with an access token that expired {} s ago",
                (now_ms() - expires) / 1000
            );
        }
        // A request for a file or a batch goes to the account holding it even while it rests.
        if resource {
            return Ok(());
        }
        let now = now_ms();
        for ((who, scope), until) in &self.said_rests {
            check!(
                !(who == email && *until > now && (scope.is_none() || scope.as_deref() == family)),
                "{email} was sent while the pool file says it rests{} for {} s more",
                scope
                    .as_deref()
                    .map(|s| format!(" for {s}"))
                    .unwrap_or_default(),
                (until - now) / 1000
            );
        }
        if let Some(until) = self.token_rests.get(email).filter(|t| **t > now) {
            check!(
                false,
                "{email} was sent {} ms before the token endpoint's wait after its 401 ended",
                until - now
            );
        }
        for ((who, f, e), until) in &self.retry_after_rests {
            check!(
                !(who == email && *until > now && f.as_deref() == family && *e == endpoint),
                "{email} was sent {} ms before the retry-after of its 429 for such a request ended",
                until - now
            );
        }
        Ok(())
    }

    /// Counts a delivered JSON answer's usage as the drivers do, and remembers what it made.
    fn deliver_json(&mut self, ex: &super::Exchange, email: &str, path: Path) {
        self.made += 1;
        let id = match path {
            Path::FileCreate => Some(format!("file_011made{}", self.made)),
            Path::BatchCreate => Some(format!("msgbatch_01made{}", self.made)),
            _ => None,
        };
        let body = serde_json::json!({
            "id": id.clone().unwrap_or_else(|| format!("msg_{}", self.made)),
            "type": "message",
            "usage": { "input_tokens": 10 + self.made, "output_tokens": 3 }
        });
        if let Some(sink) = ex.usage_sink().filter(|s| s.wanted(false)) {
            let mut tap = UsageTap::new(false);
            tap.observe(body.to_string().as_bytes());
            sink.record(&mut tap);
            if super::usage::enabled() && !self.is_removed(email) {
                self.served
                    .entry(email.to_string())
                    .or_default()
                    .push(now_ms());
            }
        }
        match (path, id) {
            (Path::FileCreate, Some(id)) => self.files.push(id),
            (Path::BatchCreate, Some(id)) => self.batches.push(id),
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn request(
        &mut self,
        model: Option<&str>,
        path: Path,
        session: Option<u8>,
        replies: &[Reply],
        token: &[TokenAnswer],
        sync: bool,
        remove_at: Option<u8>,
    ) -> Checked {
        crate::store::lock(&self.server).script = token.iter().copied().collect();
        let result = self
            .request_inner(model, path, session, replies, sync, remove_at)
            .await;
        crate::store::lock(&self.server).script.clear();
        result?;
        self.sync().map(drop)
    }

    async fn request_inner(
        &mut self,
        model: Option<&str>,
        path: Path,
        session: Option<u8>,
        replies: &[Reply],
        sync: bool,
        remove_at: Option<u8>,
    ) -> Checked {
        let url = self.path_text(path);
        let mut meta = RequestMeta::default()
            .with_model(model.map(str::to_string))
            .with_url(&url);
        meta.session = session.map(|s| format!("session-{s}"));
        let family = model.and_then(limits::model_family);
        let family = family.as_deref();
        let endpoint = meta.endpoint;
        let resource = meta.resource.is_some();
        let n = self.emails.len();
        let mut ex = self.engine.exchange(meta);
        let cancel = CancellationToken::new();
        let base = base_headers();
        let mut replies = replies.iter();
        let mut sent: HashMap<String, usize> = HashMap::new();
        let mut limited: HashSet<String> = HashSet::new();
        let mut unauthorized: HashSet<String> = HashSet::new();
        // Accounts that answered this request's file or batch with a 404: not theirs.
        let mut not_found: HashSet<String> = HashSet::new();
        let mut attempts = 0usize;
        loop {
            let step = match sync.then(|| ex.try_next(&base)).flatten() {
                Some(step) => step,
                None => ex.next(&base, &cancel).await,
            };
            self.sync()?;
            let attempt = match step {
                Ok(Step::Send(a)) => a,
                Ok(Step::Answer(s)) => {
                    check!(s.status == 429, "the pool's own answer is a {}", s.status);
                    let get = |name: &str| {
                        s.headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.clone())
                    };
                    // A request for what one account holds, after that account's 429 here:
                    // no other account can see it, so the pool answers for that one alone.
                    let bound = get("x-oauth-pool").as_deref() == Some("holder-cooling");
                    check!(
                        get("x-oauth-pool").as_deref() == Some("all-accounts-cooling")
                            || (bound && resource && !limited.is_empty()),
                        "the pool's 429 says x-oauth-pool: all-accounts-cooling (or holder-cooling after the holder's 429): {:?}",
                        s.headers
                    );
                    let secs: i64 = get("retry-after")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| TestCaseError::fail("the pool's 429 has no retry-after"))?;
                    // The truth, as the contract says: the wait until the soonest account is
                    // offered again, which is its rest (8 days at most) and this process's
                    // reopening spread (`OAUTH_POOL_JITTER_MS`) after it.
                    let spread = super::jitter_max() / 1000 + 1;
                    let most = MAX_REST_MS / 1000 + spread;
                    check!(
                        (1..=most).contains(&secs),
                        "the pool's 429 says retry-after {secs} s: not within 1 s to 8 days and the jitter"
                    );
                    if !bound {
                        self.nobody_left(&sent, family, endpoint, "answered for the pool")
                            .await?;
                    }
                    // Cooling, or a login waiting for the token endpoint after a failure that
                    // waiting mends (it was POOL_NO_ACCOUNT when none cooled, which a host does
                    // not retry).
                    let mut cooling = false;
                    for (i, email) in self.emails.iter().enumerate() {
                        let b = self.blocked(email, family, endpoint).await;
                        cooling |= matches!(b, Blocked::Until(_)) || self.token_wait(i).is_some();
                    }
                    check!(
                        cooling,
                        "the pool answered 429 (all cooling) while none cools nor waits for the token endpoint"
                    );
                    // An account that only waits for the token endpoint is usable when that
                    // wait ends: the pool's wait is no longer.
                    let now = now_ms();
                    for i in 0..n {
                        // Bound to the holder, only its wait is the request's.
                        if bound && !limited.contains(&self.emails[i]) {
                            continue;
                        }
                        // Not one that also cools: that one serves when both are over.
                        let free =
                            self.blocked(&self.emails[i], family, endpoint).await == Blocked::No;
                        if let Some(until) = self.token_wait(i).filter(|_| free) {
                            let wait = (until - now + 999) / 1000;
                            check!(
                                secs <= wait + spread,
                                "the pool's 429 says retry-after {secs} s while {} is usable in {wait} s (the token endpoint's wait)",
                                self.emails[i]
                            );
                        }
                    }
                    // Nor longer than the soonest account that may hold what the request names
                    // serves again, by every rest the model saw decided (a client told to wait
                    // longer stalls while one could serve).
                    if !bound {
                        let soonest = (0..n)
                            .filter(|&i| {
                                self.enabled[i]
                                    && !self.refused.contains(&self.emails[i])
                                    && !not_found.contains(&self.emails[i])
                            })
                            .map(|i| self.free_by_model_at(i))
                            .min();
                        if let Some(t) = soonest {
                            let wait = (t - now).max(0) / 1000 + 1;
                            check!(
                                secs <= wait + spread,
                                "the pool's 429 says retry-after {secs} s while every rest decided for an account ends in {wait} s"
                            );
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    check!(
                        e.code() == "POOL_NO_ACCOUNT",
                        "a request failed with {} ({e}), not a coded no-account error",
                        e.code()
                    );
                    // A request for what one account holds (its file or batch): no other
                    // account can see it, so with that account out of the pool (removed,
                    // disabled, its login refused) the pool says so instead of asking the
                    // others, who could only answer 404.
                    let message = e.to_string();
                    let holder_out = resource
                        && (0..n).any(|i| {
                            let email = &self.emails[i];
                            message.contains(&format!(" is held by {email} "))
                                && (self.removed[i]
                                    || !self.enabled[i]
                                    || self.refused.contains(email))
                        });
                    if holder_out {
                        return Ok(());
                    }
                    self.nobody_left(&sent, family, endpoint, "said no account")
                        .await?;
                    for email in &self.emails {
                        let b = self.blocked(email, family, endpoint).await;
                        check!(
                            !matches!(b, Blocked::Until(_)),
                            "the pool said no usable account while {email} only cools ({b:?}): that is its 429"
                        );
                    }
                    // A login that only waits for the token endpoint may still be left: with
                    // nothing cooling, the request fails with what the endpoint said (a broken
                    // token URL must not pass for a rate limit), as the README's table says.
                    return Ok(());
                }
            };
            attempts += 1;
            let email = attempt.email.clone();
            let i = self.index(&email)?;
            check!(
                attempts <= n + unauthorized.len(),
                "attempt {attempts} of one request with {n} accounts and {} retries after a 401",
                unauthorized.len()
            );
            check!(
                !limited.contains(&email),
                "{email} answered 429 in this request and was sent this request again"
            );
            let times = sent.entry(email.clone()).or_default();
            *times += 1;
            check!(
                *times <= 1 + usize::from(unauthorized.contains(&email)),
                "{email} was sent {times} times in one request"
            );
            self.check_sent(&email, &attempt.headers, &base, family, endpoint, resource)?;

            let reply = replies.next().cloned().unwrap_or(Reply::Ok(Quota {
                status: None,
                reset_in: None,
                windows: Vec::new(),
            }));
            let login = matches!(self.creds[i], Cred::Login { .. });
            if matches!(reply, Reply::Unauthorized { elsewhere: true })
                && login
                && !unauthorized.contains(&email)
            {
                self.else_refreshed(i).await?;
            }
            if remove_at.is_some_and(|k| usize::from(k) + 1 == attempts) && !self.removed[i] {
                self.remove(i, false).await?;
            }
            let before = self.blocked(&email, family, endpoint).await;
            let before_messages = self.blocked(&email, family, None).await;
            let now = now_ms();
            let now_s = now / 1000;
            let mut headers = HeaderMap::new();
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            let (status, body): (u16, Option<Vec<u8>>) = match &reply {
                Reply::Ok(q) => {
                    put_quota(&mut headers, q, now_s);
                    header(&mut headers, "content-type", "application/json");
                    (200, None)
                }
                Reply::Stream(kind) => {
                    header(&mut headers, "content-type", "text/event-stream");
                    self.made += 1;
                    chunks = stream_chunks(*kind, self.made);
                    (200, None)
                }
                Reply::TooMany {
                    retry_after,
                    quota,
                    spend_limit,
                } => {
                    put_quota(&mut headers, quota, now_s);
                    match retry_after {
                        Some(RetryAfter::Secs(s)) => {
                            header(&mut headers, "retry-after", &s.to_string())
                        }
                        Some(RetryAfter::Date(s)) => {
                            let at = crate::account::system_now()
                                .checked_add(std::time::Duration::from_secs(s.unsigned_abs()))
                                .filter(|_| *s >= 0)
                                .unwrap_or_else(|| {
                                    crate::account::system_now()
                                        - std::time::Duration::from_secs(s.unsigned_abs())
                                });
                            header(&mut headers, "retry-after", &httpdate::fmt_http_date(at));
                        }
                        Some(RetryAfter::Millis(ms)) => {
                            header(&mut headers, "retry-after-ms", &ms.to_string())
                        }
                        Some(RetryAfter::Garbage) => header(&mut headers, "retry-after", "soon"),
                        None => {}
                    }
                    let body = if *spend_limit {
                        br#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#.to_vec()
                    } else {
                        br#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#.to_vec()
                    };
                    (429, Some(body))
                }
                Reply::BadRequest { third_party } => {
                    let body = if *third_party {
                        br#"{"type":"error","error":{"type":"invalid_request_error","message":"Third-party apps now draw from your extra usage, not your plan limits."}}"#.to_vec()
                    } else {
                        br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#.to_vec()
                    };
                    (400, Some(body))
                }
                Reply::Unauthorized { .. } => (401, None),
                Reply::NotFound => (404, None),
                Reply::Overloaded => (529, None),
                Reply::ServerError(status) => (*status, None),
            };
            // An event stream is judged once its opening is read, as the drivers do.
            let mut opening = Opening::new();
            let mut read = 0;
            if verdict::reads_opening(status, &headers) {
                while read < chunks.len() {
                    read += 1;
                    if opening.feed(&chunks[read - 1]) {
                        break;
                    }
                }
            }
            let said = opening.said().map(str::to_string);
            let judged = match sync
                .then(|| ex.try_judge(status, &headers, body.as_deref(), said.as_deref()))
                .flatten()
            {
                Some(v) => Ok(v),
                None => {
                    ex.judge(status, &headers, body.as_deref(), said.as_deref(), &cancel)
                        .await
                }
            };
            let failed = self.sync()?;
            // A subscription's third-party refusal with a key the pool can use (`keys_instead`).
            let keys_instead = login
                && matches!(reply, Reply::BadRequest { third_party: true })
                && (0..self.emails.len()).any(|j| {
                    self.members[j].api_key
                        && self.enabled[j]
                        && !self.refused.contains(&self.emails[j])
                });
            let verdict = judged.map_err(|e| {
                TestCaseError::fail(format!("judging a {status} failed: {} ({e})", e.code()))
            })?;
            if self.members[i].reserve {
                // A reserve holds the account back until a window it heard of resets (8 days
                // at most).
                self.free_at[i] = self.free_at[i].max(now + MAX_REST_MS);
            }
            match &reply {
                Reply::TooMany {
                    retry_after,
                    quota,
                    spend_limit,
                } => {
                    limited.insert(email.clone());
                    // A request that names no model family rests the family of the window
                    // it was refused by, or the account when that window names none.
                    let held = self.held_until(&email, family, endpoint).await;
                    check!(
                        held > now_ms(),
                        "{email} answered 429 and is offered again at once for such a request"
                    );
                    let wait = retry_after.as_ref().and_then(retry_after_wait);
                    if let Some(wait) = wait {
                        // Never shorter than the server said (a second at least), never past
                        // the 8-day cap.
                        let least = now + wait.clamp(MIN_REST_MS, MAX_REST_MS) - SAME_COOLDOWN_MS;
                        check!(
                            held >= least,
                            "{email}'s 429 said wait {wait} ms and it rests {} ms",
                            held - now
                        );
                        self.to_share.push((email.clone(), least));
                        let named_scope = quota.windows.iter().any(|w| w.name.contains('_'));
                        if family.is_some() || endpoint.is_some() || !named_scope {
                            let key = (email.clone(), family.map(str::to_string), endpoint);
                            let t = self.retry_after_rests.entry(key).or_default();
                            *t = (*t).max(least);
                        }
                    }
                    // A rejected account-wide window rests the whole account until its reset
                    // (said in whole seconds; 8 days at most), in the file too. A window named
                    // twice is one header each: the last status and the last reset said.
                    for (k, w) in quota.windows.iter().enumerate() {
                        if quota.windows[k + 1..].iter().any(|v| v.name == w.name) {
                            continue;
                        }
                        let named = || quota.windows.iter().filter(|v| v.name == w.name);
                        let said = named().filter_map(|v| v.said).next_back();
                        let reset = named().filter_map(|v| v.reset_in).next_back();
                        let (Some(Said::Rejected), Some(r)) = (said, reset) else {
                            continue;
                        };
                        if w.name.contains('_') || r <= 1 {
                            continue;
                        }
                        let least = now + (r * 1000).min(MAX_REST_MS) - SAME_COOLDOWN_MS - 1000;
                        check!(
                            held >= least,
                            "{email}'s 429 said its {} window is spent for {r} s and it rests {} ms",
                            w.name,
                            held - now
                        );
                        self.to_share.push((email.clone(), least));
                    }
                    let throttle = !exhausts_something(quota) && !spend_limit;
                    self.free_at[i] = self.free_at[i].max(if throttle {
                        now_ms() + wait.unwrap_or(BURST_MS).clamp(MIN_REST_MS, MAX_REST_MS)
                    } else {
                        now_ms() + MAX_REST_MS
                    });
                    // A throttle of an endpoint with limits of its own rests only that endpoint.
                    // (A window it reports may bring a reserve's line: that holds back all.)
                    let reserve_line = self.members[i].reserve && !quota.windows.is_empty();
                    if throttle
                        && !reserve_line
                        && endpoint.is_some()
                        && before_messages == Blocked::No
                    {
                        let after = self.blocked(&email, family, None).await;
                        check!(
                            after == Blocked::No,
                            "a throttle of {email}'s {} rested its messages too ({after:?})",
                            endpoint.unwrap_or_default()
                        );
                    }
                }
                Reply::BadRequest { third_party: true } if keys_instead => {
                    // Delivered, not retried; the next requests go to the keys for an hour.
                    for (j, other) in self.emails.clone().iter().enumerate() {
                        if self.members[j].api_key {
                            continue;
                        }
                        let held = self.held_until(other, family, endpoint).await;
                        check!(
                            held >= now + verdict::THIRD_PARTY_REST_MS - SAME_COOLDOWN_MS,
                            "{email}'s third-party refusal, with a key in the pool, left the subscription {other} to be chosen again"
                        );
                        self.for_keys_until[j] =
                            self.for_keys_until[j].max(now_ms() + verdict::THIRD_PARTY_REST_MS);
                    }
                }
                Reply::Unauthorized { .. } => {
                    // A key's 401, or a login's second in this request, refuses it for good.
                    let again = !unauthorized.insert(email.clone());
                    if again || !login {
                        self.refused.insert(email.clone());
                    }
                    // A 401 the token endpoint could not answer for now rests the account
                    // until the endpoint may be asked again.
                    if failed.contains(&i) && !self.refused.contains(&email) {
                        let until = crate::store::lock(&self.server).wait_until[i];
                        let t = self.token_rests.entry(email.clone()).or_default();
                        *t = (*t).max(until);
                    }
                }
                Reply::Stream(Streamed::OpeningLimit) => {
                    check!(
                        verdict == Verdict::Retry,
                        "a rate_limit_error in {email}'s event stream opening was delivered, not failed over"
                    );
                    limited.insert(email.clone());
                    let held = self.held_until(&email, family, endpoint).await;
                    check!(
                        held > now_ms(),
                        "{email}'s stream opening said rate_limit_error and it is offered again at once"
                    );
                    self.free_at[i] = self.free_at[i].max(now_ms() + BURST_MS);
                }
                _ => {}
            }
            check!(
                !(status == 401 && verdict == Verdict::Deliver),
                "a 401 from {email} was delivered"
            );
            if verdict == Verdict::Retry {
                if matches!(reply, Reply::NotFound) {
                    not_found.insert(email.clone());
                }
                check!(
                    matches!(status, 401 | 429 | 404)
                        || matches!(reply, Reply::Stream(Streamed::OpeningLimit)),
                    "a {status} was not delivered"
                );
                continue;
            }
            check!(
                status != 429,
                "a 429 from {email} was delivered, not failed over"
            );
            let benchless = !keys_instead
                && matches!(
                    reply,
                    Reply::BadRequest { .. }
                        | Reply::NotFound
                        | Reply::Overloaded
                        | Reply::ServerError(_)
                        | Reply::Stream(Streamed::OpeningOverloaded)
                );
            if let Reply::Stream(kind) = reply {
                // Delivered: the caller reads the stream once, the opening first; nothing of it
                // is sent again. The tap reads it as it passes and judges its end.
                let mut tap = UsageTap::new(true);
                for chunk in &chunks {
                    tap.observe(chunk);
                }
                if let Some(sink) = ex.usage_sink().filter(|s| s.wanted(true)) {
                    sink.record(&mut tap);
                    if super::usage::enabled() && !self.removed[i] {
                        self.served.entry(email.clone()).or_default().push(now_ms());
                    }
                }
                if kind == Streamed::LateLimit {
                    let held = self.blocked(&email, family, None).await;
                    check!(
                        matches!(held, Blocked::Until(_) | Blocked::Out),
                        "{email}'s stream said rate_limit_error after its content began and it does not rest"
                    );
                    self.free_at[i] = self.free_at[i].max(now_ms() + BURST_MS);
                }
                return Ok(());
            }
            if benchless && before == Blocked::No {
                let after = self.blocked(&email, family, endpoint).await;
                check!(
                    after == Blocked::No,
                    "a {status} benched {email} ({after:?})"
                );
            }
            if status == 200 {
                self.deliver_json(&ex, &email, path);
            }
            return Ok(());
        }
    }

    /// Requests sent at the same moment (a session and its subagents): whatever each needs of
    /// the token endpoint, it is asked once per token.
    async fn together(&mut self, n: u8, token: &[TokenAnswer]) -> Checked {
        crate::store::lock(&self.server).script = token.iter().copied().collect();
        let base = base_headers();
        let cancel = CancellationToken::new();
        let mut exs: Vec<super::Exchange> = (0..n)
            .map(|_| {
                self.engine.exchange(
                    RequestMeta::default()
                        .with_model(Some("claude-sonnet-4-5".into()))
                        .with_url("/v1/messages"),
                )
            })
            .collect();
        let steps =
            futures_util::future::join_all(exs.iter_mut().map(|ex| ex.next(&base, &cancel))).await;
        crate::store::lock(&self.server).script.clear();
        self.sync()?;
        for (ex, step) in exs.iter_mut().zip(steps) {
            match step {
                Ok(Step::Send(a)) => {
                    self.check_sent(&a.email, &a.headers, &base, Some("sonnet"), None, false)?;
                    let verdict = ex
                        .judge(200, &HeaderMap::new(), None, None, &cancel)
                        .await
                        .map_err(fail)?;
                    check!(verdict == Verdict::Deliver, "a 200 was not delivered");
                    self.deliver_json(ex, &a.email, Path::Messages);
                }
                Ok(Step::Answer(s)) => {
                    check!(s.status == 429, "the pool's own answer is a {}", s.status);
                    self.nobody_left(
                        &HashMap::new(),
                        Some("sonnet"),
                        None,
                        "answered for the pool (at once)",
                    )
                    .await?;
                }
                Err(e) => {
                    check!(
                        e.code() == "POOL_NO_ACCOUNT",
                        "a request failed with {} ({e})",
                        e.code()
                    );
                    self.nobody_left(
                        &HashMap::new(),
                        Some("sonnet"),
                        None,
                        "said no account (at once)",
                    )
                    .await?;
                }
            }
        }
        self.sync().map(drop)
    }

    /// The pool gave up on a request: no account it did not try could serve it.
    async fn nobody_left(
        &self,
        sent: &HashMap<String, usize>,
        family: Option<&str>,
        endpoint: Option<&str>,
        how: &str,
    ) -> Checked {
        for (i, email) in self.emails.iter().enumerate() {
            if sent.contains_key(email) || self.token_wait(i).is_some() {
                continue;
            }
            let b = self.blocked(email, family, endpoint).await;
            check!(
                b != Blocked::No,
                "the pool {how} while {email} (not tried) could serve"
            );
            check!(
                !self.free_by_model(i, now_ms()),
                "the pool {how} while {email} (not tried), by every rest decided for it, could serve ({b:?})"
            );
        }
        Ok(())
    }

    /// The first account that may serve (enabled, not refused, not a reserve) but is held back
    /// for some kind of request, with that kind and how; None when all are free for all.
    async fn first_held(
        &self,
    ) -> Option<(
        String,
        (Option<&'static str>, Option<&'static str>),
        Blocked,
    )> {
        for (i, email) in self.emails.iter().enumerate() {
            if !self.enabled[i] || self.refused.contains(email) {
                continue;
            }
            for scope in SCOPES {
                let b = self.blocked(email, scope.0, scope.1).await;
                if b != Blocked::No {
                    return Some((email.clone(), scope, b));
                }
            }
        }
        None
    }

    /// Whether some Console key may still serve: enabled and never refused.
    fn key_usable(&self) -> bool {
        (0..self.emails.len()).any(|j| {
            self.members[j].api_key && self.enabled[j] && !self.refused.contains(&self.emails[j])
        })
    }

    /// Whether every rest decided for account `i` is over by `now` (with the reopening spread).
    fn free_by_model(&self, i: usize, now: i64) -> bool {
        self.enabled[i]
            && !self.refused.contains(&self.emails[i])
            && now > self.free_by_model_at(i) + reopening_margin()
    }

    /// When every rest decided for account `i` is over: a third-party refusal's rest only
    /// counts while a Console key can serve instead.
    fn free_by_model_at(&self, i: usize) -> i64 {
        let for_keys = if self.key_usable() {
            self.for_keys_until[i]
        } else {
            0
        };
        self.free_at[i].max(for_keys)
    }

    /// Time passed: every rest decided so far that has run out lets its account serve again.
    async fn passed(&self) -> Checked {
        let now = now_ms();
        for (i, email) in self.emails.iter().enumerate() {
            // A third-party refusal's rest is lifted by an attempt, not by time: until the next
            // request it holds however many keys are left.
            let until = self.free_at[i].max(self.for_keys_until[i]);
            if !self.enabled[i] || self.refused.contains(email) || now <= until + reopening_margin()
            {
                continue;
            }
            for (family, endpoint) in SCOPES {
                let b = self.blocked(email, family, endpoint).await;
                check!(
                    b == Blocked::No,
                    "{email} is still held back for {family:?}/{endpoint:?} ({b:?}, {} s from now) after every rest decided for it ran out",
                    match b {
                        Blocked::Until(t) => (t - now) / 1000,
                        _ => 0,
                    }
                );
            }
        }
        Ok(())
    }

    /// What the file holds after everything recorded so far is written.
    async fn check_file(&mut self, since: i64) -> Checked {
        self.engine
            .flush()
            .await
            .map_err(|e| TestCaseError::fail(format!("bookkeeping not written: {e}")))?;
        let bytes = std::fs::read(
            self.store
                .path()
                .map(|p| p.to_path_buf())
                .unwrap_or_default(),
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let pool = Pool::parse(&bytes)
            .map_err(|e| TestCaseError::fail(format!("the pool file does not parse: {e}")))?;
        check!(
            pool.invalid_entries().next().is_none(),
            "the pool file has an unreadable entry"
        );
        let stored: Vec<&Account> = pool.accounts().collect();
        check!(
            stored
                .iter()
                .map(|a| a.email.as_str())
                .eq(self.order.iter().map(|&i| self.emails[i].as_str())),
            "the accounts changed: {:?}, not {:?}",
            stored.iter().map(|a| &a.email).collect::<Vec<_>>(),
            self.order
                .iter()
                .map(|&i| &self.emails[i])
                .collect::<Vec<_>>()
        );
        let upto = now_ms();
        let creds: Vec<&Cred> = self.order.iter().map(|&i| &self.creds[i]).collect();
        for (a, cred) in stored.iter().zip(creds) {
            let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
            let same = match cred {
                Cred::Login {
                    access,
                    refresh,
                    expires,
                } => {
                    secret(&a.access).as_ref() == Some(access)
                        && secret(&a.refresh).as_ref() == Some(refresh)
                        && a.expires == Some(*expires)
                        && a.key.is_none()
                        && !a.is_api_key()
                }
                Cred::Key(key) => {
                    secret(&a.key).as_ref() == Some(key)
                        && a.access.is_none()
                        && a.refresh.is_none()
                }
            };
            check!(same, "{}'s credential in the file was changed", a.email);
            let counted: u64 = a
                .extra
                .get("usage")
                .and_then(|u| u.get("days"))
                .and_then(serde_json::Value::as_object)
                .into_iter()
                .flat_map(|days| days.values())
                .filter_map(serde_json::Value::as_object)
                .flat_map(|models| models.values())
                .filter_map(|c| c.get("requests").and_then(serde_json::Value::as_u64))
                .sum();
            // Days are kept for 30 days: older ones may have gone with the last write.
            let served = self.served.get(&a.email).map(Vec::as_slice).unwrap_or(&[]);
            let oldest = super::bookkeeping::day_of(upto - 30 * DAY_S * 1000);
            let recent = served
                .iter()
                .filter(|t| super::bookkeeping::day_of(**t) >= oldest)
                .count() as u64;
            let all = served.len() as u64;
            check!(
                (recent..=all).contains(&counted),
                "{} served {all} answers with usage ({recent} in the last 30 days) and the file counts {counted}",
                a.email
            );
            let mut rests: Vec<(String, i64)> = Vec::new();
            if let Some(t) = a.rate_limit_until {
                rests.push(("rateLimitUntil".into(), t));
            }
            for field in ["cooldownUntil", "refreshBackoffUntil"] {
                if let Some(t) = a.extra.get(field).and_then(serde_json::Value::as_i64) {
                    rests.push((field.into(), t));
                }
            }
            if let Some(m) = a.extra.get("modelCooldowns").and_then(|v| v.as_object()) {
                for (scope, t) in m {
                    if let Some(t) = t.as_i64() {
                        rests.push((format!("modelCooldowns.{scope}"), t));
                    }
                }
            }
            let shared = rests
                .iter()
                .filter(|(field, _)| field != "refreshBackoffUntil")
                .map(|(_, t)| *t)
                .max()
                .unwrap_or(0);
            for (_, least) in self.to_share.iter().filter(|(e, _)| *e == a.email) {
                check!(
                    shared >= *least,
                    "{}'s 429 rested it {} s more, and the file says so for {} s: other processes go back to it early",
                    a.email,
                    (least - upto) / 1000,
                    (shared - upto).max(0) / 1000
                );
            }
            for (field, t) in rests {
                let key = (a.email.clone(), field.clone());
                if self.rests.get(&key) == Some(&t) {
                    continue;
                }
                check!(
                    t > since,
                    "{}'s {field} was written {} ms in the past",
                    a.email,
                    since - t
                );
                check!(
                    t <= upto + MAX_REST_MS,
                    "{}'s {field} was written {} s past the 8-day cap",
                    a.email,
                    (t - upto - MAX_REST_MS) / 1000
                );
                self.rests.insert(key, t);
            }
        }
        self.to_share.clear();
        Ok(())
    }

    async fn step(&mut self, op: &Op) -> Checked {
        let since = now_ms();
        match op {
            Op::Request {
                model,
                path,
                session,
                replies,
                token,
                sync,
                remove_at,
            } => {
                self.request(
                    model.as_deref(),
                    *path,
                    *session,
                    replies,
                    token,
                    *sync,
                    *remove_at,
                )
                .await?;
            }
            Op::Together(n, token) => self.together(*n, token).await?,
            Op::ResetCooldowns(here) => {
                crate::manage::reset_cooldowns(&self.store)
                    .await
                    .map_err(fail)?;
                if *here {
                    self.engine.reset_memory();
                }
                self.said_rests.clear();
                self.retry_after_rests.clear();
                self.token_rests.clear();
                self.for_keys_until.fill(0);
                // The token endpoint's waits go too: the next refresh asks it again.
                crate::store::lock(&self.server).wait_until.fill(0);
                // From another process it reaches this one within a second: what this process
                // decided itself counts until the store has held it that long.
                let patience = super::overlay::STORED_GRACE + std::time::Duration::from_millis(200);
                let started = std::time::Instant::now();
                let mut held = self.first_held().await;
                while !*here && held.is_some() && started.elapsed() < patience {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    held = self.first_held().await;
                }
                if let Some((email, (family, endpoint), b)) = held {
                    return Err(TestCaseError::fail(format!(
                        "{email} is still held back for {family:?}/{endpoint:?} after reset-cooldowns ({}): {b:?}, {} ms from now",
                        if *here { "here" } else { "from another process" },
                        match b {
                            Blocked::Until(t) => t - now_ms(),
                            _ => 0,
                        }
                    )));
                }
            }
            Op::Priority(i, p) => {
                if let Some(email) = self.present(*i) {
                    crate::manage::set_priority(&self.store, email, *p)
                        .await
                        .map_err(fail)?;
                }
            }
            Op::Enable(i, on, here) => {
                if let Some(email) = self.present(*i).cloned() {
                    crate::manage::set_enabled(&self.store, &email, *on)
                        .await
                        .map_err(fail)?;
                    if *here {
                        // As the binding's `setEnabled` does.
                        self.engine.forget(&email);
                        self.token_rests.remove(&email);
                    }
                    self.enabled[*i] = *on;
                }
            }
            Op::ElseRests(i, family, theirs, secs) => {
                if let Some(email) = self.present(*i).cloned() {
                    let until = now_ms() + i64::from(*secs) * 1000;
                    let (who, family, theirs) = (email.clone(), *family, *theirs);
                    self.store
                        .update(move |pool| {
                            if let Some(a) = pool.find_mut(&who) {
                                let now = now_ms();
                                match family {
                                    Some(f) => a.cool_model_until(f, until, now),
                                    None if theirs => {
                                        let t = a.stored_cooldown_until().unwrap_or(0).max(until);
                                        a.extra.insert("cooldownUntil".into(), t.into());
                                    }
                                    None => a.cool_until(until, now),
                                }
                            }
                            Ok(())
                        })
                        .await
                        .map_err(fail)?;
                    let t = self
                        .said_rests
                        .entry((email, family.map(str::to_string)))
                        .or_default();
                    *t = (*t).max(until);
                    self.free_at[*i] = self.free_at[*i].max(until);
                }
            }
            Op::ElseRefreshed(i) => {
                if self.present(*i).is_some() {
                    self.else_refreshed(*i).await?;
                }
            }
            Op::Relogin(i) => {
                if *i < self.emails.len() {
                    self.relogin(*i).await?;
                }
            }
            Op::Remove(i, here) => {
                if self.present(*i).is_some() {
                    self.remove(*i, *here).await?;
                }
            }
            Op::Pass(secs) => {
                test_clock::advance(secs * 1000);
                self.passed().await?;
            }
            Op::Pause(ms) => {
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(*ms))).await;
            }
        }
        self.check_file(since).await
    }
}

fn run(members: Vec<Member>, ops: Vec<Op>) -> Checked<u64> {
    // A runtime of the case's own: the addon's is process-wide, and its own test checks that
    // nothing started it before. What the engine spawns (its writes, its refreshes) runs here
    // too, on this thread, with this thread's clock.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    let result = rt.block_on(async move {
        let mut world = World::new(members).await?;
        for op in &ops {
            world.step(op).await?;
        }
        let size = std::fs::metadata(world.store.path().unwrap_or(std::path::Path::new("")))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(size)
    });
    // The next case starts on the machine's clock.
    test_clock::set(0);
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_keeps_its_promises_whatever_comes(
        members in prop::collection::vec(member(), 1..=5),
        ops in prop::collection::vec(op(1), 1..24),
    ) {
        run(members, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2, max_shrink_iters: 64, ..ProptestConfig::default() })]

    /// Hundreds of requests, most of them served, some with new window resets and models each
    /// time, over weeks: the bookkeeping stays bounded.
    #[test]
    fn the_pool_file_stays_small_over_a_long_run(
        members in prop::collection::vec(member(), 1..=5),
        ops in prop::collection::vec(op(0), 500),
    ) {
        let size = run(members, ops)?;
        prop_assert!(size < 256 * 1024, "the pool file is {size} bytes after 500 steps");
    }
}

fn plain_request(replies: Vec<Reply>) -> Op {
    refreshing_request(replies, Vec::new())
}

/// A Messages request for sonnet whose refreshes the token endpoint answers as `token` says.
fn refreshing_request(replies: Vec<Reply>, token: Vec<TokenAnswer>) -> Op {
    Op::Request {
        model: Some("claude-sonnet-4-5".into()),
        path: Path::Messages,
        session: None,
        replies,
        token,
        sync: false,
        remove_at: None,
    }
}

/// A 429 with a `retry-after` and nothing else: no window, no spend limit.
fn bare_429(secs: i64) -> Reply {
    Reply::TooMany {
        retry_after: Some(RetryAfter::Secs(secs)),
        quota: Quota {
            status: None,
            reset_in: None,
            windows: Vec::new(),
        },
        spend_limit: false,
    }
}

/// A Console API key member.
fn api_key() -> Member {
    Member {
        api_key: true,
        ..login(0)
    }
}

fn login(token_life_s: i64) -> Member {
    Member {
        api_key: false,
        priority: None,
        disabled: false,
        reserve: false,
        token_life_s,
    }
}

#[test]
fn a_reserve_holds_an_account_back_at_most_eight_days_whatever_reset_an_answer_says() {
    // Found by the model: a 200 whose 5-hour window said 95 % used and a reset 400 days ahead
    // (a garbled header) kept the account with a reserve out of the pool for those 400 days,
    // and the pool answered every request with a 429 whose retry-after was 34,560,000 s. No
    // window is longer than a week: a reset past the 8-day cap holds it no longer than that.
    for days in [9, 400] {
        let member = Member {
            reserve: true,
            ..login(30 * DAY_S)
        };
        let served = Reply::Ok(Quota {
            status: Some(Said::Allowed),
            reset_in: None,
            windows: vec![WindowSaid {
                name: "5h",
                said: Some(Said::Allowed),
                utilization: Some(95),
                reset_in: Some(days * DAY_S),
            }],
        });
        let ops = vec![
            plain_request(vec![served]),
            plain_request(Vec::new()),
            Op::Pass(8 * DAY_S + 30),
        ];
        if let Err(e) = run(vec![member], ops) {
            panic!("a reset {days} days ahead: {e}");
        }
    }
}

#[test]
fn an_answer_lost_on_the_way_back_is_asked_once_more_and_settled() {
    // The one exception to "a refresh token is presented once": the answer was lost, so the
    // same token goes once more. When the endpoint had rotated it, that second try is refused
    // and the login is dead (kept, never presented again); when it had not, it is refreshed.
    for arrived in [false, true] {
        let ops = vec![
            refreshing_request(Vec::new(), vec![TokenAnswer::Lost { arrived }]),
            plain_request(Vec::new()),
            Op::Pass(9 * 3600),
            plain_request(Vec::new()),
        ];
        if let Err(e) = run(vec![login(-60), login(30 * DAY_S)], ops) {
            panic!("answer lost, token rotated: {arrived}: {e}");
        }
    }
}

#[test]
fn a_token_endpoints_wait_rests_a_login_at_most_eight_days() {
    // Found by the model: a token endpoint's 429 with `retry-after` of 9 days (read up to 30)
    // was kept whole: the login's `refreshBackoffUntil` was written 9 days ahead, and after a
    // 401 the account was out of the pool as long. Any rest is capped at 8 days.
    for (life, replies) in [
        (30 * DAY_S, vec![Reply::Unauthorized { elsewhere: false }]),
        (-60, Vec::new()),
    ] {
        let ops = vec![
            refreshing_request(replies, vec![TokenAnswer::Wait(9 * DAY_S as u64)]),
            Op::Pass(8 * DAY_S + 30),
            plain_request(Vec::new()),
        ];
        if let Err(e) = run(vec![login(life)], ops) {
            panic!("a login living {life} s: {e}");
        }
    }
}

#[test]
fn a_request_that_waited_on_a_refresh_refused_with_invalid_grant_does_not_present_the_dead_token() {
    // Found by the model: two requests at once for an expired login; the first presented the
    // refresh token and got `invalid_grant`; the second, waiting on that refresh, then
    // presented the same dead token again (a spent token presented twice; with strict rotation
    // that is what revokes a family).
    let ops = vec![Op::Together(3, vec![TokenAnswer::InvalidGrant])];
    if let Err(e) = run(vec![login(-60)], ops) {
        panic!("{e}");
    }
}

#[test]
fn the_pools_429_waits_no_longer_than_a_login_the_token_endpoint_lets_refresh_soon() {
    // Found by the model: an expired login whose refresh the token endpoint put off for 30 s
    // (a 503), and a key resting an hour: the pool answered 429 with retry-after 3600, an hour
    // in which the client did not come back, while the login was usable in 30 s.
    let key = api_key();
    for token in [TokenAnswer::Status(503), TokenAnswer::Network] {
        let too_many = bare_429(3600);
        let ops = vec![
            refreshing_request(vec![too_many], vec![token]),
            plain_request(Vec::new()),
            Op::Pass(31 + super::jitter_max() / 1000),
            plain_request(Vec::new()),
        ];
        if let Err(e) = run(vec![login(-60), key.clone()], ops) {
            panic!("{token:?}: {e}");
        }
    }
}

#[test]
fn disabling_one_account_does_not_lift_anothers_rest_after_a_401() {
    // Found by the model: a 401 that the token endpoint could not answer for now rests the
    // account (in this process only: its token was refused, the endpoint is to be left alone);
    // enabling or disabling any other account made the process forget it, and the next request
    // went straight back to the refused token.
    let first = Member {
        priority: Some(2),
        ..login(30 * DAY_S)
    };
    let ops = vec![
        refreshing_request(
            vec![Reply::Unauthorized { elsewhere: false }],
            vec![TokenAnswer::Status(503)],
        ),
        Op::Enable(1, false, true),
        plain_request(Vec::new()),
    ];
    if let Err(e) = run(vec![first, login(30 * DAY_S)], ops) {
        panic!("{e}");
    }
}

#[test]
fn a_third_party_refusals_rest_ends_once_no_key_can_serve() {
    // After a subscription's third-party refusal the subscriptions rest for an hour so that the
    // pool's Console keys serve. With the key then disabled (in the process, or from the CLI),
    // or refused by its 401, every account stayed out for the rest of that hour and each
    // request got the pool's 429, where the subscription's own answer was still to be had.
    let subscription = Member {
        priority: Some(2),
        ..login(30 * DAY_S)
    };
    let key = api_key();
    let refused = plain_request(vec![Reply::BadRequest { third_party: true }]);
    for key_gone in [
        Op::Enable(1, false, true),
        Op::Enable(1, false, false),
        plain_request(vec![Reply::Unauthorized { elsewhere: false }]),
    ] {
        let ops = vec![refused.clone(), key_gone, plain_request(Vec::new())];
        if let Err(e) = run(vec![subscription.clone(), key.clone()], ops) {
            panic!("{e}");
        }
    }
}

#[test]
fn a_third_party_refusals_rest_does_not_replace_a_401s() {
    // A login refused with a 401 the token endpoint could not answer for now rests for the
    // endpoint's wait; another login's third-party refusal in the same request then rested every
    // subscription for the keys, and that rest replaced the 401's. Once the key was disabled and
    // the keys' rest lifted, the refused token was sent again before the endpoint's wait ended.
    let first = Member {
        priority: Some(3),
        ..login(30 * DAY_S)
    };
    let second = Member {
        priority: Some(2),
        ..login(30 * DAY_S)
    };
    let key = api_key();
    let ops = vec![
        refreshing_request(
            vec![
                Reply::Unauthorized { elsewhere: false },
                Reply::BadRequest { third_party: true },
            ],
            vec![TokenAnswer::Status(503)],
        ),
        Op::Enable(2, false, true),
        // The second login, which served last, is asked first; its 429 moves the request on.
        plain_request(vec![bare_429(60)]),
    ];
    if let Err(e) = run(vec![first, second, key], ops) {
        panic!("{e}");
    }
}

#[test]
fn an_account_removed_while_its_answer_is_on_the_way_is_gone_for_good() {
    // The CLI removes the account a request was sent to before its answer comes: its 429, its
    // 401 (and the refresh it calls for), its usage and its cooldowns must not bring it back
    // into the file, and no later attempt may go to it. Logged in again, it comes back last.
    let members = || {
        vec![
            Member {
                priority: Some(3),
                ..login(30 * DAY_S)
            },
            Member {
                priority: Some(2),
                ..login(30 * DAY_S)
            },
            Member {
                priority: Some(1),
                ..login(30 * DAY_S)
            },
        ]
    };
    let removing = |replies: Vec<Reply>| {
        let mut op = plain_request(replies);
        if let Op::Request { remove_at, .. } = &mut op {
            *remove_at = Some(0);
        }
        op
    };
    let too_many = bare_429(60);
    for first in [
        too_many,
        Reply::Unauthorized { elsewhere: false },
        Reply::Unauthorized { elsewhere: true },
        Reply::Ok(Quota {
            status: None,
            reset_in: Some(3600),
            windows: Vec::new(),
        }),
        Reply::Stream(Streamed::LateLimit),
    ] {
        let ops = vec![
            removing(vec![first.clone()]),
            plain_request(Vec::new()),
            Op::Relogin(0),
            plain_request(Vec::new()),
            Op::Remove(1, true),
            plain_request(Vec::new()),
        ];
        if let Err(e) = run(members(), ops) {
            panic!("{first:?}: {e}");
        }
        // The only account: logged in again, it serves the next request at once (a rest its
        // removed login earned must not hold the new one back).
        let ops = vec![
            removing(vec![first.clone()]),
            Op::Relogin(0),
            plain_request(Vec::new()),
        ];
        if let Err(e) = run(vec![login(30 * DAY_S)], ops) {
            panic!("alone, {first:?}: {e}");
        }
    }
}

#[test]
fn the_same_rest_met_again_after_a_new_login_lifted_it_is_written_again() {
    // Found by the model: a spend limit rested the only account until the month turns (8 days
    // at most), and the store held it. A new login lifted it there within the second this
    // process's copy still counts, then a request for a batch (sent to an account that rests:
    // what it holds is its own to hand out) met the same spend limit again. The rest ended the
    // same, so it was taken for the copy already known: kept here but not written, and other
    // processes went back to the account.
    let spend = |retry_after: Option<RetryAfter>| Reply::TooMany {
        retry_after,
        quota: Quota {
            status: None,
            reset_in: None,
            windows: Vec::new(),
        },
        spend_limit: true,
    };
    let batch = Op::Request {
        model: Some("claude-sonnet-4-5".into()),
        path: Path::BatchRead(0),
        session: None,
        replies: vec![spend(Some(RetryAfter::Secs(0)))],
        token: Vec::new(),
        sync: false,
        remove_at: None,
    };
    let ops = vec![plain_request(vec![spend(None)]), Op::Relogin(0), batch];
    if let Err(e) = run(vec![login(30 * DAY_S)], ops) {
        panic!("{e}");
    }
}
