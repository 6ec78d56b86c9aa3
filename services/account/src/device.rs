//! Device cookies (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"): a
//! browser that has logged in to an account before carries a cookie that says so, and
//! its attempts at that account are counted apart from everyone else's. A stranger who
//! knows an address and fails at it again and again slows down the attempts that come
//! without such a cookie — never the owner's, from a browser they used before. A stolen
//! or guessed-at device is slowed on its own.
//!
//! The cookie holds, for each account this browser logged in to (at most
//! [`MAX_ENTRIES`]), a random 128-bit nonce and a MAC over the account's normalised
//! address and the nonce (a key derived from the master key): nothing is stored on the
//! server, and an entry cannot be made up or moved to another account. It is issued
//! anew at every successful login.

use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use printworks_common::crypto::{base64url, base64url_decode, constant_time_eq, random_bytes};

use crate::AccountState;

/// How long a browser is remembered after its last login.
pub const MAX_AGE: time::Duration = time::Duration::days(365);
/// Accounts one browser is remembered for.
pub const MAX_ENTRIES: usize = 5;

const NONCE: usize = 16;
const TAG: usize = 16;

/// With https, the `__Host-` prefix pins it to this origin, `Path=/` and `Secure`.
pub fn cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-pw_device"
    } else {
        "pw_device"
    }
}

fn tag(state: &AccountState, subject: &str, nonce: &[u8]) -> [u8; 32] {
    let mut data = Vec::with_capacity(subject.len() + 1 + nonce.len());
    data.extend_from_slice(subject.as_bytes());
    data.push(0);
    data.extend_from_slice(nonce);
    state.ctx.secrets.mac("device-cookie", &data)
}

fn entries(state: &AccountState, jar: &CookieJar) -> Vec<Vec<u8>> {
    let https = state.ctx.settings.public_url.is_https();
    jar.get(cookie_name(https))
        .map(|c| c.value())
        .filter(|v| v.len() <= 400)
        .unwrap_or_default()
        .split('.')
        .filter_map(base64url_decode)
        .filter(|raw| raw.len() == NONCE + TAG)
        .take(MAX_ENTRIES)
        .collect()
}

/// The device this browser proves for `subject` (the account's throttle key): its
/// throttle subject, if its cookie holds a valid entry for that account.
pub fn proven(state: &AccountState, jar: &CookieJar, subject: &str) -> Option<String> {
    entries(state, jar).into_iter().find_map(|raw| {
        let (nonce, given) = raw.split_at(NONCE);
        constant_time_eq(given, &tag(state, subject, nonce)[..TAG])
            .then(|| format!("device:{}", base64url(nonce)))
    })
}

/// The cookie to set after `subject` logged in: a fresh entry for it, first, and the
/// entries of other accounts kept (up to [`MAX_ENTRIES`] in all).
pub fn issue(state: &AccountState, jar: &CookieJar, subject: &str) -> Cookie<'static> {
    let nonce = random_bytes::<NONCE>();
    let mut fresh = nonce.to_vec();
    fresh.extend_from_slice(&tag(state, subject, &nonce)[..TAG]);
    let mut values = vec![base64url(&fresh)];
    for raw in entries(state, jar) {
        let (nonce, given) = raw.split_at(NONCE);
        let same_account = constant_time_eq(given, &tag(state, subject, nonce)[..TAG]);
        if !same_account && values.len() < MAX_ENTRIES {
            values.push(base64url(&raw));
        }
    }
    let https = state.ctx.settings.public_url.is_https();
    Cookie::build((cookie_name(https), values.join(".")))
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Strict)
        .max_age(MAX_AGE)
        .build()
}
