//! The route tables enforce what they declare, for every service at once: each row that
//! takes an access token refuses a caller without one (401 with a challenge) and a token
//! that lacks the row's scope (403 `insufficient-scope`, naming it) before its handler
//! runs; each row that needs a browser session refuses an anonymous caller (401). What
//! each role may do on top: the org routes in `org::authz`, every other scoped route
//! below — together, every scoped row of every table.

use printworks_common::auth::{Scope, ScopeSet};
use printworks_common::db::MIGRATOR;
use printworks_common::routes::Access;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{OrgWorld, TestApp};

/// `template` with every `{parameter}` replaced by a fresh id.
pub fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| {
            if s.starts_with('{') {
                Uuid::new_v4().to_string()
            } else {
                s.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_table_row_refuses_callers_without_its_access(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let user = app.new_user("walker").await;
    let rows = printworks::route_specs();
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in rows {
        let path = concrete(&row.path);
        let method = Method::from_bytes(row.method.as_str().as_bytes()).unwrap();
        match row.access {
            Access::Token(scope) | Access::SessionOrToken(scope) => {
                let anonymous = app.call(method.clone(), &path, None, None).await;
                if anonymous.status != StatusCode::UNAUTHORIZED {
                    failures.push(format!(
                        "{method} {} without a token: {} {}",
                        row.path, anonymous.status, anonymous.body
                    ));
                }
                // Every scope a person can be granted, but this one.
                let others: ScopeSet = Scope::ALL.into_iter().filter(|s| *s != scope).collect();
                let token = app.access_token(&user, &others.to_string()).await;
                let lacking = app.call(method.clone(), &path, Some(&token), None).await;
                // Cura's API answers in Cura's error envelope (common::cura).
                let curas = printworks_common::cura::PATHS
                    .iter()
                    .any(|p| row.path.starts_with(p));
                let refused = if curas {
                    let e = &lacking.body["errors"][0];
                    e["code"] == "insufficient-scope"
                        && e["http_status"] == "403"
                        && e["detail"]
                            .as_str()
                            .is_some_and(|d| d.contains(scope.as_str()))
                } else {
                    lacking.body["type"] == "urn:printworks:problem:insufficient-scope"
                        && lacking.body["required_scope"] == scope.as_str()
                };
                if lacking.status != StatusCode::FORBIDDEN || !refused {
                    failures.push(format!(
                        "{method} {} without {scope}: {} {}",
                        row.path, lacking.status, lacking.body
                    ));
                }
                checked += 1;
            }
            Access::Session => {
                let anonymous = app.call(method.clone(), &path, None, None).await;
                if anonymous.status != StatusCode::UNAUTHORIZED {
                    failures.push(format!(
                        "{method} {} without a session: {} {}",
                        row.path, anonymous.status, anonymous.body
                    ));
                }
                checked += 1;
            }
            // Served on the printer endpoint, whose handshake refuses callers without
            // a printer certificate (`pairing::certificates`).
            Access::UploadKey => {
                // No key, and a key of the wrong shape: OctoPrint's 403.
                for key in [None, Some("pwu_not-a-key")] {
                    let mut req = reqwest::Client::new().request(method.clone(), app.url(&path));
                    if let Some(key) = key {
                        req = req.header("x-api-key", key);
                    }
                    let res = req.send().await.unwrap();
                    let status = res.status();
                    let body: serde_json::Value = res.json().await.unwrap_or_default();
                    if status != StatusCode::FORBIDDEN || !body["error"].is_string() {
                        failures.push(format!(
                            "{method} {} with key {key:?}: {status} {body}",
                            row.path
                        ));
                    }
                }
                checked += 1;
            }
            Access::Printer | Access::Public | Access::Client => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 40, "only {checked} rows were checked");
}

/// What each of (admin, member, guest, outsider) gets, in that order: a status, and for
/// those that share one, the problem type that tells "allowed, then refused for another
/// reason" from "refused".
const OTHER_SERVICES: &[(&str, &str, [&str; 4])] = &[
    // The code is wrong: admins and members get that far; guests may not claim.
    (
        "POST",
        "/pairing/v1/claims",
        [
            "404 pairing-code-not-found",
            "404 pairing-code-not-found",
            "403",
            "404 not-found",
        ],
    ),
    // The printer is shared with the member and the guest.
    (
        "POST",
        "/relay/v1/printers/{printer}/jobs",
        ["201", "201", "201", "404"],
    ),
    (
        "GET",
        "/relay/v1/printers/{printer}/jobs",
        ["200", "200", "200", "404"],
    ),
    ("GET", "/relay/v1/jobs/{job}", ["200", "200", "200", "404"]),
    (
        "GET",
        "/relay/v1/printers/{printer}/status",
        ["200", "200", "200", "404"],
    ),
    // A stream: only its answer's status is read.
    (
        "GET",
        "/relay/v1/printers/{printer}/status/events",
        ["200", "200", "200", "404"],
    ),
    // The admin's job on the admin's printer: only admins (and whoever sent it or added
    // the printer) abort it.
    (
        "POST",
        "/relay/v1/jobs/{job}/abort",
        ["200", "403", "403", "404"],
    ),
    // The same callers as abort; the job is still queued (no printer holds it), so the
    // admin who may is told it cannot be paused yet.
    (
        "POST",
        "/relay/v1/jobs/{job}/pause",
        ["409 conflict", "403", "403", "404 not-found"],
    ),
    // The same callers again; the job is queued, not held.
    (
        "POST",
        "/relay/v1/jobs/{job}/start",
        ["409 conflict", "403", "403", "404 not-found"],
    ),
    // Whoever may send jobs to the printer makes and lists upload keys…
    (
        "POST",
        "/relay/v1/printers/{printer}/upload-keys",
        ["201", "201", "201", "404"],
    ),
    (
        "GET",
        "/relay/v1/printers/{printer}/upload-keys",
        ["200", "200", "200", "404"],
    ),
    // …and revokes their own (an admin anyone's): the admin's key, here.
    (
        "DELETE",
        "/relay/v1/printers/{printer}/upload-keys/{key}",
        ["204", "404 not-found", "404 not-found", "404 not-found"],
    ),
    (
        "POST",
        "/relay/v1/jobs/{job}/resume",
        ["409 conflict", "403", "403", "404 not-found"],
    ),
    ("GET", "/account/v1/clients", ["200", "403", "403", "404"]),
    ("POST", "/account/v1/clients", ["201", "403", "403", "404"]),
    (
        "DELETE",
        "/account/v1/clients/{client_id}",
        ["204", "403", "403", "404"],
    ),
    ("GET", "/oauth/userinfo", ["200", "200", "200", "200"]),
    // Cura's account root: check-token answers Cura's own tokens only (these are the
    // command-line client's); the permissions are anyone's.
    (
        "GET",
        "/cura-account/check-token",
        ["404", "404", "404", "404"],
    ),
    (
        "GET",
        "/cura-account/users/permissions",
        ["200", "200", "200", "200"],
    ),
    ("POST", "/oauth/userinfo", ["200", "200", "200", "200"]),
    // Cura's clusters: the printers each may use (the outsider: none of these).
    ("GET", "/connect/v1/clusters", ["200", "200", "200", "200"]),
    (
        "GET",
        "/connect/v1/clusters/{cluster}/status",
        ["200", "200", "200", "404"],
    ),
    // Any person may ask Cura's upload URL; printing an upload that is not theirs (here:
    // none) is 404 to all, as is a printer they may not use.
    ("PUT", "/cura/v1/jobs/upload", ["200", "200", "200", "200"]),
    // Cura's Digital Library: the projects each may see (an unknown one: 404).
    (
        "GET",
        "/cura/v1/feature_budgets",
        ["200", "200", "200", "200"],
    ),
    ("GET", "/cura/v1/projects", ["200", "200", "200", "200"]),
    (
        "GET",
        "/cura/v1/projects/{project}",
        ["404", "404", "404", "404"],
    ),
    (
        "POST",
        "/connect/v1/clusters/{cluster}/print/{job_id}",
        ["404", "404", "404", "404"],
    ),
    (
        "POST",
        "/connect/v1/clusters/{cluster}/print_jobs/{job}/action/{action}",
        ["404", "404", "404", "404"],
    ),
];

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_scoped_route_beyond_org_against_every_role(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let all = ScopeSet::from_iter(Scope::ALL).to_string();
    let mut tokens = Vec::new();
    for user in [&w.admin, &w.member, &w.guest, &w.outsider] {
        tokens.push(app.access_token(user, &all).await);
    }
    let (admin, org) = (tokens[0].clone(), w.org);
    let printer = app.register_printer(org, w.admin.id, "Ultimaker S5").await;
    app.share_printer(printer, &[w.member.id, w.guest.id]).await;
    let gcode = || b"G28\nG1 X10 Y10 F3000\n".to_vec();
    let app_body = json!({
        "organization_id": org,
        "name": "Slicer Cloud",
        "type": "confidential",
        "redirect_uris": ["https://slicer.example.com/oauth/callback"],
        "scopes": ["openid", "printer.read"],
        "grant_types": ["authorization_code"],
    });

    // Every scoped row outside org has a row here, and every row is a route.
    let rows: Vec<(String, String)> = printworks::route_specs()
        .into_iter()
        .filter(|r| r.access.scope().is_some() && !r.path.starts_with("/org/"))
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    for (m, p) in &rows {
        assert!(
            OTHER_SERVICES.iter().any(|(tm, tp, _)| tm == m && tp == p),
            "{m} {p} has no row here"
        );
    }
    assert_eq!(
        OTHER_SERVICES.len(),
        rows.len(),
        "rows for routes that do not exist"
    );

    let mut failures = Vec::new();
    for (method, template, expected) in OTHER_SERVICES {
        // The outsider first, the admin last: what the admin may do changes things.
        for who in (0..4).rev() {
            let token = tokens[who].as_str();
            let job = || async {
                app.submit_gcode(&admin, printer, "cube", gcode())
                    .await
                    .expect(StatusCode::CREATED)
                    .id()
            };
            let path = match *template {
                "/relay/v1/jobs/{job}"
                | "/relay/v1/jobs/{job}/abort"
                | "/relay/v1/jobs/{job}/pause"
                | "/relay/v1/jobs/{job}/resume"
                | "/relay/v1/jobs/{job}/start" => {
                    template.replace("{job}", &job().await.to_string())
                }
                "/relay/v1/printers/{printer}/upload-keys/{key}" => {
                    let made = app
                        .call(
                            Method::POST,
                            &format!("/relay/v1/printers/{printer}/upload-keys"),
                            Some(&admin),
                            Some(&json!({"name": "PrusaSlicer"})),
                        )
                        .await
                        .expect(StatusCode::CREATED);
                    template
                        .replace("{printer}", &printer.to_string())
                        .replace("{key}", made.body["id"].as_str().unwrap())
                }
                "/account/v1/clients/{client_id}" => {
                    let registered = app
                        .call(
                            Method::POST,
                            "/account/v1/clients",
                            Some(&admin),
                            Some(&app_body),
                        )
                        .await
                        .expect(StatusCode::CREATED);
                    let id = registered.body["client_id"].as_str().unwrap().to_owned();
                    template.replace("{client_id}", &id)
                }
                "/account/v1/clients" if *method == "GET" => {
                    format!("{template}?organization_id={org}")
                }
                t => t
                    .replace("{printer}", &printer.to_string())
                    .replace("{cluster}", &printer.to_string())
                    .replace("{job_id}", &Uuid::new_v4().to_string())
                    .replace("{job}", &Uuid::new_v4().to_string())
                    .replace("{action}", "pause")
                    .replace("{project}", &Uuid::new_v4().to_string()),
            };
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let res = if *template == "/relay/v1/printers/{printer}/jobs" && method == Method::POST
            {
                app.submit_gcode(token, printer, "cube", gcode()).await
            } else if template.ends_with("/status/events") {
                let res = app
                    .client
                    .get(app.url(&path))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let body = if status.is_success() {
                    json!({})
                } else {
                    res.json().await.unwrap()
                };
                crate::helpers::Answer { status, body }
            } else {
                let body = match *template {
                    "/pairing/v1/claims" => Some(json!({
                        "organization_id": org, "code": "123456", "name": "P",
                    })),
                    "/account/v1/clients" if method == Method::POST => Some(app_body.clone()),
                    "/relay/v1/printers/{printer}/upload-keys" if method == Method::POST => {
                        Some(json!({"name": "OrcaSlicer"}))
                    }
                    "/cura/v1/jobs/upload" => Some(json!({"data": {
                        "job_name": "cube", "file_size": 20, "content_type": "text/x-gcode",
                    }})),
                    _ => None,
                };
                app.call(method.clone(), &path, Some(token), body.as_ref())
                    .await
            };
            let got = res.status.as_u16().to_string();
            let kind = res.body["type"]
                .as_str()
                .and_then(|t| t.strip_prefix("urn:printworks:problem:"))
                .unwrap_or("");
            let want = expected[who];
            let ok = match want.split_once(' ') {
                Some((status, problem)) => got == status && kind == problem,
                None => got == want,
            };
            if !ok {
                failures.push(format!(
                    "{method} {template} as caller {who}: expected {want}, got {got} {}",
                    res.body
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
