//! The route tables enforce what they declare, for every service at once: each row that
//! takes an access token refuses a caller without one (401 with a challenge) and a token
//! that lacks the row's scope (403 `insufficient-scope`, naming it) before its handler
//! runs; each row that needs a browser session refuses an anonymous caller (401). What
//! each role may do on top is held per route in `org::authz` and `relay::roles`.

use printworks_common::auth::{Scope, ScopeSet};
use printworks_common::db::MIGRATOR;
use printworks_common::routes::Access;
use reqwest::{Method, StatusCode};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

/// `template` with every `{parameter}` replaced by a fresh id.
fn concrete(template: &str) -> String {
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
                if lacking.status != StatusCode::FORBIDDEN
                    || lacking.body["type"] != "urn:printworks:problem:insufficient-scope"
                    || lacking.body["required_scope"] != scope.as_str()
                {
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
            Access::Printer | Access::Public | Access::Client => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 40, "only {checked} rows were checked");
}
