//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie maps
//! to the admin token it logged in with and a CSRF token for its forms. The
//! token never reaches the browser again; the API never reads the cookie.
use keyfed_console::Flash;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "keyfed_session";
/// The log-in form's CSRF token, before there is a session (double submit:
/// a page on another site can neither read nor set it).
pub const LOGIN_COOKIE: &str = "keyfed_login";
/// A session unused this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// More sessions than this: the oldest idle ones go first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
pub struct Session {
    /// The admin token, or `None` on a node without tokens (the Admin
    /// service then answers loopback callers by their address).
    pub token: Option<String>,
    /// Who, for the page header: the token's name and role.
    pub actor: String,
    pub can_write: bool,
    pub csrf: String,
    pub flash: Option<Flash>,
    last_used: Instant,
}

/// The sessions of one node's console, in memory (a restart logs everyone out).
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex: a session id or a CSRF token.
pub fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("the system's random source works");
    hex::encode(b)
}

/// Whether a session last used at `last` is still good at `now`.
fn alive(last: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last) < IDLE
}

/// Compares two secrets without stopping at the first difference.
#[must_use]
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Sessions {
    pub fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session; returns its id (the cookie's value).
    pub fn open(&self, token: Option<String>, actor: String, can_write: bool) -> String {
        let now = Instant::now();
        let id = random_hex();
        let mut map = self.map.lock().expect("sessions lock");
        map.retain(|_, s| alive(s.last_used, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                token,
                actor,
                can_write,
                csrf: random_hex(),
                flash: None,
                last_used: now,
            },
        );
        id
    }

    /// The live session `id`, touched; its flash message is handed out once.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.map.lock().expect("sessions lock");
        let s = map.get_mut(id)?;
        if !alive(s.last_used, now) {
            map.remove(id);
            return None;
        }
        s.last_used = now;
        let out = s.clone();
        s.flash = None;
        Some(out)
    }

    pub fn flash(&self, id: &str, f: Flash) {
        if let Some(s) = self.map.lock().expect("sessions lock").get_mut(id) {
            s.flash = Some(f);
        }
    }

    pub fn close(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }
}

/// The session cookie: HttpOnly, SameSite=Strict, Path=/, Secure on TLS.
#[must_use]
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{secure}")
}

#[must_use]
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

/// The log-in form's cookie: only sent back to `/login`.
#[must_use]
pub fn login_cookie(token: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{LOGIN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/login{secure}")
}

/// The session id in a `Cookie` header, if any.
#[must_use]
pub fn from_cookie_header(value: &str) -> Option<&str> {
    cookie(value, COOKIE)
}

/// The cookie `name` in a `Cookie` header, if set and not empty.
#[must_use]
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_flash_once() {
        let now = Instant::now();
        assert!(alive(now, now + IDLE - Duration::from_secs(1)));
        assert!(!alive(now, now + IDLE));
        let s = Sessions::new();
        let id = s.open(Some("t".into()), "ops (admin)".into(), true);
        assert_eq!(id.len(), 64);
        s.flash(&id, Flash::Done("assigned".into()));
        let first = s.get(&id).expect("live");
        assert_eq!(first.flash, Some(Flash::Done("assigned".into())));
        assert_eq!(s.get(&id).expect("live").flash, None);
        assert_ne!(first.csrf, id, "the CSRF token is not the session id");
        s.close(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_on_tls() {
        assert_eq!(
            set_cookie("ab", false),
            "keyfed_session=ab; HttpOnly; SameSite=Strict; Path=/"
        );
        assert!(set_cookie("ab", true).ends_with("; Secure"));
        assert!(clear_cookie(true).contains("Max-Age=0"));
        assert_eq!(
            from_cookie_header("a=1; keyfed_session=xy; b=2"),
            Some("xy")
        );
        assert_eq!(from_cookie_header("keyfed_session="), None);
        assert_eq!(from_cookie_header("other=1"), None);
        assert_eq!(
            cookie("keyfed_session=a; keyfed_login=b", LOGIN_COOKIE),
            Some("b")
        );
        assert!(login_cookie("b", false).ends_with("; Path=/login"));
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
