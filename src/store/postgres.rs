//! The fleet store: one pool shared by many hosts, on PostgreSQL (`OAUTH_POOL_STORE=postgres://`).
//! The same protocol as the file, with the database's locks instead of the kernel's:
//!
//! - A read is one statement (one snapshot of every row).
//! - A write is a transaction under a transaction-scoped advisory lock: re-read, change, write
//!   every row, bump the generation, commit. A host that dies releases it with its connection.
//! - A refresh holds the account's own advisory lock, on a connection of its own, from the re-read
//!   to the durable write (tried again while another host holds it, not waited for in the
//!   database); the holder's death (SIGKILL, a cut cable) ends the connection and the lock with it.
//!   The re-read, the claim on the token (`claim_refresh`, committed with the lock's first
//!   transaction, the lock then taken again) and the write all go on that connection, so that a
//!   refresh never waits for a second connection while its lock keeps one.
//! - Tokens (`access`, `refresh`, `key`) and every other top-level section are sealed with the
//!   store key (`crypto`): a dump holds no usable token. A wrong key is refused before anything
//!   is read or written.
//! - The database being down is `STORE_UNAVAILABLE`; the engine keeps serving from memory.
//! - It works behind a connection pooler in transaction mode (PgBouncer, Supavisor, Neon's
//!   pooled hosts), where each transaction, or each statement outside one, may get another
//!   server connection: no named prepared statement (every statement goes out unnamed with its
//!   parameter types, parse to execute in one round trip: `query_typed`), no session state (no
//!   SET, no session advisory lock: only `pg_advisory_xact_lock` and `SET LOCAL` inside an
//!   explicit transaction, which the pooler keeps on one server connection).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

use super::crypto::{SealKey, CHECK};
use super::lock;
use super::pg_url::{looked_up, no_tls, one_per_host, parse, redact, tls, wants_tls};
use crate::error::{Error, Result};
use crate::pool::{Pool, ReadCopy};
use crate::secret::scrub_tokens;

/// The schema, as numbered migrations; `store init` brings a database up to the last one.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS oauth_pool_entries (position integer PRIMARY KEY, email text, entry jsonb NOT NULL);
     CREATE TABLE IF NOT EXISTS oauth_pool_top (name text PRIMARY KEY, value jsonb NOT NULL);
     INSERT INTO oauth_pool_meta (name, value) VALUES ('generation', '0') ON CONFLICT (name) DO NOTHING;",
)];
pub const SCHEMA_VERSION: i32 = 1;
/// The pool's rows, as a write re-reads them under its lock (`PgStore::rows_to_pool`).
const POOL_ROWS: &str = "SELECT 'e', position::text, entry FROM oauth_pool_entries
     UNION ALL SELECT 't', name, value FROM oauth_pool_top
     UNION ALL SELECT 's', value, 'null'::jsonb FROM oauth_pool_meta WHERE name = 'schema'";
/// Advisory lock classes: the pool's write lock, and one lock per account's refresh.
const WRITE_LOCK: i32 = 0x6f61_7070; // "oapp"
const REFRESH_LOCK: i32 = 0x6f61_7072; // "oapr"
/// A refresh lock another host holds is tried again after 50 ms, then twice as long each time up
/// to 250 ms (a refresh takes a few hundred milliseconds).
const LOCK_RETRY_FIRST: Duration = Duration::from_millis(50);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(250);
/// How the server learns, while a lock's transaction waits on this host, that the host is gone
/// without a word (a cut cable, a laptop closed off its network, a power cut: no FIN or RST comes):
/// its TCP keepalive asked after 10 s of silence, every 5 s, three times, and unanswered data
/// given 30 s. With the operating system's defaults (two hours before the first probe) the
/// refresh lock of a vanished host kept every other host from refreshing that account, and its
/// write lock every write of the fleet, for two hours. A host that is only stopped (SIGSTOP, a
/// suspended laptop still on its network) answers the probes from its kernel and keeps its lock,
/// as the claim protocol expects. Set for the transaction only, each where the server has it; a
/// connection by Unix socket has none, and behind a pooler the pooler's own keepalive settings
/// decide when it sees the host gone. An expression: its value (how many were set) is not read.
macro_rules! keepalive {
    () => {
        "(SELECT count(set_config(name, value, true)) FROM (VALUES ('tcp_keepalives_idle', '10'),
           ('tcp_keepalives_interval', '5'), ('tcp_keepalives_count', '3'), ('tcp_user_timeout', '30000'))
           AS wanted(name, value) WHERE name IN (SELECT name FROM pg_settings))"
    };
}

/// A commit that reaches this server's disk before it is answered: where the database or role
/// says `synchronous_commit = off` (a DBA's speed setting), a server crash just after a refresh
/// lost the new tokens, and the next host presented the spent one. Raised to `local` only from
/// `off`: a setting that also waits for a standby (`on`, `remote_write`) is the DBA's to keep,
/// and `on` forced over `local` hung every write on a standby named and gone. An expression.
macro_rules! durable_commit {
    () => {
        "CASE WHEN current_setting('synchronous_commit') = 'off' THEN set_config('synchronous_commit', 'local', true) END"
    };
}

/// How a write's transaction begins, whatever the DBA set as the role's or database's defaults:
/// read committed, so that the re-read after the lock sees the writes committed while it waited
/// (under a default of repeatable read or serializable the snapshot was taken before the wait,
/// and every write queued behind another failed as a serialization error); and a wait for the
/// lock as long as our own bound (a role's `statement_timeout` of a few seconds cancelled a write
/// queued behind another host's). PostgreSQL 17's `transaction_timeout` is turned off for it:
/// changed inside a transaction, it can only be turned off, not lengthened, and the statement
/// and lock timeouts (and the client's own, `QUERY_TIMEOUT`) bound the write. Older servers do
/// not have the setting: it is set only on 17 and later. With `keepalive!`, a host gone without
/// a word while it holds the write lock lets it go within a minute.
const WRITE_BEGIN: &str = concat!(
    "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '60s'; SET LOCAL statement_timeout = '60s';
    SELECT CASE WHEN current_setting('server_version_num')::int >= 170000 THEN set_config('transaction_timeout', '0', true) END, ",
    durable_commit!(),
    ";
    SELECT ",
    keepalive!(),
    ";"
);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one exchange with a connected database may take: past it, a server or network gone
/// silent (TCP may take hours to notice) counts as the store being unavailable, so the engine
/// serves from memory and writes wait for its return.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Other hosts' writes are seen within this (the generation is asked at most this often).
const FRESH_FOR: Duration = Duration::from_millis(250);
/// The check of the generation before a request, connecting included, is given this long: past
/// it, the request is served from the last pool read rather than waiting for the store.
const STAMP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the ROLLBACK after a failed write is waited for (`rolled_back`).
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed check, requests do not ask again for this long (the store is down or mute:
/// without it, every request waited out the timeouts again).
const STAMP_BACKOFF: Duration = Duration::from_secs(5);
/// How often this host's clock is measured against the database server's (see `Clock`), and
/// at once when this host's clock was seen to jump since (by more than `CLOCK_JUMP_MS` against
/// the monotonic clock: a step, or a suspend).
const CLOCK_RECHECK: Duration = Duration::from_secs(60);
const CLOCK_JUMP_MS: i64 = 1_000;
/// The difference in use changes only when a measurement is further from it than this (plus
/// half the measurement's round trip): hosts whose clocks agree within it (NTP) store their own
/// times as they are, and the times one host reads do not move by a few ms at every measurement.
const CLOCK_TOLERANCE_MS: i64 = 1_000;
/// Past this, a difference is not a clock that is off but one that is wrong beyond use (years):
/// times are stored as they are, as before this existed.
const CLOCK_MAX_OFFSET_MS: i64 = 365 * 24 * 3600 * 1000;

/// What this host adds to its clock to read the database server's (ms), and when and by which
/// clock of this host it was measured. Times of day in the store (cooldown ends, token expiry,
/// window resets: `Pool::shift_times`) are the database server's; in memory they are this
/// host's. A host whose clock was ten minutes behind wrote cooldowns that every other host took
/// as over (the account offered at once, a 429 each), and one ten minutes ahead took every
/// other host's as over.
#[derive(Debug, Clone, Copy)]
struct Clock {
    offset: i64,
    wall: i64,
    at: Instant,
}

impl Clock {
    /// Still good: measured recently, and this host's clock did not jump since.
    fn current(&self) -> bool {
        let elapsed = i64::try_from(self.at.elapsed().as_millis()).unwrap_or(i64::MAX);
        let moved = crate::account::now_ms().saturating_sub(self.wall);
        self.at.elapsed() < CLOCK_RECHECK && moved.saturating_sub(elapsed).abs() <= CLOCK_JUMP_MS
    }
}

/// The difference to use after measuring `measured` (round trip `rtt`), `used` so far: the
/// one in use while the measurement is within the tolerance of it, else the measurement.
fn next_offset(used: i64, measured: i64, rtt: i64) -> i64 {
    if measured.abs() > CLOCK_MAX_OFFSET_MS {
        return 0;
    }
    if measured.saturating_sub(used).abs() <= CLOCK_TOLERANCE_MS + rtt / 2 {
        used
    } else {
        measured
    }
}

pub struct PgStore {
    config: Config,
    /// The roots of `sslrootcert=<file>`: only they are trusted. None: the platform's roots
    /// plus `NODE_EXTRA_CA_CERTS` / `SSL_CERT_FILE`.
    roots: Option<Vec<CertificateDer<'static>>>,
    /// The URL with its password hidden, for messages.
    shown: String,
    /// A digest of the whole URL: what tells two stores apart (two URLs can read alike once
    /// their passwords are hidden, or when they do not parse as URLs at all).
    identity: String,
    /// The key that seals the tokens, read when first needed (`key()`): a store that cannot be
    /// reached is `STORE_UNAVAILABLE` whether or not this host has its key yet (read first, it
    /// was `STORE_KEY`, "copy the key file", for a store that was down).
    key: std::sync::OnceLock<SealKey>,
    /// Shared by reads (single statements only).
    reader: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Exclusive: transactions.
    writer: tokio::sync::Mutex<Option<Client>>,
    generation: Mutex<Option<(i64, Instant)>>,
    /// Until when a failed check of the generation is not retried (see `STAMP_BACKOFF`).
    mute_until: Mutex<Option<Instant>>,
    /// The key check passed on this store (checked once per process).
    checked: tokio::sync::OnceCell<()>,
    /// This host's clock against the database server's (`None`: not measured yet).
    clock: Mutex<Option<Clock>>,
    /// The last connection refused for the server's or the role's connection limit (SQLSTATE
    /// 53300), which this process's own idle connections may be filling.
    crowded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.shown)
    }
}

