//! What goes upstream with a request: the caller's headers without those the pool owns
//! (credentials, hop-by-hop, session headers), the account's credential added, and what the
//! engine reads from a request (session, parent session, model) to place it.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::credentials::Credential;
use crate::error::{Error, Result};
use crate::oauth::OAUTH_BETA;

/// The longest model name taken (Anthropic's are under 40 characters).
pub const MAX_MODEL_LEN: usize = 128;
/// A session id longer than this pins nothing: the process keeps every live pin in memory, and
/// OpenCode's ids are about 30 characters.
pub const MAX_SESSION_ID_LEN: usize = 256;

/// A year in seconds: a longer client timeout is taken as a year.
const YEAR_S: f64 = 365.0 * 86_400.0;

/// What the engine reads from a request to place it.
#[derive(Debug, Default, Clone)]
pub struct RequestMeta {
    /// OpenCode's `x-session-affinity` / `X-Session-Id`.
    pub session: Option<String>,
    /// `x-parent-session-id`: a subagent inherits its parent's account.
    pub parent: Option<String>,
    /// The request body's `model`: scoped windows, model cooldowns and usage are per model.
    pub model: Option<String>,
    /// The id of an account's own resource the request's path names (`file_...`,
    /// `msgbatch_...`): only the account that made it holds it.
    pub resource: Option<String>,
    /// A file a Messages request refers to in its body (`files::referred`), once the body was
    /// read for it (`Exchange::read_body`): the request goes where that file lives.
    pub file: Option<String>,
    /// The request's path is one whose body may refer to files (`files::may_refer`).
    pub may_refer: bool,
    /// The API's limits of its own the path falls under, when they are not the messages'
    /// (`limits::endpoint_limits`): a throttle there rests only that on the account.
    pub endpoint: Option<&'static str>,
    /// How long the client waits for an answer before it gives up and sends the request again,
    /// as the Anthropic SDKs say it (`x-stainless-timeout`, seconds): a hold past it is cut.
    pub client_timeout: Option<std::time::Duration>,
}

/// Request headers the client settles on any request, never the caller's to send: hop-by-hop
/// and length headers (the client sets them) and encoding (the client negotiates and decodes).
const CLIENT_OWNED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "accept-encoding",
    "upgrade",
    "te",
    "trailer",
    // The hop's to settle: the pool holds the whole body before sending it (a retry sends it
    // again), and Node's fetch refuses the header outright.
    "expect",
    "proxy-authorization",
    "proxy-connection",
];

/// Request headers, besides `CLIENT_OWNED`, never forwarded upstream to the API: credentials
/// (the pool sets its own) and OpenCode's session headers (the pool's to read, nobody else's
/// business), under their 1.x names and the ones OpenCode 2 adds (`session/model-request.ts`): a
/// session's or a project's id sent with every account the pool uses would tie those accounts
/// together upstream. So are the client's address and a proxy's account of the hop (a reverse
/// proxy in front of the gateway adds them) and cookies: the same address sent with every
/// account ties them together just as well, and names the person. OpenCode's client name and
/// user-agent go on: they name the program, not the person. A request to another origin is the
/// caller's, and keeps them.
const API_ONLY: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-session-affinity",
    "x-session-id",
    "x-parent-session-id",
    "x-opencode-session-id",
    "x-opencode-parent-session-id",
    "x-opencode-session",
    "x-opencode-project",
    "forwarded",
    "via",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "cookie",
];

/// Prefixes of request headers `API_ONLY` leaves out as well: `x-forwarded-for`, `-host`,
/// `-proto`, `-port`, `-server`, `-prefix`, whatever a proxy adds under that family.
const API_ONLY_PREFIXES: &[&str] = &["x-forwarded-"];

