//! The OpenAPI document (`openapi/printworks.json`) held against the running server:
//! every row of every service's route table is documented with the access it declares,
//! every documented operation is a row and is served, and every response the API tests receive through
//! [`crate::helpers::TestApp::call`] has a documented status and a body that validates
//! against the documented schema.

use std::sync::OnceLock;

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};
use sqlx::PgPool;

use crate::helpers::TestApp;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

pub struct Spec {
    doc: Value,
}

/// The document, read once per test binary.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/printworks.json");
        let text = std::fs::read_to_string(path).expect("openapi/printworks.json");
        let doc: Value = serde_json::from_str(&text).expect("the OpenAPI document is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        Spec { doc }
    })
}

impl Spec {
    /// Every `(method, path template)` the document describes.
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                if item.get(m).is_some() {
                    ops.push((m.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    pub fn operation(&self, method: &str, template: &str) -> Option<&Value> {
        self.doc["paths"].get(template)?.get(method.to_lowercase())
    }

    /// The documented template a concrete path matches: literal segments must be equal,
    /// `{name}` matches any one segment; the most literal template wins.
    pub fn template_of(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()?
            .keys()
            .filter_map(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                if ts.len() != segments.len() {
                    return None;
                }
                let mut params = 0;
                for (a, b) in ts.iter().zip(&segments) {
                    if a.starts_with('{') && a.ends_with('}') {
                        params += 1;
                    } else if a != b {
                        return None;
                    }
                }
                Some((params, t.clone()))
            })
            .min()
            .map(|(_, t)| t)
    }

    /// Resolves `$ref`s (to this document) recursively.
    fn resolve(&self, v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let target = self
                        .doc
                        .pointer(r.trim_start_matches('#'))
                        .unwrap_or_else(|| panic!("unresolvable $ref {r}"));
                    let resolved = self.resolve(target);
                    let rest: Map<String, Value> = map
                        .iter()
                        .filter(|(k, _)| k.as_str() != "$ref")
                        .map(|(k, v)| (k.clone(), self.resolve(v)))
                        .collect();
                    if rest.is_empty() {
                        return resolved;
                    }
                    let mut all = rest;
                    all.insert("allOf".into(), Value::Array(vec![resolved]));
                    return Value::Object(all);
                }
                Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), self.resolve(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(|i| self.resolve(i)).collect()),
            other => other.clone(),
        }
    }

    /// Panics unless the response is documented for the operation and its body
    /// validates against the documented schema.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        content_type: Option<&str>,
        body: &Value,
    ) {
        let template = self
            .template_of(path)
            .unwrap_or_else(|| panic!("{method} {path}: no documented path matches"));
        let op = self
            .operation(method.as_str(), &template)
            .unwrap_or_else(|| panic!("{method} {template}: operation not documented"));
        let responses = &op["responses"];
        let response = responses
            .get(status.as_str())
            .or_else(|| responses.get(format!("{}XX", status.as_u16() / 100)))
            .or_else(|| responses.get("default"))
            // Any operation may fail inside; the document says so once.
            .or_else(|| {
                (status == StatusCode::INTERNAL_SERVER_ERROR)
                    .then(|| self.doc.pointer("/components/responses/InternalError"))
                    .flatten()
            })
            .unwrap_or_else(|| {
                panic!("{method} {template}: status {status} not documented (body {body})")
            });
        let response = self.resolve(response);
        let media = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned())
            .unwrap_or_default();
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                body.is_null(),
                "{method} {template} {status}: documented without a body, got {body}"
            );
            return;
        };
        let Some(media_doc) = content.get(&media) else {
            panic!(
                "{method} {template} {status}: content type {media:?} not documented (has {:?})",
                content.keys().collect::<Vec<_>>()
            );
        };
        let Some(schema) = media_doc.get("schema") else {
            return;
        };
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(schema)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: bad schema: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: the body does not match the document:\n{}\nbody: {body}",
            errors.join("\n")
        );
    }
}

/// The security schemes an operation may be called with, as the document names them
/// (`[]` for "no credential"), sorted.
fn documented_security(op: &Value) -> Vec<String> {
    let mut schemes: Vec<String> = op["security"]
        .as_array()
        .map(|alternatives| {
            alternatives
                .iter()
                .map(|r| {
                    let names: Vec<&str> = r
                        .as_object()
                        .map(|o| o.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    if names.is_empty() {
                        "[]".to_owned()
                    } else {
                        names.join("+")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    schemes.sort();
    schemes
}

/// Every row of every service's route table is documented with the access it declares
/// (the scope in `x-required-scope`, the credentials in `security`), and every
/// documented operation is a row of some table: the tables and the document describe
/// the same API.
#[test]
fn every_route_table_row_is_documented_with_its_access() {
    use printworks_common::routes::Access;
    let spec = spec();
    let rows = printworks::route_specs();
    let mut failures = Vec::new();
    for row in &rows {
        let (method, path) = (row.method.as_str(), row.path.as_str());
        let Some(op) = spec.operation(method, path) else {
            failures.push(format!("{method} {path} is not in openapi/printworks.json"));
            continue;
        };
        let scope = op["x-required-scope"].as_str();
        let security = documented_security(op);
        let security: Vec<&str> = security.iter().map(String::as_str).collect();
        let (want_scope, want_security): (Option<&str>, &[&[&str]]) = match row.access {
            // Public operations name no scheme, or an optional session or client.
            Access::Public => (None, &[&[], &["[]", "session"]]),
            Access::Session => (None, &[&["session"]]),
            Access::Token(s) => (Some(s.as_str()), &[&["bearer"]]),
            Access::SessionOrToken(s) => (Some(s.as_str()), &[&["bearer", "session"]]),
            Access::Client => (None, &[&["[]", "client_basic"]]),
            Access::Printer => (None, &[&["printer_certificate"]]),
            Access::UploadKey => (None, &[&["octoprint_upload_key"]]),
        };
        if scope != want_scope {
            failures.push(format!(
                "{method} {path}: x-required-scope is {scope:?}, the table says {want_scope:?}"
            ));
        }
        if !want_security.contains(&security.as_slice()) {
            failures.push(format!(
                "{method} {path}: security is {security:?}, the table says {:?}",
                row.access
            ));
        }
    }
    for (method, path) in spec.operations() {
        if !rows
            .iter()
            .any(|r| r.method.as_str() == method && r.path == path)
        {
            failures.push(format!(
                "{method} {path} is documented but no route table has it"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every documented path is routed, with at least the documented methods: a request
/// with a method no route has is answered 405 with the path's `Allow` header (an
/// unrouted path would be 404). Paths served on the printer endpoint (their own
/// `servers`) are checked over mutual TLS in `pairing::certificates`.
#[sqlx::test(migrator = "MIGRATOR")]
async fn every_documented_operation_is_served(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let paths = spec().doc["paths"].as_object().unwrap();
    for (template, item) in paths {
        if item.get("servers").is_some() {
            continue;
        }
        let path = crate::routes::concrete(template);
        let res = app
            .client
            .request(Method::from_bytes(b"PROPFIND").unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{template} is documented but not routed"
        );
        let allow = res.headers()["allow"].to_str().unwrap().to_owned();
        for m in METHODS {
            if item.get(m).is_some() {
                assert!(
                    allow.split(',').any(|a| a.trim().eq_ignore_ascii_case(m)),
                    "{} {template} is documented but the route allows only {allow}",
                    m.to_uppercase()
                );
            }
        }
    }
}