/// A digest of a connection URL (see `PgStore::identity`): no password shows in it.
fn identity_of(url: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(url.trim().as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An error with its causes: tokio-postgres' own text is only its kind ("db error", "error
/// performing TLS handshake"), the server's message or the certificate problem is in the causes.
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Whether a failed transaction was rolled back within `ROLLBACK_TIMEOUT`. Its error is the
/// caller's answer: a server gone silent just after it (the ROLLBACK unanswered until TCP gave
/// up, about 15 minutes) held the pool's writer lock and the caller's write meanwhile. A
/// connection not rolled back is not used again (dropped, the server rolls it back itself).
async fn rolled_back(client: &Client) -> bool {
    matches!(
        tokio::time::timeout(ROLLBACK_TIMEOUT, client.batch_execute("ROLLBACK")).await,
        Ok(Ok(()))
    )
}

fn unavailable(e: impl std::error::Error + 'static) -> Error {
    let mut text = describe(&e);
    // PostgreSQL names the table or schema, not what the role must be granted on it.
    let refused = (&e as &(dyn std::error::Error + 'static))
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
    if refused {
        text.push_str(&format!(" (the role is missing a privilege the fleet store needs: {NEEDED_GRANTS}; see README, The fleet store, Grants)"));
    }
    Error::StoreUnavailable(scrub_tokens(&text))
}

/// `unavailable`, except for what says the tables are not the pool's (a column or table
/// missing, an `ON CONFLICT` with no key to match, another type): `store init` against another
/// program's table of the same name said the store "cannot be reached", and `list` then sent the
/// user back to `store init`.
fn unfit(e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    let foreign = [
        SqlState::UNDEFINED_COLUMN,
        SqlState::UNDEFINED_TABLE,
        SqlState::INVALID_COLUMN_REFERENCE,
        SqlState::DATATYPE_MISMATCH,
        SqlState::WRONG_OBJECT_TYPE,
    ];
    if !e.code().is_some_and(|c| foreign.contains(c)) {
        return unavailable(e);
    }
    not_the_pools(&describe(&e))
}

/// `table`, when there, has the pool's `columns` (`not_the_pools` when not).
async fn probe_table(c: &Client, table: &str, columns: &str) -> Result<()> {
    let there = c
        .query_typed_one(&format!("SELECT to_regclass('{table}') IS NOT NULL"), &[])
        .await
        .map_err(unavailable)?;
    if column::<bool>(&there, 0)? {
        c.query_typed(&format!("SELECT {columns} FROM {table} LIMIT 0"), &[])
            .await
            .map_err(unfit)?;
    }
    Ok(())
}

fn not_the_pools(detail: &str) -> Error {
    Error::StoreCorrupt(scrub_tokens(&format!(
        "the store's tables are not the pool's ({detail}): a table of one of its names (oauth_pool_meta, oauth_pool_entries, oauth_pool_top) made by another program, or the pool's own altered or dropped in part; nothing was changed. Rename or drop that table, or give the pool a schema of its own (options=-csearch_path=<schema> in the URL)"
    )))
}

/// What a fleet store's role must be granted, as the error for a missing one says.
/// How long a connection dropped at the connection limit is given to leave the server before
/// its slot is asked for again.
const CROWDED_PAUSE: Duration = Duration::from_millis(200);

const NEEDED_GRANTS: &str = "SELECT, INSERT, UPDATE and DELETE on the tables oauth_pool_entries, oauth_pool_top and oauth_pool_meta, and CREATE on the schema for `store init` to make them";

/// The advisory lock key of one account's refresh: a hash of its lower-cased email.
fn account_lock(email: &str) -> i32 {
    let digest = Sha256::digest(crate::account::normalize_email(email).as_bytes());
    i32::from_le_bytes([digest[0], digest[1], digest[2], digest[3] & 0x7f])
}

/// An account's refresh lock: a transaction left open on a connection of its own, holding the
/// account's advisory lock. Dropped, the connection closes and the database releases the lock.
/// Whatever the refresh needs from the database while the lock is held (the re-read, the claim,
/// the new tokens' write) goes on this connection: behind a pooler in transaction mode the open
/// transaction keeps one of its few server connections, and as many refreshes at once as it has
/// of them, each waiting for another connection to re-read or write, waited for each other until
/// every one failed `STORE_UNAVAILABLE`.
pub struct PgRefreshLock {
    /// `None` once given up (a write cut short mid-transaction): the connection closes, and the
    /// database rolls back what it held.
    client: Mutex<Option<Arc<Client>>>,
    id: i32,
    /// Whether the lock's transaction is open (the claim ends it: `PgStore::claim_refresh`; the
    /// write commits it: `PgStore::update_locked`).
    held: std::sync::atomic::AtomicBool,
}

impl PgRefreshLock {
    /// Whether the lock's transaction is open, the lock held, as far as this process knows.
    pub fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_held(&self, held: bool) {
        self.held.store(held, std::sync::atomic::Ordering::SeqCst);
    }

    /// The lock's connection, while it is open.
    fn client(&self) -> Result<Arc<Client>> {
        lock(&self.client)
            .clone()
            .filter(|c| !c.is_closed())
            .ok_or_else(|| {
                Error::StoreUnavailable(
                    "the refresh lock was lost: its connection to the store closed".into(),
                )
            })
    }

    /// The lock's connection while the lock is held.
    fn held_client(&self) -> Result<Arc<Client>> {
        if !self.is_held() {
            return Err(Error::StoreUnavailable(
                "the refresh lock was lost: its transaction ended".into(),
            ));
        }
        self.client()
    }

    /// Closes the connection: the database rolls back its transaction and lets go of its locks.
    fn give_up(&self) {
        self.set_held(false);
        *lock(&self.client) = None;
    }

    /// An error on the lock's connection: the lock is lost with a connection that closed.
    fn failed(&self, e: tokio_postgres::Error) -> Error {
        let closed = lock(&self.client).as_ref().is_none_or(|c| c.is_closed());
        if closed {
            self.set_held(false);
            return Error::StoreUnavailable(scrub_tokens(&format!(
                "the refresh lock was lost: {}",
                describe(&e)
            )));
        }
        unavailable(e)
    }

    /// Whether the lock is still held, asked just before the token is presented: a host frozen
    /// (a suspended laptop, SIGSTOP) while it held it may wake to find the database ended its
    /// session (a DBA, TCP keepalives) and another host refreshed meanwhile with the token it is
    /// about to present.
    pub async fn confirm(&self) -> Result<()> {
        let client = self.held_client()?;
        let asked = tokio::time::timeout(QUERY_TIMEOUT, client.simple_query("SELECT 1")).await;
        match asked {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.set_held(false);
                Err(Error::StoreUnavailable(scrub_tokens(&format!(
                    "the refresh lock was lost: {}",
                    describe(&e)
                ))))
            }
            Err(_) => {
                self.give_up();
                Err(Error::StoreUnavailable(
                    "the refresh lock did not answer".into(),
                ))
            }
        }
    }
}

/// Gives up the lock's connection unless defused: work on it cut short (its caller's time ran
/// out) leaves its transaction in a state nothing else may build on, holding the pool's write lock
/// perhaps, which this process's next write would then wait for.
struct UnlessFinished<'a> {
    lock: &'a PgRefreshLock,
    finished: bool,
}

impl Drop for UnlessFinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.lock.give_up();
        }
    }
}

impl std::fmt::Debug for PgRefreshLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgRefreshLock")
    }
}

/// The URL as the connection-string parser takes it. A scheme is case-insensitive (RFC 3986),
/// and `is_database` takes any case and surrounding spaces: the parser takes only a lower-case
/// scheme at the very start, and read anything else as `key=value` pairs, refused naming the
/// first key: `POSTGRES://…` as "unexpected EOF", and ` postgres://u:pw@h/db?sslmode=…` (a
/// pasted URL, to `store init`) as "unknown option `postgres://u:pw@h/db?sslmode`", the
/// password in the message.
fn normalized(url: &str) -> String {
    let url = url.trim();
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
        None => url.to_string(),
    }
}

