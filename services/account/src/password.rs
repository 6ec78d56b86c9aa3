//! Passwords: the policy (NIST SP 800-63B, OWASP ASVS 5.0 V6). Hashing (Argon2id) is
//! shared with the org service's printer PINs: [`printworks_common::hashing`].
//!
//! Policy: Unicode-normalised (NFKC), length within the configured bounds counted in
//! characters, no composition rules, refused when easy to guess (zxcvbn, whose
//! dictionaries hold the common and breached passwords) or when it contains the e-mail
//! address's local part; the refusal says why.
//!
pub use printworks_common::hashing::{PasswordHasher, Verified};
use printworks_common::settings::AccountSettings;
use unicode_normalization::UnicodeNormalization;

/// zxcvbn's estimate needs at least this score (10^10 guesses) to pass.
const MIN_STRENGTH: zxcvbn::Score = zxcvbn::Score::Three;
/// zxcvbn's cost grows with length; the first characters decide the estimate.
const STRENGTH_PREFIX_CHARS: usize = 100;

/// NFKC, as NIST SP 800-63B §5.1.1.2 asks, so the same password typed on another
/// keyboard or platform still matches.
pub fn normalise(password: &str) -> String {
    password.nfkc().collect()
}

#[derive(Clone, Debug)]
pub struct PasswordPolicy {
    pub min_chars: usize,
    pub max_chars: usize,
}

impl PasswordPolicy {
    pub fn from_settings(s: &AccountSettings) -> Self {
        Self {
            min_chars: s.password_min_length as usize,
            max_chars: s.password_max_length as usize,
        }
    }

    /// The normalised password, or why it is refused.
    pub fn check(&self, password: &str, email: &str, display_name: &str) -> Result<String, String> {
        let normalised = normalise(password);
        let chars = normalised.chars().count();
        if chars < self.min_chars {
            return Err(format!(
                "The password must be at least {} characters long.",
                self.min_chars
            ));
        }
        if chars > self.max_chars {
            return Err(format!(
                "The password must be at most {} characters long.",
                self.max_chars
            ));
        }
        let lower = normalised.to_lowercase();
        let local_part = email.split('@').next().unwrap_or_default().to_lowercase();
        if local_part.chars().count() >= 3 && lower.contains(&local_part) {
            return Err("The password must not contain your e-mail address.".into());
        }
        let prefix: String = normalised.chars().take(STRENGTH_PREFIX_CHARS).collect();
        let entropy = zxcvbn::zxcvbn(&prefix, &[email, &local_part, display_name]);
        if entropy.score() < MIN_STRENGTH {
            let reason = entropy
                .feedback()
                .and_then(|f| f.warning())
                .map(|w| w.to_string())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "It is too easy to guess.".to_owned());
            return Err(format!(
                "The password is too easy to guess: {reason} A longer phrase of unrelated words works well."
            ));
        }
        Ok(normalised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy {
            min_chars: 12,
            max_chars: 256,
        }
    }

    #[test]
    fn strong_passphrases_pass_and_are_normalised() {
        let p = policy();
        assert!(
            p.check("correct horse battery staple", "ada@example.com", "Ada")
                .is_ok()
        );
        // NFKC: the full-width and the ASCII spelling are one password.
        let a = p
            .check(
                "ｆｊｏｒｄ ｑｕｉｌｌ ｖｅｘ ｗａｌｔｚ",
                "ada@example.com",
                "Ada",
            )
            .unwrap();
        let b = p
            .check("fjord quill vex waltz", "ada@example.com", "Ada")
            .unwrap();
        assert_eq!(a, b);
        // No composition rules: lowercase letters and spaces suffice when long enough.
        assert!(
            p.check("umbrella oxygen lantern gravel", "x@example.com", "X")
                .is_ok()
        );
    }

    #[test]
    fn refusals_say_why() {
        let p = policy();
        let short = p
            .check("Tr0ub4dor&3", "ada@example.com", "Ada")
            .unwrap_err();
        assert!(short.contains("at least 12"), "{short}");
        let long = p
            .check(&"ab1!".repeat(70), "ada@example.com", "Ada")
            .unwrap_err();
        assert!(long.contains("at most 256"), "{long}");
        let common = p
            .check("password1234", "ada@example.com", "Ada")
            .unwrap_err();
        assert!(common.contains("too easy to guess"), "{common}");
        let keyboard = p
            .check("qwertyuiopasdf", "ada@example.com", "Ada")
            .unwrap_err();
        assert!(keyboard.contains("too easy to guess"), "{keyboard}");
        let mine = p
            .check("lovelace-rules-the-engine", "lovelace@example.com", "Ada")
            .unwrap_err();
        assert!(mine.contains("e-mail"), "{mine}");
    }
}
