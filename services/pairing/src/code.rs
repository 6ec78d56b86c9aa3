//! The six-digit pairing code a printer shows: uniform over 000000–999999 from the
//! operating system's CSPRNG, typed by a person (spaces and dashes forgiven).

use printworks_common::crypto::{SecretBox, random_below};

/// A well-formed pairing code: exactly six ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode(String);

impl std::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairingCode(******)")
    }
}

impl PairingCode {
    pub fn generate() -> Self {
        Self(format!("{:06}", random_below(1_000_000)))
    }

    /// What a person typed: six digits, perhaps grouped with spaces or a dash.
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        const WHY: &str = "code must be the six digits the printer shows.";
        if input.len() > 32 {
            return Err(WHY);
        }
        let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(digits))
        } else {
            Err(WHY)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored: a keyed digest (a plain hash of one of a million codes would be
    /// reversed at once).
    pub fn digest(&self, secrets: &SecretBox) -> Vec<u8> {
        secrets.mac("pairing-code", self.0.as_bytes()).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_spread_over_the_whole_range() {
        let mut first_digits = [0u32; 10];
        for _ in 0..2000 {
            let c = PairingCode::generate();
            assert_eq!(c.as_str().len(), 6);
            assert!(c.as_str().bytes().all(|b| b.is_ascii_digit()));
            first_digits[usize::from(c.as_str().as_bytes()[0] - b'0')] += 1;
        }
        // Leading zeros happen: every first digit shows up (2000 draws; each digit is
        // missing with probability 0.9^2000).
        assert!(first_digits.iter().all(|&n| n > 0), "{first_digits:?}");
    }

    #[test]
    fn typed_codes_are_forgiven_spacing_but_nothing_else() {
        assert_eq!(PairingCode::parse("012 345").unwrap().as_str(), "012345");
        assert_eq!(PairingCode::parse("012-345").unwrap().as_str(), "012345");
        for bad in [
            "",
            "12345",
            "1234567",
            "12a456",
            "１２３４５６",
            "0x1234",
            &"1".repeat(40),
        ] {
            assert!(PairingCode::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{:?}", PairingCode::parse("123456").unwrap()).contains("123456"));
    }
}
