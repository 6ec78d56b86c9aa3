//! Cross-tenant access: every id of organization A, used by the admin of organization B
//! (in B's paths or in A's), answers 404 — as if it did not exist — and changes nothing
//! in A.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{OrgWorld, TestApp};

/// Everything organization `org` holds, as text, to compare before and after.
pub async fn snapshot(db: &PgPool, org: Uuid) -> Vec<String> {
    let queries = [
        "SELECT to_jsonb(o)::text FROM organizations o WHERE id = $1",
        "SELECT to_jsonb(m)::text FROM organization_members m WHERE organization_id = $1 ORDER BY user_id",
        "SELECT to_jsonb(i)::text FROM invitations i WHERE organization_id = $1 ORDER BY id",
        "SELECT to_jsonb(t)::text FROM teams t WHERE organization_id = $1 ORDER BY id",
        "SELECT to_jsonb(x)::text FROM team_members x JOIN teams t ON t.id = x.team_id WHERE t.organization_id = $1 ORDER BY x.team_id, x.user_id",
        "SELECT to_jsonb(p)::text FROM projects p WHERE organization_id = $1 ORDER BY id",
        "SELECT to_jsonb(s)::text FROM project_shares s JOIN projects p ON p.id = s.project_id WHERE p.organization_id = $1 ORDER BY s.project_id, s.grantee_id",
        "SELECT to_jsonb(p)::text FROM printers p WHERE organization_id = $1 ORDER BY id",
        "SELECT to_jsonb(s)::text FROM printer_shares s JOIN printers p ON p.id = s.printer_id WHERE p.organization_id = $1 ORDER BY s.printer_id, s.grantee_id",
        "SELECT to_jsonb(s)::text FROM printer_security s JOIN printers p ON p.id = s.printer_id WHERE p.organization_id = $1",
        "SELECT to_jsonb(p)::text FROM org_identity_providers p WHERE organization_id = $1",
        "SELECT to_jsonb(d)::text FROM org_sso_domains d WHERE organization_id = $1 ORDER BY domain",
        "SELECT to_jsonb(p)::text FROM org_policies p WHERE organization_id = $1",
        "SELECT count(*)::text FROM audit_events WHERE organization_id = $1",
    ];
    let mut out = Vec::new();
    for q in queries {
        let rows: Vec<String> = sqlx::query_scalar(q).bind(org).fetch_all(db).await.unwrap();
        out.extend(rows);
    }
    out
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn ids_of_another_organization_answer_404_and_change_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let (a, b) = (w.org, w.other_org);
    let admin = Some(w.admin_token.as_str());

    // Organization A holds one of everything, made through the API.
    let team = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{a}/teams"),
            admin,
            Some(&json!({"name": "Printing"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::PUT,
        &format!(
            "/org/v1/organizations/{a}/teams/{team}/members/{}",
            w.member.id
        ),
        admin,
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let project = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{a}/projects"),
            admin,
            Some(&json!({"name": "Gears"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::PUT,
        &format!("/org/v1/organizations/{a}/projects/{project}/shares"),
        admin,
        Some(&json!({"grantee_type": "team", "grantee_id": team, "permission": "edit"})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let printer = app.register_printer(a, w.admin.id, "A's printer").await;
    app.call(
        Method::PUT,
        &format!("/org/v1/organizations/{a}/printers/{printer}/shares"),
        admin,
        Some(&json!({"grantee_type": "user", "grantee_id": w.member.id})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::PUT,
        &format!("/org/v1/organizations/{a}/printers/{printer}/security"),
        admin,
        Some(&json!({"firewall_enabled": true, "pin": "112358"})),
    )
    .await
    .expect(StatusCode::OK);
    let invitation = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{a}/invitations"),
            admin,
            Some(&json!({"email": "newcomer@example.com", "role": "guest"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();

    // Organization B has its own team, project and printer to aim A's ids from.
    let outsider = Some(w.outsider_token.as_str());
    let b_team = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{b}/teams"),
            outsider,
            Some(&json!({"name": "B team"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    let b_project = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{b}/projects"),
            outsider,
            Some(&json!({"name": "B project"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    let b_printer = app.register_printer(b, w.outsider.id, "B's printer").await;

    let before = snapshot(&app.db, a).await;
    let user = w.member.id;
    let share_body = json!({"grantee_type": "user", "grantee_id": user, "permission": "view"});
    let security = json!({"firewall_enabled": false, "pin": null});
    // Every route with an id of A's, in B's paths (and the org-level ones in A's).
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/org/v1/organizations/{a}"), None),
        (
            Method::PATCH,
            format!("/org/v1/organizations/{a}"),
            Some(json!({"name": "Mine now"})),
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/members"),
            None,
        ),
        (
            Method::PATCH,
            format!("/org/v1/organizations/{b}/members/{user}"),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/members/{user}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/org/v1/organizations/{a}/members/{user}"),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{a}/members/{user}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/members/{user}/sessions"),
            None,
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{a}/members/{user}/sessions"),
            None,
        ),
        (Method::GET, format!("/org/v1/organizations/{a}/sso"), None),
        (
            Method::PUT,
            format!("/org/v1/organizations/{a}/sso"),
            Some(json!({
                "issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s",
                "domains": ["example.com"], "default_role": "member", "enforced": true,
            })),
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{a}/sso"),
            None,
        ),
        (
            Method::POST,
            format!("/org/v1/organizations/{a}/sso/domains/example.com/verify"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/policy"),
            None,
        ),
        (
            Method::PUT,
            format!("/org/v1/organizations/{a}/policy"),
            Some(
                json!({"require_mfa": true, "max_session_age": null, "allowed_auth": "both", "notice": null}),
            ),
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/invitations"),
            None,
        ),
        (
            Method::POST,
            format!("/org/v1/organizations/{a}/invitations"),
            Some(json!({"email": "x@example.com", "role": "admin"})),
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/invitations/{invitation}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{a}/invitations/{invitation}"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/teams"),
            None,
        ),
        (
            Method::POST,
            format!("/org/v1/organizations/{a}/teams"),
            Some(json!({"name": "Intruders"})),
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{b}/teams/{team}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/teams/{team}"),
            None,
        ),
        (
            Method::PUT,
            format!(
                "/org/v1/organizations/{b}/teams/{team}/members/{}",
                w.outsider.id
            ),
            None,
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/teams/{team}/members/{user}"),
            None,
        ),
        (
            Method::PUT,
            format!("/org/v1/organizations/{b}/teams/{b_team}/members/{user}"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/teams/{team}"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/projects"),
            None,
        ),
        (
            Method::POST,
            format!("/org/v1/organizations/{a}/projects"),
            Some(json!({"name": "Mine"})),
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{b}/projects/{project}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/org/v1/organizations/{b}/projects/{project}"),
            Some(json!({"name": "Taken"})),
        ),
        (
            Method::PUT,
            format!("/org/v1/organizations/{b}/projects/{project}/shares"),
            Some(share_body.clone()),
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/projects/{project}/shares/team/{team}"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/projects/{project}"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/printers"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{b}/printers/{printer}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/printers/{printer}"),
            None,
        ),
        (
            Method::PUT,
            format!("/org/v1/organizations/{b}/printers/{printer}/shares"),
            Some(json!({"grantee_type": "team", "grantee_id": b_team})),
        ),
        (
            Method::DELETE,
            format!("/org/v1/organizations/{b}/printers/{printer}/shares/user/{user}"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{b}/printers/{printer}/security"),
            None,
        ),
        (
            Method::PUT,
            format!("/org/v1/organizations/{b}/printers/{printer}/security"),
            Some(security.clone()),
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/printers/{printer}"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/audit-events"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/audit-events/verify"),
            None,
        ),
        (
            Method::GET,
            format!("/org/v1/organizations/{a}/audit-events/export"),
            None,
        ),
    ];
    for (method, path, body) in &cases {
        let res = app
            .call(method.clone(), path, outsider, body.as_ref())
            .await;
        assert_eq!(
            res.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            res.body
        );
        assert_eq!(
            res.body["type"], "urn:printworks:problem:not-found",
            "{method} {path}"
        );
    }
    // Every org route was tried with a foreign id at least once.
    for route in printworks_org::routes().specs() {
        let (m, template) = (route.method.as_str(), route.path.as_str());
        let tried = cases.iter().any(|(method, path, _)| {
            method.as_str() == m
                && crate::openapi::spec().template_of(path).as_deref() == Some(template)
        });
        // Cura's Digital Library takes no organization id; a foreign project is tried in
        // `cura::curas_digital_library_lists_the_projects_a_person_may_see`.
        let global = matches!(
            template,
            "/org/v1/" | "/org/v1/organizations" | "/org/v1/invitations/accept"
        ) || template.starts_with("/cura/v1/");
        assert!(
            tried || global,
            "{m} {template} was not tried across tenants"
        );
    }

    // A's people and teams named in the bodies of B's requests are refused too.
    let refusals = [
        (
            format!("/org/v1/organizations/{b}/projects/{b_project}/shares"),
            share_body,
        ),
        (
            format!("/org/v1/organizations/{b}/projects/{b_project}/shares"),
            json!({"grantee_type": "team", "grantee_id": team, "permission": "edit"}),
        ),
        (
            format!("/org/v1/organizations/{b}/printers/{b_printer}/shares"),
            json!({"grantee_type": "user", "grantee_id": user}),
        ),
        (
            format!("/org/v1/organizations/{b}/printers/{b_printer}/shares"),
            json!({"grantee_type": "team", "grantee_id": team}),
        ),
    ];
    for (path, body) in refusals {
        let res = app.call(Method::PUT, &path, outsider, Some(&body)).await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {}",
            res.body
        );
    }

    assert_eq!(snapshot(&app.db, a).await, before, "organization A changed");
}