impl PgStore {
    pub fn open(url: &str) -> Result<PgStore> {
        let url = &normalized(url);
        let (config, roots) = parse(url).map_err(|e| {
            Error::InvalidArgument(scrub_tokens(&format!(
                "the fleet store URL is not a PostgreSQL URL this store can use ({e})"
            )))
        })?;
        Ok(PgStore {
            config,
            roots,
            shown: redact(url),
            identity: identity_of(url),
            key: std::sync::OnceLock::new(),
            reader: tokio::sync::Mutex::new(None),
            writer: tokio::sync::Mutex::new(None),
            generation: Mutex::new(None),
            mute_until: Mutex::new(None),
            checked: tokio::sync::OnceCell::new(),
            clock: Mutex::new(None),
            crowded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Opens with an explicit key (`store copy`, `store init` with a key it just made).
    pub fn with_key(url: &str, key: SealKey) -> Result<PgStore> {
        let mut s = PgStore::open_without_key(url)?;
        s.key = std::sync::OnceLock::from(key);
        Ok(s)
    }

    fn open_without_key(url: &str) -> Result<PgStore> {
        let url = &normalized(url);
        let (config, roots) = parse(url).map_err(|e| {
            Error::InvalidArgument(scrub_tokens(&format!(
                "not a PostgreSQL URL this store can use ({e})"
            )))
        })?;
        Ok(PgStore {
            config,
            roots,
            shown: redact(url),
            identity: identity_of(url),
            key: std::sync::OnceLock::new(),
            reader: tokio::sync::Mutex::new(None),
            writer: tokio::sync::Mutex::new(None),
            generation: Mutex::new(None),
            mute_until: Mutex::new(None),
            checked: tokio::sync::OnceCell::new(),
            clock: Mutex::new(None),
            crowded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The `store init` a message tells a person to run, naming this store: the command alone
    /// is a usage error when the store was chosen with `--path`.
    fn init_command(&self) -> String {
        let word = super::file::shell_word(&self.shown);
        if self.shown.contains("***") {
            format!("`oauth-pool store init {word}` (the password where `***` stands)")
        } else {
            format!("`oauth-pool store init {word}`")
        }
    }

    /// What tells this store from another (the registry of engines is keyed by it).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    async fn connect(&self) -> Result<Client> {
        let connecting = async {
            let Some(hosts) = one_per_host(&self.config) else {
                return self.connect_to(&self.config).await;
            };
            // As tokio-postgres tries them: the next host when one fails, the last one's error.
            let mut failed = None;
            for config in &hosts {
                match self.connect_to(config).await {
                    Ok(client) => return Ok(client),
                    Err(e) => failed = Some(e),
                }
            }
            Err(failed.unwrap_or_else(|| Error::StoreUnavailable("no host to connect to".into())))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                Error::StoreUnavailable(format!("no answer from {} within 10 s", self.shown))
            })?
    }

    /// One connection by `config`, its host names looked up first (`looked_up`).
    async fn connect_to(&self, config: &Config) -> Result<Client> {
        // One connector type either way (tokio-postgres' connection code is compiled per
        // connector: 50 KB of the .node for a second one): plain text is `sslmode=disable`,
        // under which the connector is never asked.
        let addressed = looked_up(config).await?;
        let base = addressed.as_ref().unwrap_or(config);
        let (config, tls) = if wants_tls(base) {
            (None, tls(self.roots.as_deref())?)
        } else {
            let mut plain = base.clone();
            plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
            (Some(plain), no_tls()?)
        };
        let (client, conn) = config
            .as_ref()
            .unwrap_or(base)
            .connect(tls)
            .await
            .map_err(|e| {
                let limit =
                    e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS);
                self.crowded
                    .store(limit, std::sync::atomic::Ordering::Relaxed);
                unavailable(e)
            })?;
        crate::runtime::spawn_boxed(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// `work`, bounded by `QUERY_TIMEOUT`.
    async fn bounded<T>(&self, what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(QUERY_TIMEOUT, work).await {
            Ok(done) => done,
            Err(_) => {
                // The shared reader may be stuck behind what was just given up on (a table
                // lock, a server gone silent): kept, each step after waited its own 30 s on it
                // (`store copy` took 90 s to say so).
                *self.reader.lock().await = None;
                Err(self.silent(what))
            }
        }
    }

    fn silent(&self, what: &str) -> Error {
        Error::StoreUnavailable(format!(
            "{} did not answer {what} within {} s",
            self.shown,
            QUERY_TIMEOUT.as_secs()
        ))
    }

    /// A schema a newer version made (`store init` of an upgraded host). Checked by every read,
    /// write and refresh lock, not only when a process first uses the store: an OpenCode
    /// session started before another host's upgrade wrote its own format over the newer one's
    /// rows (every row is deleted and written again).
    fn newer_schema(&self, version: i64) -> Error {
        Error::StoreUnavailable(format!(
            "{} has schema {version}, newer than this version knows ({SCHEMA_VERSION}): upgrade opencode-oauth-pool (OpenCode sessions started before the upgrade too); nothing was changed",
            self.shown
        ))
    }

    /// The schema row's value as a version. One this version cannot read (edited by hand, or a
    /// format of a later version's) is refused as it is, never taken for "no schema yet": `store
    /// init` would migrate over it and write its own number, and a host would be told to run it.
    pub fn schema_number(&self, text: &str) -> Result<i64> {
        match text.trim().parse::<i64>() {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(Error::StoreUnavailable(format!(
                "{} has a schema value this version cannot read ({}, the row 'schema' of oauth_pool_meta); nothing was changed: set it back to the schema's number ({SCHEMA_VERSION} for this version's) if you know it, or ask whoever edited it",
                self.shown,
                crate::printable::bounded(&format!("{text:?}"))
            ))),
        }
    }

    async fn reader(&self) -> Result<Arc<Client>> {
        let mut slot = self.reader.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.connect().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// How far the database server's clock is from this host's (ms; positive: the server's is
    /// ahead), with the round trip of the best of three readings: what the store's times are
    /// moved by (`offset`), and what doctor reports.
    pub async fn clock_offset(&self) -> Result<(i64, i64)> {
        let c = self.reader().await?;
        self.clock_offset_on(&c).await
    }

    async fn clock_offset_on(&self, c: &Client) -> Result<(i64, i64)> {
        self.bounded("the clock check", async {
            let mut best: Option<(i64, i64)> = None;
            for _ in 0..3 {
                let sent = crate::account::now_ms();
                let row = c
                    .query_typed_one(
                        "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                        &[],
                    )
                    .await
                    .map_err(unavailable)?;
                let received = crate::account::now_ms();
                let server: i64 = column(&row, 0)?;
                let round_trip = (received - sent).max(0);
                let offset = server - sent - round_trip / 2;
                if best.is_none_or(|(_, rtt)| round_trip < rtt) {
                    best = Some((offset, round_trip));
                }
            }
            best.ok_or_else(|| Error::StoreUnavailable("no clock reading".into()))
        })
        .await
    }

    /// What to add to this host's times to store them as the database server's (see `Clock`),
    /// measured again when the last measurement is a minute old or this host's clock jumped.
    async fn offset(&self) -> Result<i64> {
        self.offset_on(None).await
    }

    /// `offset`, measured on `on` when given (a refresh lock's connection: no other is asked for
    /// while it is held).
    async fn offset_on(&self, on: Option<&Client>) -> Result<i64> {
        let known = *lock(&self.clock);
        if let Some(c) = known.filter(Clock::current) {
            return Ok(c.offset);
        }
        let (measured, rtt) = match on {
            Some(c) => self.clock_offset_on(c).await?,
            None => self.clock_offset().await?,
        };
        let used = known.map_or(0, |c| c.offset);
        let offset = next_offset(used, measured, rtt);
        if offset != used {
            tracing::info!(
                offset_ms = offset,
                "this host's clock differs from the store's database server: the store's times are moved by the difference"
            );
        }
        *lock(&self.clock) = Some(Clock {
            offset,
            wall: crate::account::now_ms(),
            at: Instant::now(),
        });
        Ok(offset)
    }

    /// The schema version the database has (0: not initialized).
    pub async fn schema_version(&self) -> Result<i64> {
        match self.schema_text().await? {
            Some(text) => self.schema_number(&text),
            None => Ok(0),
        }
    }

    /// The schema row's value as written (None: not initialized).
    pub async fn schema_text(&self) -> Result<Option<String>> {
        let c = self.reader().await?;
        self.bounded("the schema check", async {
            let exists = c
                .query_typed_one("SELECT to_regclass('oauth_pool_meta') IS NOT NULL", &[])
                .await
                .map_err(unavailable)?;
            if !column::<bool>(&exists, 0)? {
                // Another program's oauth_pool_entries or oauth_pool_top alone is no store
                // to initialize either.
                for (table, columns) in [
                    ("oauth_pool_entries", "position, email, entry"),
                    ("oauth_pool_top", "name, value"),
                ] {
                    probe_table(&c, table, columns).await?;
                }
                return Ok(None);
            }
            let row = c
                .query_typed_opt(
                    "SELECT value FROM oauth_pool_meta WHERE name = 'schema'",
                    &[],
                )
                .await
                .map_err(unfit)?;
            // No schema row: not initialized, or tables of the pool's names that another
            // program made, which `store init` refuses; "run store init" then sent the user
            // round in a loop (`list`, `doctor`, `init`).
            if row.is_none() {
                for (table, columns) in [
                    ("oauth_pool_meta", "name, value"),
                    ("oauth_pool_entries", "position, email, entry"),
                    ("oauth_pool_top", "name, value"),
                ] {
                    probe_table(&c, table, columns).await?;
                }
                let keyed = c
                    .query_typed_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                           ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                         WHERE i.indrelid = to_regclass('oauth_pool_meta') AND i.indisunique
                           AND i.indnatts = 1 AND a.attname = 'name')",
                        &[],
                    )
                    .await
                    .map_err(unavailable)?;
                if !column::<bool>(&keyed, 0)? {
                    return Err(not_the_pools("oauth_pool_meta has no unique key on name"));
                }
            }
            row.map(|r| column::<String>(&r, 0)).transpose()
        })
        .await
    }

    /// Whether the store already holds a key's check value: it was initialized (on another host,
    /// or here with a key since lost), and only that key opens it.
    pub async fn has_key_check(&self) -> Result<bool> {
        if self.schema_version().await? == 0 {
            return Ok(false);
        }
        let c = self.reader().await?;
        self.bounded("the key check", async {
            c.query_typed_opt(
                "SELECT 1 FROM oauth_pool_meta WHERE name = 'key_check'",
                &[],
            )
            .await
            .map(|row| row.is_some())
            .map_err(unavailable)
        })
        .await
    }

    /// Creates or migrates the schema, and records (or checks) the key.
    pub async fn init(&self) -> Result<i32> {
        let mut guard = self.writer.lock().await;
        let client = match guard.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let work = async {
            client
                .batch_execute(&format!(
                    "{WRITE_BEGIN} SELECT pg_advisory_xact_lock({WRITE_LOCK}, 1);"
                ))
                .await
                .map_err(unfit)?;
            // Created only when missing: a role given the tables by the DBA but no CREATE on the
            // schema (PostgreSQL 15's default on public) could not run init again to check its key.
            let found = client
                .query_typed_one(
                    "SELECT to_regclass('oauth_pool_meta') IS NOT NULL,
                       (SELECT string_agg(DISTINCT n.nspname, ', ') FROM pg_class c
                        JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relname = 'oauth_pool_meta' AND c.relkind IN ('r', 'p')
                          AND has_schema_privilege(n.oid, 'USAGE')),
                       current_setting('search_path')",
                    &[],
                )
                .await
                .map_err(unfit)?;
            if !column::<bool>(&found, 0)? {
                // A pool whose schema the search_path no longer reaches (set for the role or the
                // database since) is not started afresh beside it. Only schemas this role may use
                // count: another team's pool in a schema of its own is not this one's.
                if let Some(elsewhere) = column::<Option<String>>(&found, 1)? {
                    return Err(Error::StoreUnavailable(format!(
                        "{} has a pool in schema {elsewhere}, which the search_path ({}) does not reach; nothing was created: put that schema on the search_path (ALTER ROLE ... SET search_path, or options=-csearch_path=... in the URL); or, for a second pool of its own, create its table in the schema meant for it (CREATE TABLE <schema>.oauth_pool_meta (name text PRIMARY KEY, value text NOT NULL)) and run store init again",
                        self.shown,
                        column::<String>(&found, 2)?
                    )));
                }
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS oauth_pool_meta (name text PRIMARY KEY, value text NOT NULL);",
                    )
                    .await
                    .map_err(unfit)?;
            }
            let current = match client
                .query_typed_opt(
                    "SELECT value FROM oauth_pool_meta WHERE name = 'schema'",
                    &[],
                )
                .await
                .map_err(unfit)?
                .map(|r| column::<String>(&r, 0))
                .transpose()?
            {
                Some(text) => self.schema_number(&text)?,
                None => 0,
            };
            if current > i64::from(SCHEMA_VERSION) {
                return Err(Error::StoreUnavailable(format!(
                    "{} has schema {current}, newer than this version knows ({SCHEMA_VERSION}): upgrade opencode-oauth-pool; nothing was changed",
                    self.shown
                )));
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| i64::from(*v) > current) {
                client.batch_execute(sql).await.map_err(unfit)?;
                client
                    .execute_typed(
                        "INSERT INTO oauth_pool_meta (name, value) VALUES ('schema', $1)
                         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                        &[(&version.to_string(), Type::TEXT)],
                    )
                    .await
                    .map_err(unfit)?;
            }
            let check = client
                .query_typed_opt(
                    "SELECT value FROM oauth_pool_meta WHERE name = 'key_check'",
                    &[],
                )
                .await
                .map_err(unfit)?;
            match check {
                Some(row) => {
                    self.key()?.open("key_check", &column::<String>(&row, 0)?)?;
                }
                None => {
                    // A store that lost its check but holds entries gets one only for the key
                    // they were sealed with: another key's check would lock out every host
                    // that has the right one.
                    // An entry that holds a sealed token, else a sealed section: any entry
                    // would not do (one kept as unreadable, or with no token yet, opened with
                    // every key, and a wrong key's check locked out every right one).
                    let prefix = super::crypto::SEAL_PREFIX;
                    // Its sealed fields alone, as text: a row holding JSON this build cannot
                    // parse (`1e400`) is read as the others are (`rows_to_pool`).
                    let sample = client
                        .query_typed_opt(
                            "SELECT entry->>'email', entry->>'access', entry->>'refresh', entry->>'key'
                             FROM oauth_pool_entries
                             WHERE left(entry->>'access', length($1)) = $1
                                OR left(entry->>'refresh', length($1)) = $1
                                OR left(entry->>'key', length($1)) = $1
                             LIMIT 1",
                            &[(&prefix, Type::TEXT)],
                        )
                        .await
                        .map_err(unfit)?;
                    if let Some(row) = sample {
                        let mut entry = Map::new();
                        for (i, field) in ["email", "access", "refresh", "key"]
                            .into_iter()
                            .enumerate()
                        {
                            if let Some(text) = column::<Option<String>>(&row, i)? {
                                entry.insert(field.into(), Value::String(text));
                            }
                        }
                        self.key()?.open_entry_checking_key(Value::Object(entry))?;
                    } else {
                        let section = client
                            .query_typed_opt(
                                "SELECT name, value #>> '{}' FROM oauth_pool_top
                                 WHERE jsonb_typeof(value) = 'string'
                                   AND left(value #>> '{}', length($1)) = $1
                                 LIMIT 1",
                                &[(&prefix, Type::TEXT)],
                            )
                            .await
                            .map_err(unfit)?;
                        if let Some(row) = section {
                            self.key()?.open_section_checking_key(
                                &column::<String>(&row, 0)?,
                                &column::<String>(&row, 1)?,
                            )?;
                        }
                    }
                    let sealed = self.key()?.seal("key_check", CHECK)?;
                    client
                        .execute_typed(
                            "INSERT INTO oauth_pool_meta (name, value) VALUES ('key_check', $1)",
                            &[(&sealed, Type::TEXT)],
                        )
                        .await
                        .map_err(unfit)?;
                }
            }
            client.batch_execute("COMMIT").await.map_err(unfit)?;
            Ok(SCHEMA_VERSION)
        };
        // Gone silent: the connection is dropped (the server rolls back what it began).
        let result = tokio::time::timeout(QUERY_TIMEOUT, work)
            .await
            .map_err(|_| self.silent("the schema setup"))?;
        if (result.is_ok() || rolled_back(&client).await) && !client.is_closed() {
            *guard = Some(client);
        }
        result
    }

    /// Refuses a store that is not initialized, or whose key is not ours (before any read).
    async fn ready(&self) -> Result<()> {
        self.checked
            .get_or_try_init(|| async {
                let version = self.schema_version().await?;
                if version == 0 {
                    return Err(Error::StoreUnavailable(format!(
                        "{} has no pool schema yet: run {}",
                        self.shown,
                        self.init_command()
                    )));
                }
                if version > i64::from(SCHEMA_VERSION) {
                    return Err(self.newer_schema(version));
                }
                let c = self.reader().await?;
                let row = self
                    .bounded("the key check", async {
                        c.query_typed_opt(
                            "SELECT value FROM oauth_pool_meta WHERE name = 'key_check'",
                            &[],
                        )
                        .await
                        .map_err(unavailable)
                    })
                    .await?
                    .ok_or_else(|| {
                        Error::StoreKey(format!(
                            "the store has no key check: run {}",
                            self.init_command()
                        ))
                    })?;
                self.key()?
                    .open("key_check", &column::<String>(&row, 0)?)
                    .map(|_| ())
            })
            .await
            .map(|_| ())
    }

    /// For `doctor`: the privileges on the pool's tables this role lacks, table by table in the
    /// order `NEEDED_GRANTS` names them, asked of `has_table_privilege` so that nothing is
    /// written. A role with SELECT alone read the pool (`list`, `doctor`) and failed only at the
    /// first write or refresh. A table not there is left to the schema check.
    pub async fn missing_privileges(&self) -> Result<Vec<(String, Vec<String>)>> {
        let c = self.reader().await?;
        let rows = self
            .bounded("the privilege check", async {
                c.query_typed(
                    "SELECT t, array_agg(p ORDER BY po)
                     FROM unnest(ARRAY['oauth_pool_entries', 'oauth_pool_top', 'oauth_pool_meta']) WITH ORDINALITY AS tables(t, o),
                          unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY AS privileges(p, po)
                     WHERE to_regclass(t) IS NOT NULL AND NOT has_table_privilege(to_regclass(t), p)
                     GROUP BY t, o ORDER BY o",
                    &[],
                )
                .await
                .map_err(unavailable)
            })
            .await?;
        rows.iter()
            .map(|row| Ok((column::<String>(row, 0)?, column::<Vec<String>>(row, 1)?)))
            .collect()
    }

    /// The key check, for `doctor`: Ok when this process's key opens the store.
    pub async fn check_key(&self) -> Result<()> {
        self.ready().await
    }

    /// The generation asked less than 250 ms ago, if any (no round trip).
    pub fn generation_cached(&self) -> Option<i64> {
        lock(&self.generation)
            .filter(|(_, at)| at.elapsed() < FRESH_FOR)
            .map(|(g, _)| g)
    }

    /// Whether a check failed less than `STAMP_BACKOFF` ago.
    fn muted(&self) -> bool {
        lock(&self.mute_until).is_some_and(|until| Instant::now() < until)
    }

    /// The current generation, asked at most every 250 ms, within `STAMP_TIMEOUT`, and not again
    /// for `STAMP_BACKOFF` after a failure.
    pub async fn generation(&self) -> Result<i64> {
        if let Some(g) = self.generation_cached() {
            return Ok(g);
        }
        if self.muted() {
            return Err(Error::StoreUnavailable(
                "it did not answer a moment ago; asked again in a few seconds".into(),
            ));
        }
        let result = match tokio::time::timeout(STAMP_TIMEOUT, self.ask_generation()).await {
            Ok(asked) => asked,
            Err(_) => {
                // The connection may be stuck on the query just dropped: the next check
                // opens another.
                *self.reader.lock().await = None;
                Err(Error::StoreUnavailable(format!(
                    "no generation within {} s",
                    STAMP_TIMEOUT.as_secs()
                )))
            }
        };
        *lock(&self.mute_until) = match &result {
            Err(Error::StoreUnavailable(_)) => Some(Instant::now() + STAMP_BACKOFF),
            _ => None,
        };
        result
    }

    async fn ask_generation(&self) -> Result<i64> {
        self.ready().await?;
        let c = self.reader().await?;
        let row = self
            .bounded("the generation", async {
                c.query_typed_one(
                    "SELECT value FROM oauth_pool_meta WHERE name = 'generation'",
                    &[],
                )
                .await
                .map_err(|e| {
                    Error::StoreUnavailable(scrub_tokens(&format!(
                        "reading the generation: {}",
                        describe(&e)
                    )))
                })
            })
            .await;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                *self.reader.lock().await = None;
                return Err(e);
            }
        };
        let g = column::<String>(&row, 0)?.parse().unwrap_or(0);
        *lock(&self.generation) = Some((g, Instant::now()));
        Ok(g)
    }

    pub async fn load_generation(&self) -> Result<(Pool, i64)> {
        self.ready().await?;
        let offset = self.offset().await?;
        let c = self.reader().await?;
        let rows = self
            .bounded("a read of the pool", async {
                c.query_typed(
                    "SELECT 'e', position::text, entry FROM oauth_pool_entries
                     UNION ALL SELECT 't', name, value FROM oauth_pool_top
                     UNION ALL SELECT 'g', value, 'null'::jsonb FROM oauth_pool_meta WHERE name = 'generation'
                     UNION ALL SELECT 's', value, 'null'::jsonb FROM oauth_pool_meta WHERE name = 'schema'",
                    &[],
                )
                .await
                .map_err(unavailable)
            })
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                *self.reader.lock().await = None;
                return Err(e);
            }
        };
        let (mut pool, generation) = self.rows_to_pool(rows)?;
        pool.shift_times(-offset);
        *lock(&self.generation) = Some((generation, Instant::now()));
        Ok((pool, generation))
    }

