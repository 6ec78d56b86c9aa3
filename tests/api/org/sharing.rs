//! What each role sees and may change: printers (admins all; others what they claimed
//! or what is shared with them or a team of theirs), projects (owners and `edit` shares
//! edit; guests only what they own), teams, and the printer security settings (admins;
//! the PIN six digits, stored only as an Argon2 hash, versioned for the relay).

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{OrgWorld, TestApp};

fn ids(list: &Value) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Uuid::parse_str(i["id"].as_str().unwrap()).unwrap())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn printers_are_seen_by_admins_claimers_and_those_they_are_shared_with(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let admins = app.register_printer(org, w.admin.id, "admin's").await;
    let members = app.register_printer(org, w.member.id, "member's").await;
    let via_team = app.register_printer(org, w.admin.id, "team's").await;
    let to_guest = app.register_printer(org, w.admin.id, "guest's").await;
    let member = Some(w.member_token.as_str());
    let list = format!("/org/v1/organizations/{org}/printers");

    let seen = |token: &str| {
        let list = list.clone();
        let app = &app;
        let token = token.to_owned();
        async move {
            ids(&app
                .call(Method::GET, &list, Some(&token), None)
                .await
                .expect(StatusCode::OK)
                .body)
        }
    };
    assert_eq!(
        seen(&w.admin_token).await,
        sorted(vec![admins, members, via_team, to_guest])
    );
    assert_eq!(seen(&w.member_token).await, vec![members]);
    assert_eq!(seen(&w.guest_token).await, Vec::<Uuid>::new());

    // The member shares their printer with the guest; a team gets another.
    let team = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{org}/teams"),
            member,
            Some(&json!({"name": "Makers"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    for user in [w.member.id, w.guest.id] {
        app.call(
            Method::PUT,
            &format!("/org/v1/organizations/{org}/teams/{team}/members/{user}"),
            member,
            None,
        )
        .await
        .expect(StatusCode::NO_CONTENT);
    }
    let share = |printer: Uuid, token: &str, body: Value| {
        let app = &app;
        let token = token.to_owned();
        async move {
            app.call(
                Method::PUT,
                &format!("/org/v1/organizations/{org}/printers/{printer}/shares"),
                Some(&token),
                Some(&body),
            )
            .await
        }
    };
    share(
        via_team,
        &w.admin_token,
        json!({"grantee_type": "team", "grantee_id": team}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    share(
        to_guest,
        &w.admin_token,
        json!({"grantee_type": "user", "grantee_id": w.guest.id}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    // Sharing twice is no change (and no second audit record).
    share(
        to_guest,
        &w.admin_token,
        json!({"grantee_type": "user", "grantee_id": w.guest.id}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    assert_eq!(seen(&w.member_token).await, sorted(vec![members, via_team]));
    assert_eq!(seen(&w.guest_token).await, sorted(vec![via_team, to_guest]));
    // Members cannot share printers they cannot see; guests cannot share at all.
    share(
        admins,
        &w.member_token,
        json!({"grantee_type": "user", "grantee_id": w.member.id}),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    share(
        to_guest,
        &w.guest_token,
        json!({"grantee_type": "user", "grantee_id": w.member.id}),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    // Bad grantees.
    for body in [
        json!({"grantee_type": "group", "grantee_id": team}),
        json!({"grantee_type": "user", "grantee_id": Uuid::new_v4()}),
        json!({"grantee_type": "team", "grantee_id": Uuid::new_v4()}),
    ] {
        share(members, &w.member_token, body)
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    let shares: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE organization_id = $1 AND action = 'printer.share'",
    )
    .bind(org)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(shares, 2);

    // Leaving the team takes the team's printers away; deleting the share, the other.
    app.call(
        Method::DELETE,
        &format!(
            "/org/v1/organizations/{org}/teams/{team}/members/{}",
            w.guest.id
        ),
        member,
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::DELETE,
        &format!(
            "/org/v1/organizations/{org}/printers/{to_guest}/shares/user/{}",
            w.guest.id
        ),
        Some(&w.admin_token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    assert_eq!(seen(&w.guest_token).await, Vec::<Uuid>::new());
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{org}/printers/{to_guest}"),
        Some(&w.guest_token),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn projects_are_edited_by_owners_and_edit_shares_and_guests_touch_only_their_own(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let projects = format!("/org/v1/organizations/{org}/projects");
    let create = |token: &str, name: &str| {
        let app = &app;
        let projects = projects.clone();
        let token = token.to_owned();
        let body = json!({"name": name, "description": "line one\nline two"});
        async move {
            app.call(Method::POST, &projects, Some(&token), Some(&body))
                .await
        }
    };
    let admins = create(&w.admin_token, "Admin's")
        .await
        .expect(StatusCode::CREATED)
        .id();
    let members = create(&w.member_token, "Member's")
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(members.body["owner_id"], json!(w.member.id));
    assert_eq!(members.body["access"], "edit");
    let members = members.id();
    create(&w.guest_token, "Guest's")
        .await
        .expect(StatusCode::FORBIDDEN);

    let path = |p: Uuid| format!("{projects}/{p}");
    let patch = |token: &str, p: Uuid| {
        let app = &app;
        let url = path(p);
        let token = token.to_owned();
        async move {
            app.call(
                Method::PATCH,
                &url,
                Some(&token),
                Some(&json!({"name": "Renamed"})),
            )
            .await
        }
    };
    // Members see every project; they edit their own, not others' until shared to edit.
    let seen = app
        .call(Method::GET, &projects, Some(&w.member_token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&seen.body), sorted(vec![admins, members]));
    patch(&w.member_token, admins)
        .await
        .expect(StatusCode::FORBIDDEN);
    patch(&w.member_token, members).await.expect(StatusCode::OK);
    patch(&w.admin_token, members).await.expect(StatusCode::OK);

    let share = |token: &str, p: Uuid, body: Value| {
        let app = &app;
        let url = format!("{}/shares", path(p));
        let token = token.to_owned();
        async move { app.call(Method::PUT, &url, Some(&token), Some(&body)).await }
    };
    share(
        &w.admin_token,
        admins,
        json!({"grantee_type": "user", "grantee_id": w.member.id, "permission": "edit"}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    patch(&w.member_token, admins).await.expect(StatusCode::OK);

    // Guests see only what is shared with them, and even an edit share lets them only look.
    let seen = app
        .call(Method::GET, &projects, Some(&w.guest_token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(seen.body["items"], json!([]));
    share(
        &w.member_token,
        members,
        json!({"grantee_type": "user", "grantee_id": w.guest.id, "permission": "edit"}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let detail = app
        .call(Method::GET, &path(members), Some(&w.guest_token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(detail.body["access"], "view");
    patch(&w.guest_token, members)
        .await
        .expect(StatusCode::FORBIDDEN);
    share(
        &w.guest_token,
        members,
        json!({"grantee_type": "user", "grantee_id": w.admin.id, "permission": "view"}),
    )
    .await
    .expect(StatusCode::FORBIDDEN);

    // A guest who owns a project (made while a member) still edits and shares it.
    app.set_role(&w.admin_token, org, w.member.id, "guest")
        .await
        .expect(StatusCode::OK);
    patch(&w.member_token, members).await.expect(StatusCode::OK);
    share(
        &w.member_token,
        members,
        json!({"grantee_type": "user", "grantee_id": w.admin.id, "permission": "view"}),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    // The admin's project, shared with them at `edit`, is now only theirs to look at.
    let detail = app
        .call(Method::GET, &path(admins), Some(&w.member_token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(detail.body["access"], "view");
    patch(&w.member_token, admins)
        .await
        .expect(StatusCode::FORBIDDEN);

    // Bad inputs.
    for body in [
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "ok", "description": "y".repeat(2001)}),
        json!({"name": "bell\u{7}"}),
    ] {
        app.call(Method::POST, &projects, Some(&w.admin_token), Some(&body))
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    share(
        &w.admin_token,
        admins,
        json!({"grantee_type": "user", "grantee_id": w.guest.id, "permission": "own"}),
    )
    .await
    .expect(StatusCode::UNPROCESSABLE_ENTITY);
    let unshare = format!("{}/shares/user/{}", path(admins), Uuid::new_v4());
    app.call(Method::DELETE, &unshare, Some(&w.admin_token), None)
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn teams_are_listed_in_pages_and_guests_see_only_their_own(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let teams = format!("/org/v1/organizations/{org}/teams");
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(
            app.call(
                Method::POST,
                &teams,
                Some(&w.member_token),
                Some(&json!({"name": format!("Team {i}")})),
            )
            .await
            .expect(StatusCode::CREATED)
            .id(),
        );
        app.clock.advance(time::Duration::seconds(1));
    }
    // Names are unique regardless of case.
    app.call(
        Method::POST,
        &teams,
        Some(&w.admin_token),
        Some(&json!({"name": "TEAM 0"})),
    )
    .await
    .expect(StatusCode::CONFLICT);

    // Two at a time, newest first, until the cursor runs out.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{teams}?limit=2&cursor={c}"),
            None => format!("{teams}?limit=2"),
        };
        let page = app
            .call(Method::GET, &url, Some(&w.admin_token), None)
            .await
            .expect(StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|t| Uuid::parse_str(t["id"].as_str().unwrap()).unwrap()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    made.reverse();
    assert_eq!(seen, made);
    for bad in ["?limit=0", "?limit=101", "?limit=x", "?cursor=garbage"] {
        app.call(
            Method::GET,
            &format!("{teams}{bad}"),
            Some(&w.admin_token),
            None,
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    }

    // A guest sees the teams they are in, nothing more.
    let guest = Some(w.guest_token.as_str());
    let list = app
        .call(Method::GET, &teams, guest, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(list.body["items"], json!([]));
    app.call(
        Method::PUT,
        &format!("{teams}/{}/members/{}", made[0], w.guest.id),
        Some(&w.member_token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let list = app
        .call(Method::GET, &teams, guest, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&list.body), vec![made[0]]);
    let detail = app
        .call(Method::GET, &format!("{teams}/{}", made[0]), guest, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(detail.body["members"][0]["id"], json!(w.guest.id));
    assert_eq!(detail.body["member_count"], 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn printer_security_settings_are_admin_only_hashed_and_versioned(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let printer = app.register_printer(org, w.member.id, "S7").await;
    let path = format!("/org/v1/organizations/{org}/printers/{printer}/security");
    let admin = Some(w.admin_token.as_str());

    let never = app
        .call(Method::GET, &path, admin, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(never.body["version"], 0);
    assert_eq!(never.body["firewall_enabled"], false);
    assert_eq!(never.body["pin_set"], false);

    // The claimer of the printer is a member, not an admin: refused.
    app.call(
        Method::PUT,
        &path,
        Some(&w.member_token),
        Some(&json!({"firewall_enabled": true, "pin": "123456"})),
    )
    .await
    .expect(StatusCode::FORBIDDEN);

    let set = app
        .call(
            Method::PUT,
            &path,
            admin,
            Some(&json!({"firewall_enabled": true, "pin": "049213"})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (set.body["version"].clone(), set.body["pin_set"].clone()),
        (json!(1), json!(true))
    );
    assert!(!set.body.to_string().contains("049213"));
    let hash: String =
        sqlx::query_scalar("SELECT pin_hash FROM printer_security WHERE printer_id = $1")
            .bind(printer)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("049213"));

    for bad in [
        json!({"firewall_enabled": true, "pin": "12345"}),
        json!({"firewall_enabled": true, "pin": "1234567"}),
        json!({"firewall_enabled": true, "pin": "12a456"}),
        json!({"firewall_enabled": true, "pin": "１２３４５６"}),
        json!({"firewall_enabled": true, "pin": 123456}),
        json!({"firewall_enabled": true}),
        json!({"pin": null}),
        json!({"firewall_enabled": "yes", "pin": null}),
    ] {
        app.call(Method::PUT, &path, admin, Some(&bad))
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }

    // `pin: null` clears it; every change is a new version.
    let cleared = app
        .call(
            Method::PUT,
            &path,
            admin,
            Some(&json!({"firewall_enabled": false, "pin": null})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(cleared.body["version"], 2);
    assert_eq!(cleared.body["pin_set"], false);
    assert_eq!(cleared.body["confirmed_version"], Value::Null);

    // The printer confirms what it applied (the relay records it); stale versions are
    // ignored.
    use printworks_org::fleet::{Confirmation, confirm_security};
    assert_eq!(
        confirm_security(&app.db, printer, 1, &[], app.now())
            .await
            .unwrap(),
        Confirmation::NotCurrent(Some(2))
    );
    assert_eq!(
        confirm_security(&app.db, printer, 2, &[], app.now())
            .await
            .unwrap(),
        Confirmation::Confirmed
    );
    assert_eq!(
        confirm_security(&app.db, printer, 2, &[], app.now())
            .await
            .unwrap(),
        Confirmation::AlreadyConfirmed
    );
    let now = app
        .call(Method::GET, &path, admin, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(now.body["confirmed_version"], 2);

    let audited: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor_type FROM audit_events WHERE organization_id = $1 AND action LIKE 'printer.security%' ORDER BY chain_index",
    )
    .bind(org)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        audited,
        vec![
            ("printer.security".into(), "user".into()),
            ("printer.security".into(), "user".into()),
            ("printer.security_confirmed".into(), "printer".into()),
        ]
    );
}
