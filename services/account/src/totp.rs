//! TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps — what Google Authenticator and
//! similar apps speak) and single-use recovery codes.
//!
//! The secret is sealed at rest with the master key. A code is accepted within one step
//! either side of now, and only once: the accepted step is recorded atomically and a
//! code of that step or an earlier one is refused (replay). Recovery codes (ten, shown
//! once) are stored as SHA-256 digests and each works once.

use printworks_common::crypto::{self, constant_time_eq, random_bytes, sha256};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use uuid::Uuid;

use crate::AccountState;

pub const STEP_SECONDS: u64 = 30;
pub const RECOVERY_CODES: usize = 10;
const ISSUER: &str = "Printworks";

fn sealing_context(user_id: Uuid) -> String {
    format!("totp:{user_id}")
}

pub fn build(secret: &[u8], account_name: &str) -> anyhow::Result<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECONDS)
        .with_secret(Secret::from(secret.to_vec()))
        .with_account_name(account_name.to_owned())
        .with_issuer(Some(ISSUER.to_owned()))
        .build()
        .map_err(|e| anyhow::anyhow!("TOTP parameters: {e}"))
}

/// A fresh 160-bit secret.
pub fn new_secret() -> [u8; 20] {
    random_bytes::<20>()
}

pub fn seal(state: &AccountState, user_id: Uuid, secret: &[u8]) -> Vec<u8> {
    state.ctx.secrets.seal(&sealing_context(user_id), secret)
}

pub fn open(state: &AccountState, user_id: Uuid, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    state
        .ctx
        .secrets
        .open(&sealing_context(user_id), sealed)
        .ok_or_else(|| anyhow::anyhow!("the TOTP secret of user {user_id} does not open"))
}

pub fn base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

/// The time step at `now`.
pub fn step_at(now: OffsetDateTime) -> i64 {
    now.unix_timestamp().div_euclid(STEP_SECONDS as i64)
}

/// The step (now, or one either side) whose code `code` is, if any.
pub fn matching_step(totp: &Totp, code: &str, now: OffsetDateTime) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_at(now);
    let mut found = None;
    // Check all three without stopping early, so timing does not tell which matched.
    for step in [current - 1, current, current + 1] {
        let Ok(at) = u64::try_from(step * STEP_SECONDS as i64) else {
            continue;
        };
        let expected = totp.generate(at).to_string();
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

#[derive(sqlx::FromRow)]
struct Credential {
    secret_sealed: Vec<u8>,
    confirmed_at: Option<OffsetDateTime>,
}

/// Whether TOTP is on for `user_id`.
pub async fn enabled(db: &PgPool, user_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM totp_credentials WHERE user_id = $1 AND confirmed_at IS NOT NULL)",
    )
    .bind(user_id)
    .fetch_one(db)
    .await
}

#[derive(Debug, PartialEq, Eq)]
pub enum SecondFactor {
    Totp,
    RecoveryCode,
}

/// Checks a TOTP code (or, when `allow_recovery`, a recovery code) of a user whose TOTP
/// is on, consuming it. `None`: wrong, replayed or used.
pub async fn verify(
    conn: &mut PgConnection,
    state: &AccountState,
    user_id: Uuid,
    code: &str,
    allow_recovery: bool,
    confirmed: bool,
) -> anyhow::Result<Option<SecondFactor>> {
    let cred: Option<Credential> = sqlx::query_as(
        "SELECT secret_sealed, confirmed_at FROM totp_credentials WHERE user_id = $1 FOR UPDATE",
    )
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(cred) = cred else {
        return Ok(None);
    };
    if cred.confirmed_at.is_some() != confirmed {
        return Ok(None);
    }
    let secret = open(state, user_id, &cred.secret_sealed)?;
    let totp = build(&secret, "account")?;
    let now = state.ctx.now();
    if let Some(step) = matching_step(&totp, code, now) {
        let fresh = sqlx::query(
            "UPDATE totp_credentials SET last_used_step = $2
             WHERE user_id = $1 AND (last_used_step IS NULL OR last_used_step < $2)",
        )
        .bind(user_id)
        .bind(step)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        return Ok((fresh == 1).then_some(SecondFactor::Totp));
    }
    if allow_recovery && confirmed {
        let normalised = normalise_recovery_code(code);
        if normalised.len() == RECOVERY_CODE_LEN {
            let used = sqlx::query(
                "UPDATE recovery_codes SET used_at = $3
                 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
            )
            .bind(user_id)
            .bind(&sha256(normalised.as_bytes())[..])
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if used == 1 {
                return Ok(Some(SecondFactor::RecoveryCode));
            }
        }
    }
    Ok(None)
}