    /// The pool as stored now, read on the refresh lock's own connection while it is held.
    pub async fn load_locked(&self, held: &PgRefreshLock) -> Result<Pool> {
        let c = held.held_client()?;
        let mut unless = UnlessFinished {
            lock: held,
            finished: false,
        };
        let offset = self.offset_on(Some(&c)).await?;
        let rows = self
            .bounded("a read of the pool", async {
                c.query_typed(POOL_ROWS, &[])
                    .await
                    .map_err(|e| held.failed(e))
            })
            .await?;
        unless.finished = true;
        let (mut pool, _) = self.rows_to_pool(rows)?;
        pool.shift_times(-offset);
        Ok(pool)
    }

    /// The pool the rows of a read hold: entries ("e", by position), top-level sections ("t"),
    /// and the generation ("g", 0 when the read did not ask for it), all opened with our key.
    /// A schema ("s") newer than ours is refused before anything is opened.
    fn rows_to_pool(&self, rows: Vec<tokio_postgres::Row>) -> Result<(Pool, i64)> {
        let mut entries: Vec<(i32, Value)> = Vec::new();
        let mut all = Map::new();
        let mut generation = 0;
        for r in &rows {
            let kind: &str = column(r, 0)?;
            if kind == "s" {
                let version: String = column(r, 1)?;
                let v = self.schema_number(&version)?;
                if v > i64::from(SCHEMA_VERSION) {
                    return Err(self.newer_schema(v));
                }
            }
        }
        for r in rows {
            let kind: &str = column(&r, 0)?;
            let name: String = column(&r, 1)?;
            let text: JsonText = column(&r, 2)?;
            let value: Value = match serde_json::from_str(&text.0) {
                Ok(value) => value,
                // PostgreSQL takes values serde_json does not (`1e400`, nesting past 128 levels):
                // one such row edited by hand failed every read, every account of the fleet
                // out of use. An entry is kept as it was stored, and unread.
                Err(e) if kind == "e" => {
                    let why = format!("its row is JSON this build cannot read ({e}): put it back as it was, or remove it");
                    entries.push((name.parse().unwrap_or(i32::MAX), unparsed(text.0, why)));
                    continue;
                }
                Err(e) => {
                    return Err(Error::StoreCorrupt(format!(
                        "the section {name:?} of the store is JSON this build cannot read ({e}); nothing was changed: repair it, or copy a good pool in with `oauth-pool store copy`"
                    )))
                }
            };
            match kind {
                "e" => {
                    let opened = match self.key()?.open_entry(value.clone()) {
                        Ok(opened) => opened,
                        // One row that does not open (edited by hand, a value copied from
                        // another row) is kept unread, as the file store keeps an entry it
                        // cannot read: failing the read put every account of the fleet out of
                        // use, and `remove` with them. The key is right (checked by `ready`).
                        Err(Error::StoreKey(why)) => unopened(value, why),
                        Err(e) => return Err(e),
                    };
                    entries.push((name.parse().unwrap_or(i32::MAX), opened));
                }
                "t" => {
                    let opened = self.key()?.open_section(&name, value)?;
                    all.insert(name, opened);
                }
                "g" => generation = name.parse().unwrap_or(0),
                _ => {}
            }
        }
        entries.sort_by_key(|(p, _)| *p);
        all.insert(
            "anthropic".into(),
            Value::Array(entries.into_iter().map(|(_, e)| e).collect()),
        );
        let mut pool = assemble(all)?;
        for entry in &mut pool.anthropic {
            if let crate::pool::Entry::Invalid { raw, reason } = entry {
                if let Some(why) = raw
                    .get(UNOPENED)
                    .or_else(|| raw.get(UNPARSED))
                    .and_then(|_| raw.get("why"))
                {
                    *reason = why.as_str().unwrap_or_default().to_string();
                }
            }
        }
        Ok((pool, generation))
    }