impl RequestMeta {
    pub fn from_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        let find = |name: &str| {
            headers
                .clone()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty() && v.len() <= MAX_SESSION_ID_LEN)
                .map(str::to_string)
        };
        RequestMeta {
            // Claude Code's own session header (through the gateway) pins too; unlike OpenCode's,
            // it goes upstream as Claude Code would send it.
            session: find("x-session-affinity")
                .or_else(|| find("x-session-id"))
                .or_else(|| find("x-claude-code-session-id")),
            parent: find("x-parent-session-id"),
            model: None,
            resource: None,
            file: None,
            may_refer: false,
            endpoint: None,
            client_timeout: find("x-stainless-timeout")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                // Past a year it bounds nothing a hold does (holds end within 8 days).
                .and_then(|s| std::time::Duration::try_from_secs_f64(s.min(YEAR_S)).ok()),
        }
    }

    /// What the request's URL (absolute, or its path) names: see `resource_in_path` and
    /// `limits::endpoint_limits`.
    pub fn with_url(mut self, url: &str) -> Self {
        let path = path_of(url);
        self.resource = resource_in_path(path);
        self.may_refer = super::files::may_refer(path);
        self.endpoint = super::limits::endpoint_limits(path);
        self
    }

    /// The id of an account's own resource the request needs: the one its path names, else
    /// the file its body refers to.
    pub fn names(&self) -> Option<&str> {
        self.resource.as_deref().or(self.file.as_deref())
    }

    /// The model a request names, when it can be one: a caller's text becomes a key of the
    /// pool file's usage, so anything over `MAX_MODEL_LEN` or holding a control character is
    /// counted as an unknown model instead (a host's 17 MB model id made the pool unwritable).
    pub fn with_model(mut self, model: Option<String>) -> Self {
        self.model = model.filter(|m| {
            !m.trim().is_empty() && m.len() <= MAX_MODEL_LEN && !m.chars().any(char::is_control)
        });
        self
    }
}

/// The path of an absolute URL (or the path itself), without query or fragment.
fn path_of(url: &str) -> &str {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find('/').map_or("", |j| &after[j..])
        }
        None => url,
    };
    rest.split(['?', '#']).next().unwrap_or("")
}

/// The longest resource id kept (the API's are under 40 characters).
const MAX_RESOURCE_LEN: usize = 128;

/// The id of an account's own resource in an API path: a segment past `/v1/<collection>/` of
/// the API's id shape, a lower-case kind, `_`, and letters and digits with at least one digit
/// (`/v1/files/file_011CNha8iCJcU1wXNR6q4V8w/content`,
/// `/v1/messages/batches/msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d/results`). Not a collection or an
/// action (`count_tokens`), nor a model id (`claude-sonnet-4-5`: models are every account's).
pub fn resource_in_path(path: &str) -> Option<String> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    if segments.next() != Some("v1") {
        return None;
    }
    segments
        .skip(1)
        .find(|s| is_resource_id(s))
        .map(str::to_string)
}

/// An id of the API's shape for an account's own resource (see `resource_in_path`).
pub fn is_resource_id(segment: &str) -> bool {
    let Some((kind, id)) = segment.split_once('_') else {
        return false;
    };
    segment.len() <= MAX_RESOURCE_LEN
        && !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_lowercase())
        && id.len() >= 8
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && id.bytes().any(|b| b.is_ascii_digit())
}

/// The caller's headers as they may go upstream to the API: without `CLIENT_OWNED` and
/// `API_ONLY`, nor any header its `Connection` header names (those are for the hop to us, RFC
/// 9110 7.6.1).
pub fn forwardable<'a>(headers: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> HeaderMap {
    kept(headers, &[CLIENT_OWNED, API_ONLY], API_ONLY_PREFIXES)
}

/// The caller's headers for a request to another origin than the API's (never with a pool
/// credential): all of them but what the client settles itself (`CLIENT_OWNED`); a caller's
/// `authorization` to its own server was dropped.
pub fn passed_through<'a>(headers: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> HeaderMap {
    kept(headers, &[CLIENT_OWNED], &[])
}

fn kept<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    dropped: &[&[&str]],
    dropped_prefixes: &[&str],
) -> HeaderMap {
    let hop_by_hop: Vec<String> = headers
        .clone()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if dropped.iter().any(|list| list.contains(&lower.as_str()))
            || dropped_prefixes.iter().any(|p| lower.starts_with(p))
            || hop_by_hop.contains(&lower)
        {
            continue;
        }
        if let (Ok(name), Some(value)) = (HeaderName::from_bytes(lower.as_bytes()), latin1(v)) {
            map.append(name, value);
        }
    }
    map
}

/// A header value as fetch sends it: one byte a character (a JavaScript `Headers` holds no
/// character above U+00FF), so `é` goes as the byte E9, not as UTF-8. None when it cannot go.
fn latin1(value: &str) -> Option<HeaderValue> {
    if value.is_ascii() {
        return HeaderValue::from_str(value).ok();
    }
    let bytes: Option<Vec<u8>> = value
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect();
    HeaderValue::from_bytes(&bytes?).ok()
}

