//! The relay: print jobs sent by people, sealed at rest, queued in PostgreSQL and
//! streamed to printers over mutual TLS; and the reference agent that prints them.

pub mod agent;
pub mod gcs;
mod jobs;
mod printer;
mod status;

use std::time::Duration;

use futures_util::TryStreamExt as _;
use serde_json::Value;

/// A little G-code that any model accepts, `lines` lines long.
pub fn gcode(lines: usize) -> Vec<u8> {
    let mut g = String::from(";FLAVOR:Griffin\nM104 S210\nM140 S60\nG28\n");
    for i in 0..lines {
        g.push_str(&format!(
            "G1 X{}.{} Y{} E{}.05\n",
            i % 200,
            i % 10,
            (i * 7) % 200,
            i
        ));
    }
    g.push_str("M104 S0\nM140 S0\n");
    g.into_bytes()
}

/// A UFP package (zip) holding `gcode` as 3D/model.gcode, optionally without its
/// content types part.
pub fn ufp(gcode: &[u8], with_content_types: bool) -> Vec<u8> {
    let mut parts: Vec<(&str, &[u8])> = Vec::new();
    if with_content_types {
        parts.push(("[Content_Types].xml", CONTENT_TYPES));
    }
    parts.push(("3D/model.gcode", gcode));
    package(&parts)
}

/// The content types part of a UFP package.
pub const CONTENT_TYPES: &[u8] = br#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="gcode" ContentType="text/x-gcode"/></Types>"#;

/// A zip of `parts` (name, content), deflated, in that order.
pub fn package(parts: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write as _;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in parts {
            zip.start_file(*name, opts).unwrap();
            zip.write_all(content).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// Files anywhere under the data directory's blob store (sealed blobs and spool files).
pub fn stored_files(app: &crate::helpers::TestApp) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&app.data_dir.path().join("blobs"), &mut out);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    printworks_common::crypto::hex(&printworks_common::crypto::sha256(data))
}

/// The states of a job's history (`GET /relay/v1/jobs/{job}`), oldest first.
pub fn history_states(job: &Value) -> Vec<&str> {
    job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect()
}

/// Where the printer resumed a download that was cut, if it did: the byte in the
/// history's `download resumed at byte N`.
pub fn resumed_at(job: &Value) -> Option<usize> {
    job["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| {
            h["message"]
                .as_str()?
                .strip_prefix("download resumed at byte ")
        })
        .find_map(|n| n.parse().ok())
}

/// Server-sent events read from a response, one at a time.
pub struct Events {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Events {
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), reqwest::StatusCode::OK);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            stream: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next event other than a heartbeat: (name, data). `None` when the stream
    /// ended (or broke) or nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let mut name = String::from("message");
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if name == "heartbeat" || data.is_empty() {
                    continue;
                }
                return Some((
                    name,
                    serde_json::from_str(&data).unwrap_or(Value::String(data)),
                ));
            }
            match tokio::time::timeout_at(deadline, self.stream.try_next()).await {
                Ok(Ok(Some(b))) => self.buf.extend_from_slice(&b),
                _ => return None,
            }
        }
    }

    /// Whether the stream ends (the server dropped it) within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.try_next()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}