    /// Locked read-modify-write in one transaction. Nothing is written when the change leaves
    /// the pool as it was.
    pub async fn update<T>(&self, change: impl FnOnce(&mut Pool) -> Result<T>) -> Result<T> {
        self.ready().await?;
        let offset = self.offset().await?;
        let mut guard = self.writer.lock().await;
        let client = match guard.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        // Gone silent: the connection is dropped (the server rolls back what it began).
        let result = tokio::time::timeout(QUERY_TIMEOUT, self.update_on(&client, change, offset))
            .await
            .map_err(|_| self.silent("a write of the pool"))?;
        if (result.is_ok() || rolled_back(&client).await) && !client.is_closed() {
            *guard = Some(client);
        }
        result
    }

    /// `update` in the refresh lock's own transaction, committing it: the new tokens are written
    /// and the lock let go in one commit, with no other connection asked for while it is held.
    /// The lock is let go whatever the outcome; a write that failed is for the caller to try
    /// again on its own (`update`).
    pub async fn update_locked<T>(
        &self,
        held: &PgRefreshLock,
        change: impl FnOnce(&mut Pool) -> Result<T>,
    ) -> Result<T> {
        let client = held.held_client()?;
        let mut unless = UnlessFinished {
            lock: held,
            finished: false,
        };
        let offset = self.offset_on(Some(&client)).await?;
        let begin = format!(
            "SET LOCAL lock_timeout = '60s'; SET LOCAL statement_timeout = '60s'; SELECT pg_advisory_xact_lock({WRITE_LOCK}, 0), {durable};",
            durable = durable_commit!()
        );
        let result = tokio::time::timeout(
            QUERY_TIMEOUT,
            self.update_in(&client, &begin, change, offset),
        )
        .await
        .map_err(|_| self.silent("a write of the pool"))?;
        unless.finished = result.is_ok() || rolled_back(&client).await;
        held.set_held(false);
        result
    }

    /// `offset`: the one difference of clocks both ways (`Clock`), so that what the change
    /// leaves alone is written back exactly as it was read.
    async fn update_on<T>(
        &self,
        client: &Client,
        change: impl FnOnce(&mut Pool) -> Result<T>,
        offset: i64,
    ) -> Result<T> {
        let begin = format!("{WRITE_BEGIN} SELECT pg_advisory_xact_lock({WRITE_LOCK}, 0);");
        self.update_in(client, &begin, change, offset).await
    }

    /// `update_on` in a transaction `begin` opens or goes on with.
    async fn update_in<T>(
        &self,
        client: &Client,
        begin: &str,
        change: impl FnOnce(&mut Pool) -> Result<T>,
        offset: i64,
    ) -> Result<T> {
        client.batch_execute(begin).await.map_err(unavailable)?;
        let rows = client
            .query_typed(POOL_ROWS, &[])
            .await
            .map_err(unavailable)?;
        let (mut pool, _) = self.rows_to_pool(rows)?;
        pool.shift_times(-offset);
        let before = pool.to_bytes();
        let out = change(&mut pool)?;
        if pool.to_bytes() == before {
            client.batch_execute("COMMIT").await.map_err(unavailable)?;
            return Ok(out);
        }
        pool.shift_times(offset);
        self.write_rows(client, &pool).await?;
        client.batch_execute("COMMIT").await.map_err(unavailable)?;
        *lock(&self.generation) = None;
        Ok(out)
    }

    async fn write_rows(&self, client: &Client, pool: &Pool) -> Result<()> {
        let value = pool.to_value();
        client
            .batch_execute("DELETE FROM oauth_pool_entries; DELETE FROM oauth_pool_top;")
            .await
            .map_err(unavailable)?;
        // One statement per table, the rows as arrays: a row per round trip took a pool of a few
        // thousand entries past the write's time limit on a slow link.
        let entries = value
            .get("anthropic")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (mut positions, mut emails, mut sealed) = (Vec::new(), Vec::new(), Vec::new());
        for (i, e) in entries.into_iter().enumerate() {
            positions.push(i as i32);
            emails.push(e.get("email").and_then(Value::as_str).map(str::to_string));
            // A row read unopened goes back as it was read, sealed; one unparsed, as its text.
            sealed.push(
                match (e.get(UNOPENED), e.get(UNPARSED).and_then(Value::as_str)) {
                    (Some(row), _) => RowJson::Value(row.clone()),
                    (None, Some(text)) => RowJson::Text(text.to_string()),
                    (None, None) => RowJson::Value(self.key()?.seal_entry(e)?),
                },
            );
        }
        client
            .execute_typed(
                "INSERT INTO oauth_pool_entries (position, email, entry)
                 SELECT * FROM UNNEST($1::int4[], $2::text[], $3::jsonb[])",
                &[
                    (&positions, Type::INT4_ARRAY),
                    (&emails, Type::TEXT_ARRAY),
                    (&sealed, Type::JSONB_ARRAY),
                ],
            )
            .await
            .map_err(unavailable)?;
        let (mut names, mut sections) = (Vec::new(), Vec::new());
        for (name, v) in value.as_object().into_iter().flatten() {
            if name == "anthropic" {
                continue;
            }
            sections.push(self.key()?.seal_section(name, v)?);
            names.push(name.clone());
        }
        client
            .execute_typed(
                "INSERT INTO oauth_pool_top (name, value) SELECT * FROM UNNEST($1::text[], $2::jsonb[])",
                &[(&names, Type::TEXT_ARRAY), (&sections, Type::JSONB_ARRAY)],
            )
            .await
            .map_err(unavailable)?;
        client
            // Written even when the row went missing: other hosts see a change by it.
            .batch_execute(
                "INSERT INTO oauth_pool_meta (name, value) VALUES ('generation', '1')
                 ON CONFLICT (name) DO UPDATE SET value = CASE
                   WHEN oauth_pool_meta.value ~ '^[0-9]{1,18}$' THEN ((oauth_pool_meta.value::bigint) + 1)::text
                   ELSE '1' END",
            )
            .await
            .map_err(unavailable)
    }

