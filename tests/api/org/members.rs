//! Members and roles: a role change takes effect on the very next request (roles are
//! read from the database, not from tokens); the last admin cannot be demoted, removed
//! or leave, even when two admins demote each other at once; people may leave, and
//! what they held in the organization goes with them.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{OrgWorld, TestApp, TestUser};

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_role_change_takes_effect_on_the_next_request(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let teams = format!("/org/v1/organizations/{org}/teams");
    let invitations = format!("/org/v1/organizations/{org}/invitations");
    let member_path = format!("/org/v1/organizations/{org}/members/{}", w.member.id);
    let token = Some(w.member_token.as_str());

    app.call(Method::POST, &teams, token, Some(&json!({"name": "One"})))
        .await
        .expect(StatusCode::CREATED);
    app.call(Method::GET, &invitations, token, None)
        .await
        .expect(StatusCode::FORBIDDEN);

    // Demoted to guest: the same token can no longer change anything.
    let res = app
        .call(
            Method::PATCH,
            &member_path,
            Some(&w.admin_token),
            Some(&json!({"role": "guest"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(res.body, json!({"user_id": w.member.id, "role": "guest"}));
    app.call(Method::POST, &teams, token, Some(&json!({"name": "Two"})))
        .await
        .expect(StatusCode::FORBIDDEN);

    // Made admin: the same token now administers.
    app.call(
        Method::PATCH,
        &member_path,
        Some(&w.admin_token),
        Some(&json!({"role": "admin"})),
    )
    .await
    .expect(StatusCode::OK);
    app.call(Method::GET, &invitations, token, None)
        .await
        .expect(StatusCode::OK);

    // Removed: the organization is gone for them, at once.
    app.call(Method::DELETE, &member_path, Some(&w.admin_token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}"),
        token,
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    let mine = app
        .call(Method::GET, "/org/v1/organizations", token, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(mine.body["items"], json!([]));

    // Each change is audited once, by the admin.
    let changes: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor_id FROM audit_events WHERE organization_id = $1 AND action LIKE 'member.%' ORDER BY chain_index",
    )
    .bind(org)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let admin = w.admin.id.to_string();
    assert_eq!(
        changes,
        vec![
            ("member.role_change".to_owned(), admin.clone()),
            ("member.role_change".to_owned(), admin.clone()),
            ("member.remove".to_owned(), admin),
        ]
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_last_admin_stays(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let me = format!("/org/v1/organizations/{org}/members/{}", w.admin.id);
    let admin = Some(w.admin_token.as_str());

    for role in ["member", "guest"] {
        let res = app
            .call(Method::PATCH, &me, admin, Some(&json!({ "role": role })))
            .await
            .expect(StatusCode::CONFLICT);
        assert!(res.body["detail"].as_str().unwrap().contains("last admin"));
    }
    // Neither removed nor leaving.
    app.call(Method::DELETE, &me, admin, None)
        .await
        .expect(StatusCode::CONFLICT);
    // Staying an admin is no change.
    app.call(Method::PATCH, &me, admin, Some(&json!({"role": "admin"})))
        .await
        .expect(StatusCode::OK);

    // With a second admin, the first may leave.
    let member_path = format!("/org/v1/organizations/{org}/members/{}", w.member.id);
    app.call(
        Method::PATCH,
        &member_path,
        admin,
        Some(&json!({"role": "admin"})),
    )
    .await
    .expect(StatusCode::OK);
    app.call(Method::DELETE, &me, admin, None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}"),
        admin,
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE organization_id = $1 AND action = 'member.leave' AND actor_id = $2",
    )
    .bind(org)
    .bind(w.admin.id.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(left, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_admins_demoting_each_other_at_once_leave_one_admin(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let admin_path = format!("/org/v1/organizations/{org}/members/{}", w.admin.id);
    let member_path = format!("/org/v1/organizations/{org}/members/{}", w.member.id);
    app.call(
        Method::PATCH,
        &member_path,
        Some(&w.admin_token),
        Some(&json!({"role": "admin"})),
    )
    .await
    .expect(StatusCode::OK);
    for _ in 0..5 {
        let demote = json!({"role": "member"});
        let (a, b) = tokio::join!(
            app.call(
                Method::PATCH,
                &member_path,
                Some(&w.admin_token),
                Some(&demote)
            ),
            app.call(
                Method::PATCH,
                &admin_path,
                Some(&w.member_token),
                Some(&demote)
            ),
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        // Exactly one wins (or, if one ran before the other was an admin, the loser is
        // refused as a non-admin).
        assert!(
            statuses == [StatusCode::OK, StatusCode::FORBIDDEN]
                || statuses == [StatusCode::OK, StatusCode::CONFLICT],
            "{statuses:?}"
        );
        let admins: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM organization_members WHERE organization_id = $1 AND role = 'admin'",
        )
        .bind(org)
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(admins, 1);
        // The winner makes the loser an admin again for the next round.
        let (promote, token) = if a.status == StatusCode::OK {
            (&member_path, &w.admin_token)
        } else {
            (&admin_path, &w.member_token)
        };
        app.call(
            Method::PATCH,
            promote,
            Some(token),
            Some(&json!({"role": "admin"})),
        )
        .await
        .expect(StatusCode::OK);
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn people_may_leave_and_take_their_team_places_and_shares_with_them(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let admin = Some(w.admin_token.as_str());
    let team = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{org}/teams"),
            admin,
            Some(&json!({"name": "Night shift"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::PUT,
        &format!(
            "/org/v1/organizations/{org}/teams/{team}/members/{}",
            w.guest.id
        ),
        admin,
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let printer = app.register_printer(org, w.admin.id, "S5").await;
    app.call(
        Method::PUT,
        &format!("/org/v1/organizations/{org}/printers/{printer}/shares"),
        admin,
        Some(&json!({"grantee_type": "user", "grantee_id": w.guest.id})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);

    // A guest cannot remove others, but can leave.
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{org}/members/{}", w.member.id),
        Some(&w.guest_token),
        None,
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{org}/members/{}", w.guest.id),
        Some(&w.guest_token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);

    let held: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM team_members WHERE user_id = $1)
              + (SELECT count(*) FROM printer_shares WHERE grantee_id = $1)",
    )
    .bind(w.guest.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(held, 0);
    let detail = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{org}/teams/{team}"),
            admin,
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(detail.body["members"], json!([]));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_member_changes_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let admin = Some(w.admin_token.as_str());
    let path = format!("/org/v1/organizations/{org}/members/{}", w.member.id);
    for body in [
        json!({"role": "owner"}),
        json!({"role": ""}),
        json!({"role": "ADMIN"}),
    ] {
        app.call(Method::PATCH, &path, admin, Some(&body))
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    for body in [json!({}), json!({"role": 1}), json!([])] {
        let res = app.call(Method::PATCH, &path, admin, Some(&body)).await;
        assert!(res.status.is_client_error(), "{body}: {}", res.status);
    }
    let unknown = format!(
        "/org/v1/organizations/{org}/members/{}",
        uuid::Uuid::new_v4()
    );
    app.call(
        Method::PATCH,
        &unknown,
        admin,
        Some(&json!({"role": "guest"})),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    app.call(Method::DELETE, &unknown, admin, None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let not_a_uuid = format!("/org/v1/organizations/{org}/members/me");
    app.call(Method::DELETE, &not_a_uuid, admin, None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let role: String = sqlx::query_scalar(
        "SELECT role FROM organization_members WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(org)
    .bind(w.member.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(role, "member");
}

/// Registers a `client_credentials` client in `org` with `user`'s session; returns its
/// id and secret.
async fn register_robot(app: &TestApp, user: &TestUser, org: Uuid) -> (String, String) {
    let res = user
        .browser
        .post(app.url("/account/v1/clients"))
        .json(&json!({
            "organization_id": org,
            "name": "Robot",
            "type": "confidential",
            "scopes": ["printer.read"],
            "grant_types": ["client_credentials"],
            "role": "admin",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let c: serde_json::Value = res.json().await.unwrap();
    (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    )
}

async fn robot_token_status(app: &TestApp, (id, secret): &(String, String)) -> StatusCode {
    app.client_credentials(id, secret).await.status()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_admin_who_is_demoted_removed_or_leaves_takes_their_apps_and_invitations_along(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let admin = Some(w.admin_token.as_str());
    let member_path = format!("/org/v1/organizations/{org}/members/{}", w.member.id);
    let invitations = format!("/org/v1/organizations/{org}/invitations");
    let app = &app;
    let set_role = |role| app.set_role(&w.admin_token, org, w.member.id, role);
    let pending = || async {
        app.call(Method::GET, &invitations, admin, None)
            .await
            .expect(StatusCode::OK)
            .body["items"]
            .as_array()
            .unwrap()
            .len()
    };

    // The admin's own robot is not touched by what happens to the other admin.
    let admins_robot = register_robot(app, &w.admin, org).await;

    // Demoted: their robot and their pending invitation go.
    set_role("admin").await.expect(StatusCode::OK);
    let robot = register_robot(app, &w.member, org).await;
    assert_eq!(robot_token_status(app, &robot).await, StatusCode::OK);
    app.call(
        Method::POST,
        &invitations,
        Some(&w.member_token),
        Some(&json!({"email": "newcomer@example.com", "role": "admin"})),
    )
    .await
    .expect(StatusCode::CREATED);
    assert_eq!(pending().await, 1);
    set_role("member").await.expect(StatusCode::OK);
    assert_eq!(
        robot_token_status(app, &robot).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(pending().await, 0);

    // A change that keeps them an admin withdraws nothing.
    set_role("admin").await.expect(StatusCode::OK);
    let kept = register_robot(app, &w.member, org).await;
    set_role("admin").await.expect(StatusCode::OK);
    assert_eq!(robot_token_status(app, &kept).await, StatusCode::OK);

    // Removed: the same.
    let robot = register_robot(app, &w.member, org).await;
    app.call(Method::DELETE, &member_path, admin, None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(
        robot_token_status(app, &robot).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        robot_token_status(app, &kept).await,
        StatusCode::UNAUTHORIZED
    );

    // Leaving of their own accord: the same.
    app.add_member(org, &w.member, "admin").await;
    let robot = register_robot(app, &w.member, org).await;
    let token = app
        .access_token(&w.member, crate::helpers::ORG_SCOPES)
        .await;
    app.call(Method::DELETE, &member_path, Some(&token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(
        robot_token_status(app, &robot).await,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(robot_token_status(app, &admins_robot).await, StatusCode::OK);
    // Each withdrawal is in the audit log with its reason.
    let withdrawn: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT action, record::jsonb #>> '{details,reason}' FROM audit_events
         WHERE organization_id = $1 AND action IN ('oauth_client.revoke', 'invitation.revoke')
         ORDER BY chain_index",
    )
    .bind(org)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let no_longer = Some("registrar_no_longer_admin".to_owned());
    assert_eq!(
        withdrawn,
        vec![
            ("oauth_client.revoke".to_owned(), no_longer.clone()),
            ("invitation.revoke".to_owned(), no_longer),
            (
                "oauth_client.revoke".to_owned(),
                Some("registrar_removed".to_owned())
            ),
            (
                "oauth_client.revoke".to_owned(),
                Some("registrar_removed".to_owned())
            ),
            (
                "oauth_client.revoke".to_owned(),
                Some("registrar_left".to_owned())
            ),
        ]
    );
}
