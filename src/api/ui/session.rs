//! The console's sessions and sign-ins.
//!
//! A session is a cookie `EXPIRES.TOKEN_ID.NONCE.TAG`: its expiry, a digest naming the token
//! it was made from (removing the token ends it), a random nonce naming the session itself,
//! and an HMAC-SHA256 tag under a key made at start-up. Signing out records the nonce as
//! revoked until the cookie would have expired, so a copy of the cookie is refused from then
//! on. The revoked table is bounded: should it fill with sessions not yet expired, the
//! signing key is replaced, which ends every session (the safe way to run out of room).
//!
//! Failed sign-ins are counted per client address in windows of a minute; past
//! `api.signin_failures` in a window, the client's sign-ins are refused (429) until the window
//! ends, the right token included. A client is logged by address, never with the token it
//! sent.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use ring::hmac;
use ring::rand::SecureRandom as _;

/// Sessions signed out and not yet expired that are remembered; past it, every session ends.
const MAX_REVOKED: usize = 65_536;
/// Clients whose failed sign-ins are counted at once; past it, the new ones share a count.
const MAX_CLIENTS: usize = 4_096;
/// The window failed sign-ins are counted in, in seconds.
pub const WINDOW: i64 = 60;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// A short digest naming a token without revealing it.
fn token_id(token: &[u8]) -> String {
    hex(&ring::digest::digest(&ring::digest::SHA256, token).as_ref()[..12])
}

/// A key from the system's random source; without one the service does not start (a
/// guessable key would let anyone forge a session).
fn random_key() -> Result<hmac::Key, String> {
    hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).map_err(|_| {
        "the system's random source is unavailable: no key for console sessions".into()
    })
}

/// A session's parts, once its tag is checked.
struct Checked {
    expires: i64,
    nonce: u128,
}

#[derive(Debug)]
struct Keyed {
    key: hmac::Key,
    /// Signed-out sessions (by nonce) and when each would have expired.
    revoked: HashMap<u128, i64>,
}

/// The console's sessions: the signing key and the sessions signed out.
#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<Keyed>,
}