    /// Replaces the whole pool (`savePool`, `store copy`).
    /// Replaces the whole pool, keeping tokens newer than those given and what else a stale copy missed
    /// (`Pool::keep_newer_state`).
    pub async fn save(&self, mut pool: Pool, read: ReadCopy) -> Result<()> {
        self.update(move |stored| {
            for email in pool.keep_newer_state(stored, &read.spent) {
                tracing::info!(account = %email, "kept the stored tokens: newer than those saved");
            }
            read.reconcile(&mut pool, stored);
            *stored = pool;
            Ok(())
        })
        .await
    }

    /// Takes an account's refresh lock: `pg_try_advisory_xact_lock` in a transaction left open on
    /// a connection of its own, tried again until `timeout` while another host holds it. Not
    /// waited for in the database: behind a pooler in transaction mode a waiting transaction keeps
    /// one of its few server connections, and a few waiters left the holder none to re-read and
    /// write with (every refresh stalled until the waiters' time ran out).
    ///
    /// Asked not to wait (the access token still serves: the refresh can come later), not tried
    /// while the store is in its backoff (`STAMP_BACKOFF`), and given `STAMP_TIMEOUT` to connect:
    /// every request of an account in its refresh margin waited 3 s for the generation and 10 s
    /// more to connect here while the database did not answer. A refresh that is needed (a 401,
    /// an expired token) tries: the store may be back, with another host's tokens to adopt.
    pub async fn refresh_lock(&self, email: &str, timeout: Duration) -> Result<PgRefreshLock> {
        if timeout.is_zero() && self.muted() {
            return Err(Error::StoreUnavailable(
                "it did not answer a moment ago; asked again in a few seconds".into(),
            ));
        }
        let reach = async {
            self.ready().await?;
            match self.connect().await {
                // At the role's or the server's connection limit, which this process's own idle
                // reader and writer may be filling (a role with `CONNECTION LIMIT 2` never
                // refreshed while the process ran): they go, and the lock asks once more.
                Err(e) if self.crowded.load(std::sync::atomic::Ordering::Relaxed) => {
                    if self.let_idle_connections_go().await {
                        tokio::time::sleep(CROWDED_PAUSE).await;
                        self.connect().await
                    } else {
                        Err(e)
                    }
                }
                reached => reached,
            }
        };
        let client = if timeout.is_zero() {
            match tokio::time::timeout(STAMP_TIMEOUT, reach).await {
                Ok(reached) => reached?,
                Err(_) => {
                    *lock(&self.mute_until) = Some(Instant::now() + STAMP_BACKOFF);
                    return Err(Error::StoreUnavailable(format!(
                        "{} did not take a connection for a refresh lock within {} s",
                        self.shown,
                        STAMP_TIMEOUT.as_secs()
                    )));
                }
            }
        } else {
            reach.await?
        };
        let client = Arc::new(client);
        let id = account_lock(email);
        self.take_refresh_lock(&client, id, timeout).await?;
        Ok(PgRefreshLock {
            client: Mutex::new(Some(client)),
            id,
            held: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The store's key: the one given (`with_key`), else `OAUTH_POOL_STORE_KEY` or the key file,
    /// read when first needed.
    fn key(&self) -> Result<&SealKey> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = SealKey::from_config()?;
        Ok(self.key.get_or_init(|| key))
    }

    /// Drops this process's idle reader and writer (one in use is left alone); whether any went.
    async fn let_idle_connections_go(&self) -> bool {
        let reader = self.reader.lock().await.take().is_some();
        let writer = self
            .writer
            .try_lock()
            .is_ok_and(|mut slot| slot.take().is_some());
        reader || writer
    }

    /// Takes the lock again on its own connection, after the claim ended its transaction: the
    /// token is out under this process's claim from then on, and the lock, held again to the
    /// write, keeps a host that froze with it out from being taken for one gone.
    pub async fn retake_refresh_lock(&self, held: &PgRefreshLock, timeout: Duration) -> Result<()> {
        let client = held.client()?;
        let mut unless = UnlessFinished {
            lock: held,
            finished: false,
        };
        let taken = self.take_refresh_lock(&client, held.id, timeout).await;
        unless.finished = true;
        match taken {
            Ok(()) => {
                held.set_held(true);
                Ok(())
            }
            Err(e) => {
                held.give_up();
                Err(e)
            }
        }
    }

    /// `pg_try_advisory_xact_lock` of `id` in a transaction begun on `client` and left open,
    /// tried again while another host holds it.
    async fn take_refresh_lock(&self, client: &Client, id: i32, timeout: Duration) -> Result<()> {
        // The lock's transaction sits idle while the token endpoint answers: a DBA's
        // `idle_in_transaction_session_timeout` (or PostgreSQL 17's `transaction_timeout`, set
        // only on a server that has it) ended the session and the lock with it, and the next
        // host presented the token already out. Whether the database takes writes is asked
        // in the same round trip: a refresh token is not spent when its successor cannot be saved.
        // Read committed, as a write's (`WRITE_BEGIN`), whatever the database's default: the
        // re-read and the write on this connection see what others committed meanwhile.
        let sql = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL idle_in_transaction_session_timeout = 0;
             SELECT pg_try_advisory_xact_lock({REFRESH_LOCK}, {id}), current_setting('transaction_read_only'),
               (SELECT value FROM oauth_pool_meta WHERE name = 'schema'),
               (SELECT string_agg(t || ' (' || ps || ')', ', ' ORDER BY o) FROM
                  (SELECT t, o, string_agg(p, ', ' ORDER BY po) AS ps
                     FROM unnest(ARRAY['oauth_pool_entries', 'oauth_pool_top', 'oauth_pool_meta']) WITH ORDINALITY AS tables(t, o),
                          unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY AS privileges(p, po)
                     WHERE to_regclass(t) IS NOT NULL AND NOT has_table_privilege(to_regclass(t), p)
                     GROUP BY t, o) AS lacking),
               CASE WHEN current_setting('server_version_num')::int >= 170000
                 THEN set_config('transaction_timeout', '0', true) END, {keepalive}, {sync};",
            keepalive = keepalive!(),
            sync = durable_commit!()
        );
        let deadline = Instant::now() + timeout;
        let mut pause = LOCK_RETRY_FIRST;
        loop {
            let answer = self
                .bounded("a refresh lock", async {
                    client.simple_query(&sql).await.map_err(unavailable)
                })
                .await?;
            let row = answer.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((r.get(0) == Some("t"), r.get(1) == Some("on"))),
                _ => None,
            });
            // Nor is one spent when a newer version's schema would refuse its successor.
            let schema = answer.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(2).map(|v| self.schema_number(v)),
                _ => None,
            });
            if let Some(v) = schema
                .transpose()?
                .filter(|v| *v > i64::from(SCHEMA_VERSION))
            {
                return Err(self.newer_schema(v));
            }
            if row.is_some_and(|(_, read_only)| read_only) {
                return Err(Error::StoreUnavailable(format!(
                    "{} is read-only (default_transaction_read_only, or a standby): no token is refreshed while the new one could not be saved",
                    self.shown
                )));
            }
            // Nor by a role that may take the lock but not write the rows (a grant left out): its
            // successor was never saved, and the next host presented the spent token, which
            // revoked the login for every host.
            let missing = answer.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(3).map(str::to_string),
                _ => None,
            });
            if let Some(missing) = missing.filter(|m| !m.is_empty()) {
                return Err(Error::StoreUnavailable(format!(
                    "{}: the role may not write the pool's rows, it lacks {missing}: no token is refreshed while the new one could not be saved (grant SELECT, INSERT, UPDATE and DELETE on the three tables; README, The fleet store, Grants)",
                    self.shown
                )));
            }
            if row.is_some_and(|(granted, _)| granted) {
                return Ok(());
            }
            self.bounded("a refresh lock", async {
                client.batch_execute("ROLLBACK").await.map_err(unavailable)
            })
            .await?;
            if Instant::now() + pause > deadline {
                return Err(Error::PoolBusy {
                    path: std::path::PathBuf::from(self.shown.clone()),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = next_pause(pause);
        }
    }

    /// Claims the refresh token tagged `tag` (`journal::tag`) for this process, in a
    /// row of its own committed before the token is presented; false when another process
    /// claimed the same token and beat less than `CLAIM_MS` ago by the database's clock, and has
    /// not let it go. The refresh lock alone did not keep a token from being presented twice: a lock
    /// whose session ends while the token is out (a restart, a DBA's terminate, a pooler
    /// dropping its server connection) let the next host in, which found the token still stored
    /// and presented it too; the rotation the first then got spent the login.
    ///
    /// Made in the refresh lock's transaction when it is held (`held`), which ends with it: a
    /// claim granted is committed, and the lock let go until `retake_refresh_lock`; one refused
    /// leaves it let go while this process waits for the holder's tokens. No other connection is
    /// asked for while the lock is held (see `PgRefreshLock`).
    pub async fn claim_refresh(&self, tag: &str, held: Option<&PgRefreshLock>) -> Result<bool> {
        let held = held.filter(|l| l.is_held());
        let c = match held {
            Some(l) => l.held_client()?,
            None => self.reader().await?,
        };
        let mut unless = held.map(|lock| UnlessFinished {
            lock,
            finished: false,
        });
        let name = claim_name(tag);
        let value = format!("{tag} {}", claimant());
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
            (&name, Type::TEXT),
            (&value, Type::TEXT),
            (&CLAIM_MS, Type::INT8),
        ];
        // Taken over when it is another token's, this process's own, unreadable, or older
        // (or, a clock stepped back, newer) than the claim time. A beat is counted from the
        // server's start at the earliest: while it was down (a restart) no holder could beat,
        // and a claim the holder renews as soon as it is back was taken over by the first host
        // to reach the server, which presented the token that was out.
        let rows = self
            .bounded("a refresh claim", async {
                // Nor while another live claim holds the same token under another name: the
                // row an earlier version names by the account, whose hosts may share the store
                // with this one's during an upgrade.
                c.query_typed(
                    "INSERT INTO oauth_pool_meta AS m (name, value)
                     SELECT $1, $2 || ' ' || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint::text
                     WHERE NOT EXISTS (
                       SELECT 1 FROM oauth_pool_meta o
                       WHERE o.name LIKE 'refresh-claim:%' AND o.name <> $1
                         AND split_part(o.value, ' ', 1) = split_part($2, ' ', 1)
                         AND split_part(o.value, ' ', 2) <> split_part($2, ' ', 2)
                         AND split_part(o.value, ' ', 3) ~ '^[0-9]{1,18}$'
                         AND abs(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - greatest(split_part(o.value, ' ', 3)::bigint,
                              floor(extract(epoch FROM pg_postmaster_start_time()) * 1000)::bigint)) < $3)
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
                     WHERE split_part(m.value, ' ', 1) <> split_part(EXCLUDED.value, ' ', 1)
                        OR split_part(m.value, ' ', 2) = split_part(EXCLUDED.value, ' ', 2)
                        OR CASE WHEN split_part(m.value, ' ', 3) ~ '^[0-9]{1,18}$'
                           THEN abs(split_part(EXCLUDED.value, ' ', 3)::bigint - greatest(split_part(m.value, ' ', 3)::bigint,
                                floor(extract(epoch FROM pg_postmaster_start_time()) * 1000)::bigint)) >= $3
                           ELSE true END
                     RETURNING 1",
                    &params,
                )
                .await
                .map_err(|e| match held {
                    Some(l) => l.failed(e),
                    None => unavailable(e),
                })
            })
            .await;
        let Some(l) = held else {
            let granted = !rows?.is_empty();
            if granted {
                sweep_claims(&c, &name).await;
            }
            return Ok(granted);
        };
        // A claim that failed leaves the lock to nobody: the refresh ends, and the connection,
        // perhaps still busy with it, is closed rather than waited for.
        let granted = !rows?.is_empty();
        let end = if granted { "COMMIT" } else { "ROLLBACK" };
        let ended = self
            .bounded("a refresh claim", async {
                c.batch_execute(end).await.map_err(|e| l.failed(e))
            })
            .await;
        l.set_held(false);
        if let Some(u) = unless.as_mut() {
            u.finished = ended.is_ok();
        }
        ended?;
        if granted {
            sweep_claims(&c, &name).await;
        }
        Ok(granted)
    }

    /// Renews this process's claim on the token tagged `tag` every `CLAIM_BEAT` until the
    /// guard is dropped: other hosts wait while this one lives, though its refresh lock is gone.
    /// The beats go on a connection of their own, made here and closed with the guard: on the
    /// shared reader they queued behind whatever else it carried (a large pool's load, a query
    /// waiting on a lock, a reconnection, a pooler's queue), the claim aged past `CLAIM_MS`, and
    /// another host presented the token still out, revoking the login's family. The first beat
    /// is made here and its row count read: `None` when the claim is no longer this process's
    /// (another host took it over), and the token must not be presented.
    ///
    /// While the refresh lock is held (`locked`), the claim is only read, on the lock's own
    /// connection, and the beats' connection made by the first beat: no other connection is
    /// waited for while the lock is held (see `PgRefreshLock`), and a claim row updated in the
    /// lock's transaction would stay locked to it, holding up the beats and other hosts' claims.
    pub async fn keep_claim(
        self: &Arc<Self>,
        email: &str,
        tag: &str,
        locked: Option<&PgRefreshLock>,
    ) -> Result<Option<ClaimBeat>> {
        let (name, value) = (claim_name(tag), format!("{tag} {}", claimant()));
        let (client, stands) = match locked.filter(|l| l.is_held()) {
            Some(l) => {
                let c = l.held_client()?;
                let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
                    [(&name, Type::TEXT), (&value, Type::TEXT)];
                let rows = self
                    .bounded("a refresh claim", async {
                        c.query_typed(
                            "SELECT 1 FROM oauth_pool_meta WHERE name = $1
                             AND split_part(value, ' ', 1) || ' ' || split_part(value, ' ', 2) = $2",
                            &params,
                        )
                        .await
                        .map_err(|e| l.failed(e))
                    })
                    .await?;
                (None, !rows.is_empty())
            }
            None => {
                let client = self.connect().await?;
                let stands = self
                    .bounded("a refresh claim", renew_claim(&client, &name, &value))
                    .await?;
                (Some(client), stands)
            }
        };
        if !stands {
            return Ok(None);
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let client = Arc::new(tokio::sync::Mutex::new(client));
        let beat = ClaimBeat {
            stop: stop.clone(),
            client: client.clone(),
            store: self.clone(),
            name: name.clone(),
            value: value.clone(),
        };
        let (me, who, until) = (self.clone(), email.to_string(), stop);
        let beating = async move {
            loop {
                tokio::select! {
                    () = until.cancelled() => return,
                    () = tokio::time::sleep(CLAIM_BEAT) => {}
                }
                let mut slot = tokio::select! {
                    () = until.cancelled() => return,
                    slot = client.lock() => slot,
                };
                // A connection ended (a restart, a DBA) is made again: the claim is renewed as
                // soon as the server is back.
                if slot.as_ref().is_none_or(Client::is_closed) {
                    tokio::select! {
                        () = until.cancelled() => return,
                        made = me.connect() => *slot = made.ok(),
                    }
                }
                let Some(c) = slot.as_ref() else {
                    continue;
                };
                tokio::select! {
                    () = until.cancelled() => return,
                    renewed = tokio::time::timeout(QUERY_TIMEOUT, renew_claim(c, &name, &value)) => {
                        if matches!(renewed, Ok(Ok(false))) {
                            tracing::warn!(account = %who, "another host took over this process's refresh claim while its token was out (its beats were late); the login may need a new one if both presented it");
                            return;
                        }
                    }
                }
            }
        };
        let _ = crate::runtime::spawn(beating);
        Ok(Some(beat))
    }

    /// Lets go of this process's claim on the token tagged `tag`: the token endpoint answered
    /// that it is not spent (it refused it, failed, or handed it back), and another host may
    /// present it at once. Best effort: a claim no longer beating stands `CLAIM_MS` at most.
    pub async fn release_refresh(&self, tag: &str) {
        let Ok(c) = self.reader().await else {
            return;
        };
        let name = claim_name(tag);
        let value = format!("{tag} {}", claimant());
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
            [(&name, Type::TEXT), (&value, Type::TEXT)];
        let deleting = c.execute_typed(
            "DELETE FROM oauth_pool_meta WHERE name = $1
             AND split_part(value, ' ', 1) || ' ' || split_part(value, ' ', 2) = $2",
            &params,
        );
        let _ = tokio::time::timeout(QUERY_TIMEOUT, deleting).await;
    }

    pub async fn refresh_lock_held(&self, email: &str) -> bool {
        let Ok(c) = self.reader().await else {
            return false;
        };
        let id = account_lock(email);
        let (class, object) = (i64::from(REFRESH_LOCK), i64::from(id));
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
            [(&class, Type::INT8), (&object, Type::INT8)];
        let asking = c.query_typed_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2",
            &params,
        );
        matches!(
            tokio::time::timeout(QUERY_TIMEOUT, asking).await,
            Ok(Ok(r)) if r.try_get::<_, i64>(0).is_ok_and(|n| n > 0)
        )
    }
}

