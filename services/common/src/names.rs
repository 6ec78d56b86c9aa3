//! Names people give things (organizations, teams, projects, printers, themselves).

use crate::error::ApiError;

/// 1 to 100 characters, no control characters, trimmed; refused naming the field
/// (`what`).
pub fn checked_name(input: &str, what: &str) -> Result<String, ApiError> {
    let name = input.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{what} must be 1 to 100 characters, without control characters."
        )));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(checked_name("  Fab Lab ", "name").unwrap(), "Fab Lab");
        assert!(checked_name("   ", "name").is_err());
        assert!(checked_name(&"x".repeat(101), "name").is_err());
        assert_eq!(
            checked_name(&"é".repeat(100), "name")
                .unwrap()
                .chars()
                .count(),
            100
        );
        assert!(checked_name("tab\there", "name").is_err());
    }
}
