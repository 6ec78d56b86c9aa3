//! E-mail addresses, normalised once so that uniqueness and logins do not depend on
//! case, surrounding spaces or Unicode composition.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// A syntactically plausible address, trimmed, NFC-normalised and in lower case.
/// (Whether it receives mail is for an e-mail to tell, not a regular expression.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, String> {
        let s: String = input.trim().nfc().collect::<String>().to_lowercase();
        let invalid = || "The e-mail address is not valid.".to_owned();
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(invalid)?;
        if local.is_empty()
            || local.len() > 64
            || local.contains('@')
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || domain.starts_with('-')
            || !domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
        {
            return Err(invalid());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        domain_of(&self.0)
    }
}

/// The part of an address after its last `@` (empty without one): for addresses stored
/// already normalised.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        // NFC: e + combining acute is é.
        assert_eq!(
            Email::parse("Rene\u{301}@example.com").unwrap(),
            Email::parse("ren\u{e9}@example.com").unwrap()
        );
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a da@example.com",
            "ada@exa mple.com",
            "ada@.example.com",
            "ada@example..com",
            "ada@example.com.",
            "ada@-example.com",
            "ada@exa_mple.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
    }
}