/// How long another process's claim on a refresh token stands past its last beat
/// (`PgStore::claim_refresh`): its holder beats every `CLAIM_BEAT` while the token is out and
/// while its successor waits to be written, so a claim this old is a holder gone (SIGKILL, a
/// crash, a host cut off), whose token the next host may present at once.
const CLAIM_MS: i64 = 2_500;
/// How long the sweep of old claims is waited for, between a claim and its token call.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after its last beat a claim row is deleted (`sweep_claims`).
const CLAIM_SWEEP_MS: i64 = 60_000;
/// How often a holder renews its claim (`PgStore::keep_claim`).
const CLAIM_BEAT: Duration = Duration::from_millis(500);

/// Deletes the refresh claims (other than `mine`) not renewed for `CLAIM_SWEEP_MS`, and any
/// that cannot be read: a claim row is one token's, and nothing else deletes one whose
/// refresh ended, so the meta table kept a row for every token the fleet ever refreshed. Such a
/// claim counts for nothing (`claim_refresh` takes one over past `CLAIM_MS`), unless the server
/// started less than `CLAIM_MS` ago (its holder may not have beaten since): none is deleted
/// then. Best effort, after the claim's commit: a role granted no DELETE on `oauth_pool_meta`
/// still refreshes.
async fn sweep_claims(client: &Client, mine: &str) {
    let mine = mine.to_string();
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
        (&mine, Type::TEXT),
        (&CLAIM_SWEEP_MS, Type::INT8),
        (&CLAIM_MS, Type::INT8),
    ];
    let sweeping = client.execute_typed(
        // Rows another transaction holds are left for a later sweep, not waited for: this runs
        // between a refresh's claim and its token call.
        "DELETE FROM oauth_pool_meta WHERE name IN (
           SELECT name FROM oauth_pool_meta WHERE name LIKE 'refresh-claim:%' AND name <> $1
           AND NOT (split_part(value, ' ', 3) ~ '^[0-9]{1,18}$'
                    AND (abs(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
                             - split_part(value, ' ', 3)::bigint) < $2
                         OR extract(epoch FROM clock_timestamp() - pg_postmaster_start_time()) * 1000 < $3))
           FOR UPDATE SKIP LOCKED)",
        &params,
    );
    let left = match tokio::time::timeout(SWEEP_TIMEOUT, sweeping).await {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => scrub_tokens(&describe(&e)),
        Err(_) => "no answer".to_string(),
    };
    tracing::debug!(error = %left, "old refresh claims were left");
}