const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
const RECOVERY_CODE_LEN: usize = 10;

/// `xxxxx-xxxxx` from an alphabet without look-alikes (about 49 bits each).
fn new_recovery_code() -> String {
    let chars: String = (0..RECOVERY_CODE_LEN)
        .map(|_| {
            let i = crypto::random_below(RECOVERY_ALPHABET.len() as u32) as usize;
            RECOVERY_ALPHABET[i] as char
        })
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .take(RECOVERY_CODE_LEN + 1)
        .collect()
}

/// Replaces the user's recovery codes with ten new ones and returns them (shown once).
pub async fn replace_recovery_codes(
    conn: &mut PgConnection,
    user_id: Uuid,
    now: OffsetDateTime,
) -> sqlx::Result<Vec<String>> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
    for code in &codes {
        sqlx::query(
            "INSERT INTO recovery_codes (id, user_id, code_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(Uuid::new_v4())
        .bind(user_id)
        .bind(&sha256(normalise_recovery_code(code).as_bytes())[..])
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(codes)
}

/// The otpauth:// URI as a QR code, as a PNG.
pub fn qr_png(uri: &str) -> anyhow::Result<Vec<u8>> {
    const SCALE: usize = 6;
    const QUIET: usize = 4;
    let code = qrcode::QrCode::new(uri.as_bytes())?;
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (mx, my) = (i % width + QUIET, i / width + QUIET);
            for dy in 0..SCALE {
                let row = (my * SCALE + dy) * side;
                for dx in 0..SCALE {
                    pixels[row + mx * SCALE + dx] = 0;
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let side = u32::try_from(side)?;
        let mut encoder = png::Encoder::new(&mut out, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header()?.write_image_data(&pixels)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_its_neighbours_only() {
        let totp = build(&[42u8; 20], "ada@example.com").unwrap();
        let now = time::macros::datetime!(2026-11-25 12:00:10 UTC);
        let step = step_at(now);
        let code_at = |s: i64| totp.generate((s * 30) as u64).to_string();
        assert_eq!(matching_step(&totp, &code_at(step), now), Some(step));
        assert_eq!(
            matching_step(&totp, &code_at(step - 1), now),
            Some(step - 1)
        );
        assert_eq!(
            matching_step(&totp, &code_at(step + 1), now),
            Some(step + 1)
        );
        assert_eq!(matching_step(&totp, &code_at(step - 2), now), None);
        assert_eq!(matching_step(&totp, &code_at(step + 2), now), None);
        assert_eq!(matching_step(&totp, "12345", now), None);
        assert_eq!(matching_step(&totp, "abcdef", now), None);
    }

    #[test]
    fn rfc_6238_test_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (8 digits) → 287082 (6 digits).
        let totp = build(b"12345678901234567890", "x").unwrap();
        assert_eq!(totp.generate(59).to_string(), "287082");
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalise() {
        let a = new_recovery_code();
        assert_eq!(a.len(), 11);
        assert_ne!(a, new_recovery_code());
        assert_eq!(
            normalise_recovery_code(&a.to_uppercase().replace('-', " - ")),
            a.replace('-', "")
        );
    }

    #[test]
    fn the_qr_code_is_a_png() {
        let png = qr_png("otpauth://totp/Printworks:ada?secret=ABC&issuer=Printworks").unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
