//! Errors as a printer reads them: RFC 9457 problem details.

use serde::Deserialize;

/// An `application/problem+json` answer, as a client reads it: `type`, `title`,
/// `status`, `detail` when there is one, and the `request_id`. Extension members are
/// ignored. Every member is optional here, so that any problem (or a body that is only
/// partly one) still reads. The server writes problems itself (`printworks_common::error`);
/// this type only reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ProblemReport {
    /// `urn:printworks:problem:<slug>`, or `about:blank`.
    #[serde(rename = "type", default)]
    pub type_uri: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_with_or_without_their_members() {
        let p: ProblemReport = serde_json::from_str(
            r#"{"type":"urn:printworks:problem:job-finished","title":"This job is no longer to be printed","status":410,"detail":"The job is completed.","request_id":"r1","extra":1}"#,
        )
        .unwrap();
        assert_eq!(p.type_uri, "urn:printworks:problem:job-finished");
        assert_eq!(p.status, 410);
        assert_eq!(p.detail.as_deref(), Some("The job is completed."));
        let bare: ProblemReport = serde_json::from_str("{}").unwrap();
        assert_eq!(bare, ProblemReport::default());
    }
}