/// Renews the claim named `name` if it is still `value`'s (this process's, on this token):
/// whether it was.
async fn renew_claim(client: &Client, name: &str, value: &str) -> Result<bool> {
    let (name, value) = (name.to_string(), value.to_string());
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&name, Type::TEXT), (&value, Type::TEXT)];
    let renewed = client
        .execute_typed(
            "UPDATE oauth_pool_meta
             SET value = $2 || ' ' || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint::text
             WHERE name = $1 AND split_part(value, ' ', 1) || ' ' || split_part(value, ' ', 2) = $2",
            &params,
        )
        .await
        .map_err(unavailable)?;
    Ok(renewed > 0)
}

/// Keeps a refresh claim alive (`PgStore::keep_claim`) until dropped.
pub struct ClaimBeat {
    stop: tokio_util::sync::CancellationToken,
    /// The beats' own connection, shared with `renew_now`.
    client: Arc<tokio::sync::Mutex<Option<Client>>>,
    store: Arc<PgStore>,
    name: String,
    value: String,
}

impl ClaimBeat {
    /// Renews the claim now, on the beats' own connection: whether it still stands. Asked again
    /// before the token goes out a second time (its first answer lost): the first presentation
    /// was checked, and a claim taken over while that answer was out (this host's beats late)
    /// is another host's token out, which this one then presented too.
    pub async fn renew_now(&self) -> Result<bool> {
        let store = &self.store;
        store
            .bounded("a refresh claim", async {
                let mut slot = self.client.lock().await;
                if slot.as_ref().is_none_or(Client::is_closed) {
                    *slot = Some(store.connect().await?);
                }
                match slot.as_ref() {
                    Some(c) => renew_claim(c, &self.name, &self.value).await,
                    None => Ok(false),
                }
            })
            .await
    }
}

impl std::fmt::Debug for ClaimBeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimBeat")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for ClaimBeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The `oauth_pool_meta` row of the claim on the refresh token tagged `tag`: named by the token,
/// not its account, so that two hosts that read it under two names (the account renamed
/// meanwhile) claim the one row, and one of them is refused.
fn claim_name(tag: &str) -> String {
    format!("refresh-claim:{tag}")
}

/// This process in refresh claims: random, made once.
fn claimant() -> &'static str {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        let random: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{random}", std::process::id())
    })
}

fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(LOCK_RETRY_MAX)
}

/// The pool the rows hold. Rows that do not form one (a later format written by a newer build)
/// are refused as a corrupt store, as a pool file would be: the store answers, so waiting for it
/// to come back (`STORE_UNAVAILABLE`) would never end.
fn assemble(all: Map<String, Value>) -> Result<Pool> {
    Pool::from_value(Value::Object(all)).map_err(|why| {
        let todo = if why.contains(crate::pool::NEWER_FORMAT) {
            "upgrade opencode-oauth-pool on every host that uses this store (OpenCode sessions \
             started before the upgrade too); nothing was changed"
        } else {
            "nothing was changed: repair it, or copy a good pool in with `oauth-pool store copy`"
        };
        Error::StoreCorrupt(format!(
            "the store's rows do not form a pool: {why}; {todo}"
        ))
    })
}

/// A column of a row as the schema has it. A NULL or another type there (a row edited by hand,
/// a column altered) is refused as a corrupt store, never a panic in the addon.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T> {
    row.try_get(i).map_err(|e| {
        Error::StoreCorrupt(format!(
            "a row of the store is not as its schema says ({}); nothing was changed: repair it, or copy a good pool in with `oauth-pool store copy`",
            describe(&e)
        ))
    })
}

/// The field of an entry read unopened that holds its row as stored (`unopened`).
const UNOPENED: &str = "sealedUnopened";

/// The field of an entry read unparsed that holds its row's text as stored (`unparsed`).
const UNPARSED: &str = "storedUnparsed";

/// An entry whose row is JSON serde_json does not read, kept as its text.
fn unparsed(text: String, why: String) -> Value {
    let mut entry = Map::new();
    entry.insert("type".into(), Value::String("sealed".into()));
    entry.insert("why".into(), Value::String(why));
    entry.insert(UNPARSED.into(), Value::String(text));
    Value::Object(entry)
}

/// A `json` or `jsonb` column as its text, parsed by the caller (`rows_to_pool`).
struct JsonText(String);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary form is a version byte, 1, then the text.
        let text = match (*ty == Type::JSONB, raw.split_first()) {
            (false, _) => raw,
            (true, Some((1, rest))) => rest,
            (true, _) => return Err("a jsonb value of an unknown version".into()),
        };
        Ok(JsonText(std::str::from_utf8(text)?.to_string()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }
}

/// An entry's row as written: a value, or the text of one read unparsed, as it was.
enum RowJson {
    Value(Value),
    Text(String),
}

/// Neither is shown: a row edited by hand may hold anything.
impl std::fmt::Debug for RowJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RowJson::Value(_) => "RowJson::Value(..)",
            RowJson::Text(_) => "RowJson::Text(..)",
        })
    }
}

impl tokio_postgres::types::ToSql for RowJson {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use bytes::BufMut;
        match self {
            RowJson::Value(v) => v.to_sql(ty, out),
            RowJson::Text(text) => {
                if *ty == Type::JSONB {
                    out.put_u8(1);
                }
                out.put_slice(text.as_bytes());
                Ok(tokio_postgres::types::IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

/// An entry whose row does not open with the store's key: listed as unreadable (its email and
/// why), never served (`type` is none the pool knows), removable, and written back as it was.
fn unopened(row: Value, why: String) -> Value {
    let mut entry = Map::new();
    if let Some(email) = row.get("email").filter(|e| e.is_string()) {
        entry.insert("email".into(), email.clone());
    }
    entry.insert("type".into(), Value::String("sealed".into()));
    entry.insert("why".into(), Value::String(why));
    entry.insert(UNOPENED.into(), row);
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_later_format_are_a_corrupt_store_to_upgrade_for_not_an_outage() {
        let mut all = Map::new();
        all.insert("version".into(), serde_json::json!(2));
        all.insert("anthropic".into(), serde_json::json!([]));
        let e = assemble(all).unwrap_err();
        assert_eq!(e.code(), "POOL_CORRUPT");
        let text = e.to_string();
        assert!(text.contains("upgrade opencode-oauth-pool"), "{text}");
        assert!(!text.contains("cannot be reached"), "{text}");
        let mut fine = Map::new();
        fine.insert(
            "anthropic".into(),
            serde_json::json!([{"email": "a@x.test"}]),
        );
        assert_eq!(assemble(fine).unwrap().anthropic.len(), 1);
    }

    #[test]
    fn the_init_a_message_suggests_names_the_store_without_its_password() {
        let plain = PgStore::open_without_key("postgres://u@127.0.0.1:5432/pool").unwrap();
        assert_eq!(
            plain.init_command(),
            "`oauth-pool store init postgres://u@127.0.0.1:5432/pool`"
        );
        let secret = PgStore::open_without_key("postgres://u:hunter2@db/pool?sslmode=require")
            .unwrap()
            .init_command();
        assert!(!secret.contains("hunter2"), "{secret}");
        assert_eq!(
            secret,
            "`oauth-pool store init 'postgres://u:***@db/pool?sslmode=require'` (the password where `***` stands)"
        );
    }

    #[test]
    fn stores_that_read_alike_are_told_apart() {
        let a = PgStore::open_without_key("postgres://u:pw@db1.example/a?host=/sock").unwrap();
        let b = PgStore::open_without_key("postgres://u:pw@db1.example/b?host=/sock").unwrap();
        let a2 = PgStore::open_without_key("postgres://u:pw@db1.example/a?host=/sock").unwrap();
        assert_ne!(a.identity(), b.identity());
        assert_eq!(a.identity(), a2.identity());
        assert!(!a.identity().contains("pw"));
    }

    #[test]
    fn a_busy_refresh_lock_is_tried_again_sooner_than_a_refresh_takes() {
        let mut pause = LOCK_RETRY_FIRST;
        let mut waited = Duration::ZERO;
        for _ in 0..6 {
            waited += pause;
            pause = next_pause(pause);
        }
        assert_eq!(pause, LOCK_RETRY_MAX);
        assert_eq!(
            waited,
            Duration::from_millis(50 + 100 + 200 + 250 + 250 + 250)
        );
    }

    #[test]
    fn the_clock_difference_in_use_moves_only_past_the_tolerance() {
        // Clocks that agree (NTP): nothing is moved, whatever the few ms measured.
        assert_eq!(next_offset(0, 40, 2), 0);
        assert_eq!(next_offset(0, -900, 2), 0);
        // Ten minutes off: the measurement, then kept while later ones wobble around it.
        let ahead = -600_000;
        assert_eq!(next_offset(0, ahead + 3, 2), ahead + 3);
        assert_eq!(next_offset(ahead + 3, ahead - 5, 4), ahead + 3);
        // A step of the clock since: the new difference.
        assert_eq!(next_offset(ahead + 3, 7_200_000, 4), 7_200_000);
        // A slow link widens the tolerance by half its round trip.
        assert_eq!(next_offset(0, 1_400, 1_000), 0);
        assert_eq!(next_offset(0, 1_600, 1_000), 1_600);
        // Years off: not a clock to trust at all.
        assert_eq!(next_offset(0, 2 * CLOCK_MAX_OFFSET_MS, 0), 0);
    }

    #[test]
    fn a_clock_measured_a_moment_ago_is_current_until_it_jumps() {
        let now = crate::account::now_ms();
        let c = Clock {
            offset: 5,
            wall: now,
            at: Instant::now(),
        };
        assert!(c.current());
        // This host's clock was set back two minutes since (or read two minutes ahead then).
        let stepped = Clock {
            wall: now + 120_000,
            ..c
        };
        assert!(!stepped.current());
    }

    #[test]
    fn refresh_locks_ignore_case() {
        assert_eq!(account_lock("A@x"), account_lock("a@x"));
        assert!(account_lock("a@x") >= 0);
    }

    #[test]
    fn errors_keep_their_causes() {
        let e = "postgres://h/d?bogus=1".parse::<Config>().unwrap_err();
        assert_eq!(e.to_string(), "invalid connection string");
        assert_eq!(
            describe(&e),
            "invalid connection string: unknown option `bogus`"
        );
    }
}
