//! Everyone's resources: metric labels a stranger cannot multiply, teams only their
//! managers fill, a revoked invitation's e-mail withdrawn, audit pruning that does not
//! hold a chain's head, and team additions that cannot race a removal.

use std::time::Duration;

use printworks::ServiceSet;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::{Connection as _, PgPool};

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, test_settings};

#[sqlx::test(migrator = "MIGRATOR")]
async fn made_up_http_methods_cannot_grow_the_metrics(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for i in 0..30 {
        let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        app.client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("BREW"), "made-up methods became labels");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("printworks_http_requests_total{"))
        .count();
    assert!(series < 10, "{series} request series");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_member_cannot_join_a_team_they_do_not_manage_to_inherit_its_shares(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, ALL_SCOPES).await;
    let member = app.access_token(&w.member, ALL_SCOPES).await;
    let printer = app.pair_printer(&admin, w.org, "SN-TEAM").await;
    let team = app.create_team(w.org, &admin, "Night shift").await;
    app.call(
        Method::PUT,
        &format!(
            "/org/v1/organizations/{}/printers/{}/shares",
            w.org, printer.id
        ),
        Some(&admin),
        Some(&json!({"grantee_type": "team", "grantee_id": team})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let join = format!(
        "/org/v1/organizations/{}/teams/{team}/members/{}",
        w.org, w.member.id
    );
    let refused = app
        .call(Method::PUT, &join, Some(&member), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(refused.body["type"], "urn:printworks:problem:forbidden");
    // The printer shared with the team stays out of the member's reach.
    app.call(
        Method::GET,
        &format!("/org/v1/organizations/{}/printers/{}", w.org, printer.id),
        Some(&member),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    // The admin adds them; they may leave by themselves.
    app.call(Method::PUT, &join, Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::DELETE, &join, Some(&member), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    // A team a member made, they manage.
    let own = app.create_team(w.org, &member, "Members' own").await;
    app.call(
        Method::PUT,
        &format!(
            "/org/v1/organizations/{}/teams/{own}/members/{}",
            w.org, w.guest.id
        ),
        Some(&member),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
}

async fn outbox_state(app: &TestApp, topic: &str) -> (bool, bool, bool) {
    sqlx::query_as(
        "SELECT sent_at IS NOT NULL, gave_up_at IS NOT NULL, body_sealed IS NOT NULL
         FROM email_outbox WHERE topic = $1",
    )
    .bind(topic)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_revoked_invitation_is_not_mailed(pool: PgPool) {
    // A mail server that refuses: messages wait in the outbox.
    let app = TestApp::spawn_with(pool, &ServiceSet::all(), |s| {
        s.org.smtp_url = Some(secrecy::SecretString::from("smtp://127.0.0.1:9"));
    })
    .await;
    let w = OrgWorld::new(&app).await;
    let first = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{}/invitations", w.org),
            Some(&w.admin_token),
            Some(&json!({"email": "first@example.com", "role": "member"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    let topic = format!("invitation:{first}");
    assert_eq!(outbox_state(&app, &topic).await, (false, false, true));
    app.call(
        Method::DELETE,
        &format!("/org/v1/organizations/{}/invitations/{first}", w.org),
        Some(&w.admin_token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    // Withdrawn: given up on, its body (and the token in it) erased.
    assert_eq!(outbox_state(&app, &topic).await, (false, true, false));

    // An admin's invitations are withdrawn when they stop being an admin: their e-mails
    // too.
    let other_admin = app.new_user("second-admin").await;
    app.add_member(w.org, &other_admin, "admin").await;
    let token = app
        .access_token(&other_admin, crate::helpers::ORG_SCOPES)
        .await;
    let second = app
        .call(
            Method::POST,
            &format!("/org/v1/organizations/{}/invitations", w.org),
            Some(&token),
            Some(&json!({"email": "second@example.com", "role": "member"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.set_role(&w.admin_token, w.org, other_admin.id, "member")
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        outbox_state(&app, &format!("invitation:{second}")).await,
        (false, true, false)
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pruning_a_large_audit_backlog_does_not_hold_the_chain_head(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let secrets =
        printworks_common::crypto::SecretBox::from_settings(&test_settings(app.data_dir.path()))
            .unwrap();
    // A backlog of 2500 records in the organization's chain, signed.
    let mut conn = app.db.acquire().await.unwrap();
    for i in 0..2500 {
        AuditEvent::new("test.backlog", Actor::System, Outcome::Success)
            .organization(w.org)
            .detail("n", i)
            .write(&mut conn, app.now())
            .await
            .unwrap();
    }
    drop(conn);
    printworks_common::audit::integrity::checkpoint(&app.db, &secrets, app.now())
        .await
        .unwrap();
    let through: i64 =
        sqlx::query_scalar("SELECT last_index FROM audit_chains WHERE chain_id = $1")
            .bind(w.org)
            .fetch_one(&app.db)
            .await
            .unwrap();
    // A year and a day later, retention prunes it — while something holds one record
    // of the third batch, so the prune stops in the middle.
    app.clock.advance(time::Duration::days(366));
    let options = app.db.connect_options().as_ref().clone();
    let mut holder = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let mut hold = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM audit_events WHERE chain_id = $1 AND chain_index = 2200 FOR UPDATE")
        .bind(w.org)
        .execute(&mut *hold)
        .await
        .unwrap();
    let db = app.db.clone();
    let now = app.now();
    let pruning = tokio::spawn(async move {
        printworks_common::audit::retention::prune(&db, now, Duration::from_secs(365 * 24 * 3600))
            .await
    });
    let mut watch = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM audit_events%'",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the prune never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mid-prune: the head is free (an append goes through at once), earlier batches are
    // gone, and the chain still verifies.
    let mut probe = watch.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM audit_chains WHERE chain_id = $1 FOR UPDATE NOWAIT")
        .bind(w.org)
        .execute(&mut *probe)
        .await
        .expect("the chain's head is not held by the prune");
    probe.rollback().await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE chain_id = $1")
        .bind(w.org)
        .fetch_one(&mut watch)
        .await
        .unwrap();
    assert!(
        left < 2500,
        "{left} left: nothing was pruned before the held record"
    );
    let rule = printworks_common::audit::integrity::RetentionRule {
        now: app.now(),
        retention: Duration::from_secs(365 * 24 * 3600),
    };
    let mid = printworks_common::audit::integrity::verify_chain(&app.db, &secrets, w.org, rule)
        .await
        .unwrap();
    assert!(mid.ok, "{:?}", mid.first_bad_record);
    hold.rollback().await.unwrap();
    let removed = pruning.await.unwrap().unwrap();
    assert!(removed >= u64::try_from(through).unwrap(), "{removed}");
    let (start, older): (i64, i64) = sqlx::query_as(
        "SELECT pruned_through_index,
                (SELECT count(*) FROM audit_events WHERE chain_id = $1 AND chain_index <= $2)
         FROM audit_chains WHERE chain_id = $1",
    )
    .bind(w.org)
    .bind(through)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((start, older), (through, 0));
    let after = printworks_common::audit::integrity::verify_chain(&app.db, &secrets, w.org, rule)
        .await
        .unwrap();
    assert!(after.ok, "{:?}", after.first_bad_record);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn adding_a_team_member_cannot_race_their_removal_from_the_organization(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let team = app.create_team(w.org, &w.admin_token, "Racers").await;
    let leaving = w.member.id;
    // A removal of the member is under way (it holds the organization's lock, as member
    // changes do, and has taken them out, not yet committed)…
    let options = app.db.connect_options().as_ref().clone();
    let mut remover = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let mut removal = remover.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE")
        .bind(w.org)
        .execute(&mut *removal)
        .await
        .unwrap();
    sqlx::query("DELETE FROM organization_members WHERE organization_id = $1 AND user_id = $2")
        .bind(w.org)
        .bind(leaving)
        .execute(&mut *removal)
        .await
        .unwrap();
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(leaving)
        .execute(&mut *removal)
        .await
        .unwrap();
    // …when the admin adds them to the team.
    let url = app.url(&format!(
        "/org/v1/organizations/{}/teams/{team}/members/{leaving}",
        w.org
    ));
    let request = app.client.put(url).bearer_auth(&w.admin_token).send();
    let adding = tokio::spawn(request);
    let mut watch = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting > 0 || adding.is_finished() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    removal.commit().await.unwrap();
    let status = adding.await.unwrap().unwrap().status();
    assert_eq!(status, StatusCode::NOT_FOUND, "the person is gone");
    let in_team: i64 = sqlx::query_scalar("SELECT count(*) FROM team_members WHERE user_id = $1")
        .bind(leaving)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        in_team, 0,
        "someone outside the organization is in its team"
    );
}