/// A header value read back as text, one character a byte (the inverse of `latin1`).
pub fn latin1_text(value: &HeaderValue) -> std::borrow::Cow<'_, str> {
    match value.to_str() {
        Ok(text) => text.into(),
        Err(_) => value
            .as_bytes()
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into(),
    }
}

/// The answer headers the engine reads (`Limits::from_headers`, with `date` for the clock skew,
/// and `usage::carried`), and the prefixes of those it reads by family. A driver that hands an
/// answer's headers to `judge` may leave out every other one (an API answer carries twenty-odd).
pub const ANSWER_HEADERS: &[&str] = &["content-type", "date", "retry-after", "retry-after-ms"];
pub const ANSWER_HEADER_PREFIXES: &[&str] = &[super::limits::UNIFIED_PREFIX];

/// Whether the engine reads the answer header `name` (any case).
pub fn read_from_answer(name: &str) -> bool {
    let starts = |p: &str| {
        name.get(..p.len())
            .is_some_and(|n| n.eq_ignore_ascii_case(p))
    };
    ANSWER_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
        || ANSWER_HEADER_PREFIXES.iter().any(|p| starts(p))
}

/// An answer's headers as a map for `judge`: those the engine reads, the rest left out.
pub fn answer_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers.filter(|(k, _)| read_from_answer(k)) {
        // `from_bytes` lowercases the name itself.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The account's credential on a copy of the caller's headers. OAuth: bearer (marked
/// sensitive), and `oauth-2025-04-20` merged into the caller's betas. API key: `x-api-key`.
pub fn with_credential(base: &HeaderMap, credential: &Credential) -> Result<HeaderMap> {
    let mut headers = base.clone();
    let bad =
        |_| Error::InvalidArgument("the stored credential is not a valid header value".into());
    match credential {
        Credential::Bearer(token) => {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(bad)?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            // The caller's betas once each, where they stand; the OAuth beta, in whatever case
            // the caller wrote it, is sent once as the API spells it (a caller's
            // `OAuth-2025-04-20` went beside a second copy, and a repeat not next to its twin
            // went twice).
            let mut betas: Vec<String> = Vec::new();
            // A set, so that a header of many thousands of pieces costs linear time.
            let mut seen = std::collections::HashSet::new();
            for beta in headers
                .get_all("anthropic-beta")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let beta = if beta.eq_ignore_ascii_case(OAUTH_BETA) {
                    OAUTH_BETA
                } else {
                    beta
                };
                if seen.insert(beta) {
                    betas.push(beta.to_string());
                }
            }
            if !betas.iter().any(|b| b == OAUTH_BETA) {
                betas.insert(0, OAUTH_BETA.to_string());
            }
            headers.remove("anthropic-beta");
            let merged = HeaderValue::from_str(&betas.join(","))
                .map_err(|_| Error::InvalidArgument("bad anthropic-beta header".into()))?;
            headers.insert("anthropic-beta", merged);
        }
        Credential::ApiKey(key) => {
            let mut value = HeaderValue::from_str(key.expose()).map_err(bad)?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_origin_gets_the_callers_own_credential_and_session_but_not_the_hops() {
        let caller = [
            ("Authorization", "Bearer callers-own"),
            ("x-api-key", "callers-key"),
            ("x-session-affinity", "s1"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("accept-encoding", "identity"),
            ("content-length", "9"),
            ("x-a", "1"),
        ];
        let map = passed_through(caller.iter().copied());
        let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["authorization", "x-api-key", "x-session-affinity", "x-a"]
        );
        assert_eq!(map["authorization"], "Bearer callers-own");
        // The API's: none of the caller's credential nor its session goes.
        let api = forwardable(caller.iter().copied());
        let names: Vec<&str> = api.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-a"]);
    }

    #[test]
    fn a_value_goes_one_byte_a_character_as_fetch_sends_it() {
        let map = forwardable([("x-a", "é"), ("x-b", "plain"), ("x-c", "✓")].into_iter());
        assert_eq!(map["x-a"].as_bytes(), &[0xE9]);
        assert_eq!(latin1_text(&map["x-a"]), "é");
        assert_eq!(latin1_text(&map["x-b"]), "plain");
        // Above U+00FF a value has no byte form (a JavaScript `Headers` refuses it).
        assert!(map.get("x-c").is_none());
    }

    #[test]
    fn a_path_names_a_resource_only_by_the_api_id_shape() {
        let named = |url: &str| RequestMeta::default().with_url(url).resource;
        for (url, id) in [
            (
                "/v1/files/file_011CNha8iCJcU1wXNR6q4V8w",
                "file_011CNha8iCJcU1wXNR6q4V8w",
            ),
            (
                "https://api.anthropic.com/v1/files/file_011CNha8iCJcU1wXNR6q4V8w/content?x=1",
                "file_011CNha8iCJcU1wXNR6q4V8w",
            ),
            (
                "http://127.0.0.1:9/v1/messages/batches/msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d/results",
                "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d",
            ),
            (
                "/v1/messages/batches/msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d/cancel#f",
                "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d",
            ),
            ("/v1/skills/skill_01AbCdEfGh", "skill_01AbCdEfGh"),
        ] {
            assert_eq!(named(url).as_deref(), Some(id), "{url}");
        }
        for url in [
            "/v1/messages",
            "https://api.anthropic.com/v1/messages?beta=true",
            "/v1/messages/count_tokens",
            "/v1/messages/batches",
            "/v1/files",
            "/v1/models/claude-sonnet-4-5",
            "/v1/models/claude_3_opus_20240229",
            "/v1/file_011CNha8iCJcU1wXNR6q4V8w",
            "/v2/files/file_011CNha8iCJcU1wXNR6q4V8w",
            "/v1/files/File_011CNha8iCJcU1wXNR6q4V8w",
            "/v1/files/file_abcdefghij",
            "/v1/files/file_0123",
            "/v1/files/file-011CNha8iCJcU1wXNR6q4V8w",
            "https://host/?/v1/files/file_011CNha8iCJcU1wXNR6q4V8w",
            "",
        ] {
            assert_eq!(named(url), None, "{url}");
        }
        let long = format!("/v1/files/file_1{}", "a".repeat(200));
        assert_eq!(named(&long), None);
    }
    use crate::secret::Secret;

    /// The credential a request carried, for tests that check what was sent.
    fn bearer_of(headers: &HeaderMap) -> Option<Secret> {
        headers
            .get(reqwest::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(Secret::new)
    }

    #[test]
    fn only_a_plausible_model_name_is_kept() {
        let m = |s: &str| RequestMeta::default().with_model(Some(s.into())).model;
        assert_eq!(m("claude-sonnet-4-5").as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(m(&"m".repeat(MAX_MODEL_LEN + 1)), None);
        assert_eq!(m("claude\n-x"), None);
        assert_eq!(m("  "), None);
    }

    #[test]
    fn an_overlong_session_id_pins_nothing() {
        let long = "s".repeat(MAX_SESSION_ID_LEN + 1);
        let fits = "s".repeat(MAX_SESSION_ID_LEN);
        let meta = RequestMeta::from_headers(
            [
                ("x-session-affinity", long.as_str()),
                ("x-parent-session-id", fits.as_str()),
            ]
            .into_iter(),
        );
        assert_eq!(meta.session, None);
        assert_eq!(meta.parent.as_deref(), Some(fits.as_str()));
    }

    #[test]
    fn the_sdks_timeout_is_read_as_seconds_and_nonsense_is_no_timeout() {
        let t = |v: &str| RequestMeta::from_headers([("X-Stainless-Timeout", v)].into_iter());
        let secs = |v: &str| t(v).client_timeout.map(|d| d.as_secs_f64());
        assert_eq!(secs("600"), Some(600.0));
        assert_eq!(secs(" 2.5 "), Some(2.5));
        assert_eq!(secs("0"), Some(0.0));
        assert_eq!(secs("1e300"), Some(YEAR_S));
        for nonsense in ["-1", "NaN", "inf", "ten", ""] {
            assert_eq!(secs(nonsense), None, "{nonsense:?}");
        }
        let none = RequestMeta::from_headers(std::iter::empty());
        assert_eq!(none.client_timeout, None);
    }

    #[test]
    fn claude_codes_session_header_pins_and_still_goes_upstream() {
        let caller = pairs(&[("X-Claude-Code-Session-Id", "0b8e-uuid")]);
        let meta = RequestMeta::from_headers(caller.iter().copied());
        assert_eq!(meta.session.as_deref(), Some("0b8e-uuid"));
        let base = forwardable(caller.iter().copied());
        assert!(base.get("x-claude-code-session-id").is_some());
    }

    #[test]
    fn opencode_2s_session_and_project_ids_stay_here_and_its_client_name_goes_on() {
        let caller = pairs(&[
            ("x-opencode-session-id", "ses_1"),
            ("x-opencode-parent-session-id", "ses_0"),
            ("x-session-affinity", "ses_1"),
            ("X-Session-Id", "ses_1"),
            ("x-parent-session-id", "ses_0"),
            ("User-Agent", "opencode/2.0.16"),
            ("x-opencode-project", "prj_1"),
            ("x-opencode-session", "ses_1"),
            ("x-opencode-client", "opencode"),
        ]);
        let meta = RequestMeta::from_headers(caller.iter().copied());
        assert_eq!(meta.session.as_deref(), Some("ses_1"));
        assert_eq!(meta.parent.as_deref(), Some("ses_0"));
        let base = forwardable(caller.iter().copied());
        let mut kept = base.keys().map(|k| k.as_str()).collect::<Vec<_>>();
        kept.sort_unstable();
        assert_eq!(kept, ["user-agent", "x-opencode-client"]);
    }

    #[test]
    fn the_clients_address_a_proxys_hop_and_cookies_stay_here_and_go_to_another_origin() {
        let caller = pairs(&[
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.2"),
            ("x-forwarded-host", "pool.example"),
            ("X-Forwarded-Proto", "https"),
            ("x-forwarded-port", "443"),
            ("Forwarded", "for=203.0.113.7;proto=https"),
            ("X-Real-IP", "203.0.113.7"),
            ("Via", "1.1 nginx"),
            ("True-Client-IP", "203.0.113.7"),
            ("CF-Connecting-IP", "203.0.113.7"),
            ("X-Client-IP", "203.0.113.7"),
            ("Cookie", "sid=abc"),
            ("anthropic-version", "2023-06-01"),
            ("x-forwarded", "a header of its own"),
        ]);
        let api = forwardable(caller.iter().copied());
        assert_eq!(
            api.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["anthropic-version", "x-forwarded"]
        );
        let elsewhere = passed_through(caller.iter().copied());
        assert_eq!(elsewhere.len(), caller.len());
    }

    #[test]
    fn headers_the_connection_header_names_stay_with_the_hop() {
        let caller = pairs(&[
            ("Connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("connection", "x-other"),
            ("X-Other", "2"),
            ("x-kept", "3"),
        ]);
        let base = forwardable(caller.iter().copied());
        assert_eq!(
            base.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-kept"]
        );
    }

    fn pairs(v: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        v.to_vec()
    }

    #[test]
    fn credentials_replace_the_callers_and_betas_merge() {
        let caller = pairs(&[
            ("X-Api-Key", ""),
            ("Authorization", "Bearer caller"),
            (
                "anthropic-beta",
                "interleaved-thinking-2025-05-14, fine-grained-tool-streaming-2025-05-14",
            ),
            ("x-session-affinity", "ses_1"),
            ("content-type", "application/json"),
        ]);
        let meta = RequestMeta::from_headers(caller.iter().copied());
        assert_eq!(meta.session.as_deref(), Some("ses_1"));
        let base = forwardable(caller.iter().copied());
        assert!(base.get("x-session-affinity").is_none());
        let h = with_credential(&base, &Credential::Bearer(Secret::new("tok"))).unwrap();
        assert_eq!(bearer_of(&h).unwrap().expose(), "tok");
        assert!(h.get("authorization").unwrap().is_sensitive());
        assert!(h.get("x-api-key").is_none());
        assert_eq!(
            h.get("anthropic-beta").unwrap().to_str().unwrap(),
            "oauth-2025-04-20,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
        );
        assert!(!format!("{h:?}").contains("tok"));
        let h = with_credential(&base, &Credential::ApiKey(Secret::new("sk-key"))).unwrap();
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get("x-api-key").unwrap().to_str().unwrap(), "sk-key");
        assert!(!h
            .get("anthropic-beta")
            .unwrap()
            .to_str()
            .unwrap()
            .contains(OAUTH_BETA));
    }
}
