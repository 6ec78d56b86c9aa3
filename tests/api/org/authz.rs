//! Every org route against every kind of caller: admin, member, guest, a member of
//! another organization, anonymous, and a token without the route's scope. The table
//! below must have a row for each scoped row of `printworks_org::routes()`, so a new route
//! without a row fails this test.

use printworks_common::db::MIGRATOR;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{OrgWorld, TestApp};

/// Expected statuses for (admin, member, guest, outsider). Anonymous callers always get
/// 401 and tokens without the scope 403.
const TABLE: &[(&str, &str, [u16; 4])] = &[
    ("GET", "/org/v1/organizations", [200, 200, 200, 200]),
    ("POST", "/org/v1/organizations", [201, 201, 201, 201]),
    ("GET", "/org/v1/organizations/{org}", [200, 200, 200, 404]),
    ("PATCH", "/org/v1/organizations/{org}", [200, 403, 403, 404]),
    (
        "GET",
        "/org/v1/organizations/{org}/members",
        [200, 200, 403, 404],
    ),
    (
        "PATCH",
        "/org/v1/organizations/{org}/members/{user}",
        [200, 403, 403, 404],
    ),
    (
        "DELETE",
        "/org/v1/organizations/{org}/members/{user}",
        [204, 403, 403, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/invitations",
        [200, 403, 403, 404],
    ),
    (
        "POST",
        "/org/v1/organizations/{org}/invitations",
        [201, 403, 403, 404],
    ),
    (
        "DELETE",
        "/org/v1/organizations/{org}/invitations/{invitation}",
        [204, 403, 403, 404],
    ),
    // A member the organization manages (their address in a domain it proved).
    (
        "DELETE",
        "/org/v1/organizations/{org}/members/{user}/sessions",
        [200, 403, 403, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/sso",
        [200, 403, 403, 404],
    ),
    // The admin passes authorization; the issuer given cannot be reached.
    (
        "PUT",
        "/org/v1/organizations/{org}/sso",
        [422, 403, 403, 404],
    ),
    (
        "DELETE",
        "/org/v1/organizations/{org}/sso",
        [204, 403, 403, 404],
    ),
    // A domain proven before: nothing to look up.
    (
        "POST",
        "/org/v1/organizations/{org}/sso/domains/{domain}/verify",
        [200, 403, 403, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/policy",
        [200, 200, 200, 404],
    ),
    (
        "PUT",
        "/org/v1/organizations/{org}/policy",
        [200, 403, 403, 404],
    ),
    // An invitation addressed to the caller: those already in the organization are told so.
    ("POST", "/org/v1/invitations/accept", [409, 409, 409, 200]),
    (
        "GET",
        "/org/v1/organizations/{org}/teams",
        [200, 200, 200, 404],
    ),
    (
        "POST",
        "/org/v1/organizations/{org}/teams",
        [201, 201, 403, 404],
    ),
    // A team the guest is not in: guests see only their own teams.
    (
        "GET",
        "/org/v1/organizations/{org}/teams/{team}",
        [200, 200, 404, 404],
    ),
    // A team someone else made: only admins manage it (its creator would too), and a
    // guest does not see a team they are not in.
    (
        "DELETE",
        "/org/v1/organizations/{org}/teams/{team}",
        [204, 403, 403, 404],
    ),
    (
        "PUT",
        "/org/v1/organizations/{org}/teams/{team}/members/{user}",
        [204, 403, 403, 404],
    ),
    (
        "DELETE",
        "/org/v1/organizations/{org}/teams/{team}/members/{user}",
        [204, 403, 404, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/projects",
        [200, 200, 200, 404],
    ),
    (
        "POST",
        "/org/v1/organizations/{org}/projects",
        [201, 201, 403, 404],
    ),
    // A project of the admin's, shared with nobody: members see it, guests do not.
    (
        "GET",
        "/org/v1/organizations/{org}/projects/{project}",
        [200, 200, 404, 404],
    ),
    (
        "PATCH",
        "/org/v1/organizations/{org}/projects/{project}",
        [200, 403, 404, 404],
    ),
    (
        "PUT",
        "/org/v1/organizations/{org}/projects/{project}/shares",
        [204, 403, 404, 404],
    ),
    (
        "DELETE",
        "/org/v1/organizations/{org}/projects/{project}/shares/{grantee_type}/{grantee}",
        [204, 403, 404, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/printers",
        [200, 200, 200, 404],
    ),
    // The printer is shared with the member and the guest.
    (
        "GET",
        "/org/v1/organizations/{org}/printers/{printer}",
        [200, 200, 200, 404],
    ),
    // Unpairing: admins, or the person who claimed it (the admin, here).
    (
        "DELETE",
        "/org/v1/organizations/{org}/printers/{printer}",
        [204, 403, 403, 404],
    ),
    (
        "PUT",
        "/org/v1/organizations/{org}/printers/{printer}/shares",
        [204, 204, 403, 404],
    ),
    (
        "DELETE",
        "/org/v1/organizations/{org}/printers/{printer}/shares/{grantee_type}/{grantee}",
        [204, 204, 403, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/printers/{printer}/security",
        [200, 403, 403, 404],
    ),
    (
        "PUT",
        "/org/v1/organizations/{org}/printers/{printer}/security",
        [200, 403, 403, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/audit-events",
        [200, 403, 403, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/audit-events/verify",
        [200, 403, 403, 404],
    ),
    (
        "GET",
        "/org/v1/organizations/{org}/audit-events/export",
        [200, 403, 403, 404],
    ),
];

struct Caller<'a> {
    name: &'static str,
    token: Option<&'a str>,
    email: Option<&'a str>,
}

/// Makes the concrete request for `template` with fresh objects of the organization,
/// so that one caller's success does not change what the next one meets.
async fn prepare(
    app: &TestApp,
    w: &OrgWorld,
    printer: Uuid,
    method: &str,
    template: &str,
    caller: &Caller<'_>,
) -> (String, Option<Value>) {
    let org = w.org;
    let now = app.now();
    let fresh_team = || async {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO teams (id, organization_id, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(org)
        .bind(format!("team {id}"))
        .bind(now)
        .execute(&app.db)
        .await
        .unwrap();
        id
    };
    let fresh_member = |role: &'static str| async move {
        let id = app.insert_person("target").await;
        app.add_member_id(org, id, role).await;
        id
    };
    let fresh_project = || async {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO projects (id, organization_id, name, owner_id, created_at, updated_at)
             VALUES ($1, $2, 'Gears', $3, $4, $4)",
        )
        .bind(id)
        .bind(org)
        .bind(w.admin.id)
        .bind(now)
        .execute(&app.db)
        .await
        .unwrap();
        id
    };
    // An identity provider with a proven domain (its secret sealed by nobody: these
    // routes never open it).
    let provider = || async {
        sqlx::query(
            "INSERT INTO org_identity_providers (organization_id, issuer, client_id,
                 client_secret_sealed, default_role, enforced, created_at, updated_at)
             VALUES ($1, 'https://idp.example.com', 'printworks', '\\x00', 'member', false, $2, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .bind(now)
        .execute(&app.db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO org_sso_domains (organization_id, domain, challenge, created_at, verified_at)
             VALUES ($1, 'fablab.example.com', 'c', $2, $2) ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .bind(now)
        .execute(&app.db)
        .await
        .unwrap();
    };
    let t = template;
    let path = |s: &str| s.replace("{org}", &org.to_string());
    match (method, t) {
        ("POST", "/org/v1/organizations") => (path(t), Some(json!({"name": "New Lab"}))),
        ("PATCH", "/org/v1/organizations/{org}") => (path(t), Some(json!({"name": "Renamed Lab"}))),
        ("PATCH", "/org/v1/organizations/{org}/members/{user}") => {
            let user = fresh_member("guest").await;
            (
                path(t).replace("{user}", &user.to_string()),
                Some(json!({"role": "member"})),
            )
        }
        ("DELETE", "/org/v1/organizations/{org}/members/{user}") => {
            let user = fresh_member("guest").await;
            (path(t).replace("{user}", &user.to_string()), None)
        }
        ("DELETE", "/org/v1/organizations/{org}/members/{user}/sessions") => {
            provider().await;
            let user = fresh_member("member").await;
            sqlx::query("UPDATE users SET email = $2 WHERE id = $1")
                .bind(user)
                .bind(format!("{user}@fablab.example.com"))
                .execute(&app.db)
                .await
                .unwrap();
            (path(t).replace("{user}", &user.to_string()), None)
        }
        ("GET" | "DELETE", "/org/v1/organizations/{org}/sso") => {
            provider().await;
            (path(t), None)
        }
        ("PUT", "/org/v1/organizations/{org}/sso") => (
            path(t),
            Some(json!({
                "issuer": "http://127.0.0.1:1", "client_id": "printworks", "client_secret": "s",
                "domains": ["fablab.example.com"], "default_role": "member", "enforced": false,
            })),
        ),
        ("POST", "/org/v1/organizations/{org}/sso/domains/{domain}/verify") => {
            provider().await;
            (path(t).replace("{domain}", "fablab.example.com"), None)
        }
        ("PUT", "/org/v1/organizations/{org}/policy") => (
            path(t),
            Some(
                json!({"require_mfa": false, "max_session_age": null, "allowed_auth": "both", "notice": null}),
            ),
        ),
        ("POST", "/org/v1/organizations/{org}/invitations") => (
            path(t),
            Some(json!({"email": format!("{}@example.com", Uuid::new_v4()), "role": "member"})),
        ),
        ("DELETE", "/org/v1/organizations/{org}/invitations/{invitation}") => {
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO invitations (id, organization_id, email, role, token_hash, created_at, expires_at)
                 VALUES ($1, $2, 'someone@example.com', 'member', $3, $4, $4 + interval '1 day')",
            )
            .bind(id)
            .bind(org)
            .bind(id.as_bytes().to_vec())
            .bind(now)
            .execute(&app.db)
            .await
            .unwrap();
            (path(t).replace("{invitation}", &id.to_string()), None)
        }
        ("POST", "/org/v1/invitations/accept") => {
            let token = Uuid::new_v4().to_string();
            let email = caller.email.unwrap_or("nobody@example.com");
            sqlx::query(
                "INSERT INTO invitations (id, organization_id, email, role, token_hash, created_at, expires_at)
                 VALUES ($1, $2, $3, 'member', $4, $5, $5 + interval '1 day')",
            )
            .bind(Uuid::new_v4())
            .bind(org)
            .bind(email)
            .bind(printworks_common::crypto::token_digest(&token))
            .bind(now)
            .execute(&app.db)
            .await
            .unwrap();
            (path(t), Some(json!({"token": token})))
        }
        ("POST", "/org/v1/organizations/{org}/teams") => (
            path(t),
            Some(json!({"name": format!("Team {}", Uuid::new_v4())})),
        ),
        ("GET" | "DELETE", "/org/v1/organizations/{org}/teams/{team}") => {
            let team = fresh_team().await;
            (path(t).replace("{team}", &team.to_string()), None)
        }
        (_, "/org/v1/organizations/{org}/teams/{team}/members/{user}") => {
            let team = fresh_team().await;
            let user = fresh_member("member").await;
            if method == "DELETE" {
                sqlx::query(
                    "INSERT INTO team_members (team_id, user_id, added_at) VALUES ($1, $2, $3)",
                )
                .bind(team)
                .bind(user)
                .bind(now)
                .execute(&app.db)
                .await
                .unwrap();
            }
            let p = path(t)
                .replace("{team}", &team.to_string())
                .replace("{user}", &user.to_string());
            (p, None)
        }
        ("POST", "/org/v1/organizations/{org}/projects") => (
            path(t),
            Some(json!({"name": "Brackets", "description": "M3 brackets"})),
        ),
        (_, "/org/v1/organizations/{org}/projects/{project}") => {
            let project = fresh_project().await;
            let body = (method == "PATCH").then(|| json!({"name": "Gears v2"}));
            (path(t).replace("{project}", &project.to_string()), body)
        }
        ("PUT", "/org/v1/organizations/{org}/projects/{project}/shares") => {
            let project = fresh_project().await;
            let body =
                json!({"grantee_type": "user", "grantee_id": w.member.id, "permission": "view"});
            (
                path(t).replace("{project}", &project.to_string()),
                Some(body),
            )
        }
        (
            "DELETE",
            "/org/v1/organizations/{org}/projects/{project}/shares/{grantee_type}/{grantee}",
        ) => {
            let project = fresh_project().await;
            let team = fresh_team().await;
            sqlx::query(
                "INSERT INTO project_shares (project_id, grantee_type, grantee_id, permission, created_at)
                 VALUES ($1, 'team', $2, 'view', $3)",
            )
            .bind(project)
            .bind(team)
            .bind(now)
            .execute(&app.db)
            .await
            .unwrap();
            let p = path(t)
                .replace("{project}", &project.to_string())
                .replace("{grantee_type}", "team")
                .replace("{grantee}", &team.to_string());
            (p, None)
        }
        ("PUT", "/org/v1/organizations/{org}/printers/{printer}/shares") => {
            let team = fresh_team().await;
            let body = json!({"grantee_type": "team", "grantee_id": team});
            (
                path(t).replace("{printer}", &printer.to_string()),
                Some(body),
            )
        }
        (
            "DELETE",
            "/org/v1/organizations/{org}/printers/{printer}/shares/{grantee_type}/{grantee}",
        ) => {
            let team = fresh_team().await;
            sqlx::query(
                "INSERT INTO printer_shares (printer_id, grantee_type, grantee_id, created_at)
                 VALUES ($1, 'team', $2, $3)",
            )
            .bind(printer)
            .bind(team)
            .bind(now)
            .execute(&app.db)
            .await
            .unwrap();
            let p = path(t)
                .replace("{printer}", &printer.to_string())
                .replace("{grantee_type}", "team")
                .replace("{grantee}", &team.to_string());
            (p, None)
        }
        ("DELETE", "/org/v1/organizations/{org}/printers/{printer}") => {
            let fresh = app.register_printer(org, w.admin.id, "To unpair").await;
            for user in [w.member.id, w.guest.id] {
                sqlx::query(
                    "INSERT INTO printer_shares (printer_id, grantee_type, grantee_id, created_at)
                     VALUES ($1, 'user', $2, $3)",
                )
                .bind(fresh)
                .bind(user)
                .bind(now)
                .execute(&app.db)
                .await
                .unwrap();
            }
            (path(t).replace("{printer}", &fresh.to_string()), None)
        }
        ("PUT", "/org/v1/organizations/{org}/printers/{printer}/security") => (
            path(t).replace("{printer}", &printer.to_string()),
            Some(json!({"firewall_enabled": true, "pin": "204817"})),
        ),
        ("GET", _) => (path(t).replace("{printer}", &printer.to_string()), None),
        _ => panic!("{method} {template}: no way to prepare this route in the table test"),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_org_route_against_every_caller(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let printer = app
        .register_printer(w.org, w.admin.id, "Ultimaker S5")
        .await;
    app.share_printer(printer, &[w.member.id, w.guest.id]).await;
    let no_scope = app.access_token(&w.admin, "openid profile").await;

    // Every route has a row, and every row is a route. (The org service's routes for
    // Cura's Digital Library, outside /org/, are in `routes::OTHER_SERVICES`.)
    let routes: Vec<(String, String)> = printworks_org::routes()
        .specs()
        .into_iter()
        .filter(|r| r.access.scope().is_some() && r.path.starts_with("/org/"))
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    for (m, p) in &routes {
        assert!(
            TABLE.iter().any(|(tm, tp, _)| tm == m && tp == p),
            "{m} {p} has no row in the authorization table"
        );
    }
    assert_eq!(
        TABLE.len(),
        routes.len(),
        "the table has rows for routes that do not exist"
    );

    let mut failures = Vec::new();
    for (method, template, expected) in TABLE {
        let callers = [
            (
                Caller {
                    name: "anonymous",
                    token: None,
                    email: None,
                },
                401,
            ),
            (
                Caller {
                    name: "no scope",
                    token: Some(&no_scope),
                    email: Some(&w.admin.email),
                },
                403,
            ),
            (
                Caller {
                    name: "outsider",
                    token: Some(&w.outsider_token),
                    email: Some(&w.outsider.email),
                },
                expected[3],
            ),
            (
                Caller {
                    name: "guest",
                    token: Some(&w.guest_token),
                    email: Some(&w.guest.email),
                },
                expected[2],
            ),
            (
                Caller {
                    name: "member",
                    token: Some(&w.member_token),
                    email: Some(&w.member.email),
                },
                expected[1],
            ),
            (
                Caller {
                    name: "admin",
                    token: Some(&w.admin_token),
                    email: Some(&w.admin.email),
                },
                expected[0],
            ),
        ];
        for (caller, want) in callers {
            let (path, body) = prepare(&app, &w, printer, method, template, &caller).await;
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let res = app
                .call(method.clone(), &path, caller.token, body.as_ref())
                .await;
            if res.status.as_u16() != want {
                failures.push(format!(
                    "{method} {template} as {}: expected {want}, got {} {}",
                    caller.name, res.status, res.body
                ));
            }
            if *template == "/org/v1/invitations/accept" && caller.name == "outsider" {
                // They joined; later rows expect them outside again.
                sqlx::query(
                    "DELETE FROM organization_members WHERE organization_id = $1 AND user_id = $2",
                )
                .bind(w.org)
                .bind(w.outsider.id)
                .execute(&app.db)
                .await
                .unwrap();
            }
            if want == 403 && caller.name == "no scope" {
                assert_eq!(
                    res.body["type"],
                    "urn:printworks:problem:insufficient-scope"
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An automated client (`client_credentials`) acts inside its own organization with the
/// role its admin chose for it — nothing more, nowhere else — and is audited as itself.
#[sqlx::test(migrator = "MIGRATOR")]
async fn automated_clients_act_with_the_role_their_admin_chose(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let res = w
        .admin
        .browser
        .post(app.url("/account/v1/clients"))
        .json(&json!({
            "organization_id": w.org,
            "name": "Fleet scheduler",
            "type": "confidential",
            "scopes": ["organization.read", "organization.write", "printer.read", "audit.read"],
            "grant_types": ["client_credentials"],
            "role": "member",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    let c: Value = res.json().await.unwrap();
    let (id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    let t: Value = app
        .client_credentials(id, secret)
        .await
        .json()
        .await
        .unwrap();
    let token = Some(t["access_token"].as_str().unwrap());
    let org = w.org;

    let team = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{org}/teams"),
            token,
            Some(&json!({"name": "Robots"})),
        )
        .await
        .expect(reqwest::StatusCode::CREATED)
        .id();
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}/members"),
        token,
        None,
    )
    .await
    .expect(reqwest::StatusCode::OK);
    // A member's rights, not an admin's.
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}/audit-events"),
        token,
        None,
    )
    .await
    .expect(reqwest::StatusCode::FORBIDDEN);
    // Its own organization only.
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{}", w.other_org),
        token,
        None,
    )
    .await
    .expect(reqwest::StatusCode::NOT_FOUND);
    // What only a person can do.
    app.call(Method::GET, "/org/v1/organizations", token, None)
        .await
        .expect(reqwest::StatusCode::FORBIDDEN);
    app.call(
        Method::POST,
        &format!("/org/v1/organizations/{org}/projects"),
        token,
        Some(&json!({"name": "P"})),
    )
    .await
    .expect(reqwest::StatusCode::FORBIDDEN);
    let actor: (String, String) =
        sqlx::query_as("SELECT actor_type, actor_id FROM audit_events WHERE action = 'team.create' AND target_id = $1")
            .bind(team.to_string())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(actor, ("client".to_owned(), id.to_owned()));

    // Even with the admin role, a client invites no one: an invitation names the
    // person who sent it.
    sqlx::query("UPDATE oauth_clients SET role = 'admin' WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let refused = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{org}/invitations"),
            token,
            Some(&json!({"email": "someone@example.com", "role": "guest"})),
        )
        .await
        .expect(reqwest::StatusCode::FORBIDDEN);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("needs a person")
    );

    // Demoted to guest by its admin: the next request is a guest's.
    sqlx::query("UPDATE oauth_clients SET role = 'guest' WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.call(
        Method::POST,
        &format!("/org/v1/organizations/{org}/teams"),
        token,
        Some(&json!({"name": "More robots"})),
    )
    .await
    .expect(reqwest::StatusCode::FORBIDDEN);
}