impl Sessions {
    pub fn new() -> Result<Sessions, String> {
        Ok(Sessions {
            inner: Mutex::new(Keyed {
                key: random_key()?,
                revoked: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keyed> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cookie value of a new session of `token` ending at `expires` (seconds since the
    /// epoch).
    pub fn issue(&self, token: &[u8], expires: i64) -> Result<String, String> {
        let mut nonce = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "the system's random source is unavailable")?;
        let body = format!("{expires}.{}.{}", token_id(token), hex(&nonce));
        let tag = hmac::sign(&self.lock().key, body.as_bytes());
        Ok(format!("{body}.{}", hex(tag.as_ref())))
    }

    /// The session's expiry and nonce when `value` carries this key's tag and names one of
    /// `tokens`.
    fn check(key: &hmac::Key, value: &str, tokens: &[Vec<u8>]) -> Option<Checked> {
        let (body, tag) = value.rsplit_once('.')?;
        let mut parts = body.splitn(3, '.');
        let (expires, id, nonce) = (parts.next()?, parts.next()?, parts.next()?);
        hmac::verify(key, body.as_bytes(), &unhex(tag)?).ok()?;
        let nonce: [u8; 16] = unhex(nonce)?.try_into().ok()?;
        tokens.iter().any(|t| token_id(t) == id).then_some(())?;
        Some(Checked {
            expires: expires.parse().ok()?,
            nonce: u128::from_be_bytes(nonce),
        })
    }

    /// Whether `value` is a session signed here, not expired at `now` (seconds), not signed
    /// out, for a token still in `tokens`.
    pub fn valid(&self, value: &str, tokens: &[Vec<u8>], now: i64) -> bool {
        let inner = self.lock();
        Self::check(&inner.key, value, tokens)
            .is_some_and(|s| s.expires > now && !inner.revoked.contains_key(&s.nonce))
    }

    /// Signs the session `value` out: refused from now on until it would have expired.
    /// Anything that is not a live session is ignored.
    pub fn revoke(&self, value: &str, tokens: &[Vec<u8>], now: i64) {
        let mut inner = self.lock();
        let Some(session) = Self::check(&inner.key, value, tokens) else {
            return;
        };
        if session.expires <= now {
            return;
        }
        if inner.revoked.len() >= MAX_REVOKED {
            inner.revoked.retain(|_, expires| *expires > now);
        }
        if inner.revoked.len() >= MAX_REVOKED {
            match random_key() {
                Ok(key) => {
                    tracing::warn!(
                        "console: {MAX_REVOKED} sessions signed out within their lifetime: every session is ended"
                    );
                    inner.key = key;
                    inner.revoked.clear();
                }
                // Without a new key the table grows past its bound rather than forget one.
                Err(e) => tracing::error!("console: {e}"),
            }
            return;
        }
        inner.revoked.insert(session.nonce, session.expires);
    }
}

/// What a client's sign-in may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Check the token.
    Allowed,
    /// Too many failures: wait this many seconds.
    Wait(i64),
}

/// Failed sign-ins by client, in windows of [`WINDOW`] seconds.
#[derive(Debug)]
pub struct SignIns {
    limit: u32,
    /// Client -> (window start, failures in it).
    failures: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl SignIns {
    pub fn new(limit: u32) -> SignIns {
        SignIns {
            limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (i64, u32)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `client` may try a token at `now` (seconds).
    pub fn attempt(&self, client: IpAddr, now: i64) -> Attempt {
        let failures = self.lock();
        let shared = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let key = if failures.len() >= MAX_CLIENTS && !failures.contains_key(&client) {
            &shared
        } else {
            &client
        };
        match failures.get(key) {
            Some(&(start, n)) if n >= self.limit && now < start + WINDOW => {
                Attempt::Wait(start + WINDOW - now)
            }
            _ => Attempt::Allowed,
        }
    }

    /// Counts a failure of `client` at `now`; the failures in its window so far.
    pub fn failed(&self, client: IpAddr, now: i64) -> u32 {
        let mut failures = self.lock();
        let client = if failures.len() >= MAX_CLIENTS && !failures.contains_key(&client) {
            failures.retain(|_, (start, _)| now < *start + WINDOW);
            if failures.len() >= MAX_CLIENTS {
                // So many clients failing at once share one count.
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                client
            }
        } else {
            client
        };
        let entry = failures.entry(client).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_bound_to_their_token_and_expire() {
        let sessions = Sessions::new().unwrap();
        let tokens = vec![b"token-a".to_vec(), b"token-b".to_vec()];
        let value = sessions.issue(b"token-a", 1_000).unwrap();
        assert!(sessions.valid(&value, &tokens, 999));
        assert!(!sessions.valid(&value, &tokens, 1_000), "expired");
        assert!(!sessions.valid(&value, &tokens[1..], 999), "token removed");
        assert!(
            !Sessions::new().unwrap().valid(&value, &tokens, 999),
            "other key"
        );
        let forged = value.replacen("1000", "9999", 1);
        assert!(!sessions.valid(&forged, &tokens, 999), "forged expiry");
        assert!(!sessions.valid("garbage", &tokens, 0));
        assert!(!sessions.valid("1.2.3.zz", &tokens, 0));
    }

    #[test]
    fn a_signed_out_session_stays_refused_and_others_stay_valid() {
        let sessions = Sessions::new().unwrap();
        let tokens = vec![b"token-a".to_vec()];
        let one = sessions.issue(b"token-a", 1_000).unwrap();
        let other = sessions.issue(b"token-a", 1_000).unwrap();
        assert_ne!(one, other, "each session has a nonce of its own");
        sessions.revoke(&one, &tokens, 10);
        assert!(!sessions.valid(&one, &tokens, 11));
        assert!(sessions.valid(&other, &tokens, 11));
        // Garbage and expired sessions take no room.
        sessions.revoke("garbage", &tokens, 10);
        let old = sessions.issue(b"token-a", 5).unwrap();
        sessions.revoke(&old, &tokens, 10);
        assert_eq!(sessions.lock().revoked.len(), 1);
    }

    #[test]
    fn a_full_revocation_table_ends_every_session() {
        let sessions = Sessions::new().unwrap();
        let tokens = vec![b"token-a".to_vec()];
        let kept = sessions.issue(b"token-a", 1_000).unwrap();
        {
            let mut inner = sessions.lock();
            for n in 0..MAX_REVOKED as u128 {
                inner.revoked.insert(n, 1_000);
            }
        }
        let last = sessions.issue(b"token-a", 1_000).unwrap();
        sessions.revoke(&last, &tokens, 10);
        assert!(!sessions.valid(&last, &tokens, 11));
        assert!(!sessions.valid(&kept, &tokens, 11), "the key was replaced");
        assert!(sessions.lock().revoked.is_empty());
    }

    #[test]
    fn failures_past_the_limit_wait_out_the_window() {
        let signins = SignIns::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for n in 1..=3 {
            assert_eq!(signins.attempt(a, 100), Attempt::Allowed);
            assert_eq!(signins.failed(a, 100), n);
        }
        assert_eq!(signins.attempt(a, 110), Attempt::Wait(50));
        assert_eq!(signins.attempt(b, 110), Attempt::Allowed, "per client");
        assert_eq!(signins.attempt(a, 160), Attempt::Allowed, "a new window");
        assert_eq!(signins.failed(a, 160), 1);
    }

    #[test]
    fn too_many_clients_share_one_count() {
        let signins = SignIns::new(2);
        for n in 0..MAX_CLIENTS as u32 {
            signins.failed(IpAddr::V4(Ipv4Addr::from(n + 1)), 100);
        }
        let late: IpAddr = "192.0.2.1".parse().unwrap();
        signins.failed(late, 100);
        signins.failed("192.0.2.2".parse().unwrap(), 100);
        assert_eq!(signins.lock().len(), MAX_CLIENTS + 1);
        assert!(matches!(signins.attempt(late, 101), Attempt::Wait(_)));
        assert!(matches!(
            signins.attempt("192.0.2.3".parse().unwrap(), 101),
            Attempt::Wait(_)
        ));
    }
}
