//! The one catalogue of OAuth scopes (moved here from `printworks_common::auth`).

use std::collections::BTreeSet;
use std::fmt;

/// The one catalogue of scopes, used by every service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    OpenId,
    Profile,
    Email,
    OfflineAccess,
    OrganizationRead,
    OrganizationWrite,
    PrinterRead,
    PrinterWrite,
    PrintJobRead,
    PrintJobWrite,
    AuditRead,
}

impl Scope {
    pub const ALL: [Scope; 11] = [
        Scope::OpenId,
        Scope::Profile,
        Scope::Email,
        Scope::OfflineAccess,
        Scope::OrganizationRead,
        Scope::OrganizationWrite,
        Scope::PrinterRead,
        Scope::PrinterWrite,
        Scope::PrintJobRead,
        Scope::PrintJobWrite,
        Scope::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::OpenId => "openid",
            Scope::Profile => "profile",
            Scope::Email => "email",
            Scope::OfflineAccess => "offline_access",
            Scope::OrganizationRead => "organization.read",
            Scope::OrganizationWrite => "organization.write",
            Scope::PrinterRead => "printer.read",
            Scope::PrinterWrite => "printer.write",
            Scope::PrintJobRead => "print_job.read",
            Scope::PrintJobWrite => "print_job.write",
            Scope::AuditRead => "audit.read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// What granting this scope lets an app see or do, in plain words (consent page).
    pub fn description(self) -> &'static str {
        match self {
            Scope::OpenId => "Know who you are when you sign in",
            Scope::Profile => "See your name",
            Scope::Email => "See your e-mail address",
            Scope::OfflineAccess => {
                "Keep access while you are not using it (until you withdraw it)"
            }
            Scope::OrganizationRead => "See your organizations, their members and teams",
            Scope::OrganizationWrite => {
                "Change your organizations: invite people, manage teams, projects and sharing, as far as your role allows"
            }
            Scope::PrinterRead => "See the printers you have access to and their status",
            Scope::PrinterWrite => {
                "Add printers, change and share them, as far as your role allows"
            }
            Scope::PrintJobRead => "See print jobs on printers you have access to",
            Scope::PrintJobWrite => "Send print jobs to printers you may use, and stop them",
            Scope::AuditRead => "Read the audit log of organizations you administer",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, written space-separated (RFC 6749 §3.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Refuses unknown scopes, naming the first one.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for word in s.split(' ').filter(|w| !w.is_empty()) {
            match Scope::parse(word) {
                Some(scope) => {
                    set.insert(scope);
                }
                None => {
                    let shown: String = word.chars().take(40).collect();
                    return Err(format!("unknown scope {shown:?}"));
                }
            }
        }
        Ok(Self(set))
    }

    /// From stored strings; unknown ones (from an older catalogue) are dropped.
    pub fn from_strings<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Self {
        Self(
            items
                .into_iter()
                .filter_map(|s| Scope::parse(s.as_ref()))
                .collect(),
        )
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0.insert(scope);
    }

    pub fn remove(&mut self, scope: Scope) {
        self.0.remove(&scope);
    }

    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.intersection(&other.0).copied().collect())
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.union(&other.0).copied().collect())
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&words.join(" "))
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<T: IntoIterator<Item = Scope>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_space_separated() {
        let s = ScopeSet::parse("openid  printer.read openid").unwrap();
        assert_eq!(s.to_string(), "openid printer.read");
        assert!(s.contains(Scope::PrinterRead));
        assert_eq!(
            ScopeSet::parse("openid admin").unwrap_err(),
            "unknown scope \"admin\""
        );
        assert!(ScopeSet::parse("").unwrap().is_empty());
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            assert!(!scope.description().is_empty());
        }
    }
}
