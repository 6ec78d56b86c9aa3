//! The audit log: every security-relevant change recorded once, with its actor, in the
//! transaction of the change; append-only in the database; hash-chained so that an
//! edited, removed or reordered record is found by `verify` (the API and `printworks
//! audit verify`) and named; pruned by retention without breaking the chain.

use std::collections::BTreeMap;

use printworks_common::crypto::{hex, hex_decode, sha256};
use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{ConnectOptions as _, PgPool};
use uuid::Uuid;

use crate::helpers::{ORG_SCOPES, OrgWorld, PASSWORD, TestApp};

fn events_path(org: Uuid) -> String {
    format!("/org/v1/organizations/{org}/audit-events")
}

/// `(action, outcome, actor)` → how many times, over every page of the admin's view.
async fn tally(
    app: &TestApp,
    w: &OrgWorld,
    query: &str,
) -> BTreeMap<(String, String, String), usize> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}?limit=7{query}", events_path(w.org));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = app
            .call(Method::GET, &url, Some(&w.admin_token), None)
            .await
            .expect(StatusCode::OK);
        for e in page.body["items"].as_array().unwrap() {
            let actor = match e["actor_id"].as_str() {
                Some(id) => format!("{}:{id}", e["actor_type"].as_str().unwrap()),
                None => e["actor_type"].as_str().unwrap().to_owned(),
            };
            let key = (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                actor,
            );
            *out.entry(key).or_insert(0) += 1;
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn each_change_is_recorded_once_with_its_actor(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    app.clock.advance(time::Duration::seconds(5));
    let since = app.now();
    let admin = Some(w.admin_token.as_str());
    let member = Some(w.member_token.as_str());
    let base = format!("/org/v1/organizations/{org}");

    let newcomer = app.new_user("newcomer").await;
    let invited = app
        .call(
            Method::POST,
            &format!("{base}/invitations"),
            admin,
            Some(&json!({"email": newcomer.email, "role": "member"})),
        )
        .await
        .expect(StatusCode::CREATED);
    let newcomer_token = app.access_token(&newcomer, ORG_SCOPES).await;
    app.call(
        Method::POST,
        "/org/v1/invitations/accept",
        Some(&newcomer_token),
        Some(&json!({"token": invited.body["token"]})),
    )
    .await
    .expect(StatusCode::OK);
    let other = app
        .call(
            Method::POST,
            &format!("{base}/invitations"),
            admin,
            Some(&json!({"email": "later@example.com", "role": "guest"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::DELETE,
        &format!("{base}/invitations/{other}"),
        admin,
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::PATCH,
        &format!("{base}/members/{}", newcomer.id),
        admin,
        Some(&json!({"role": "guest"})),
    )
    .await
    .expect(StatusCode::OK);
    let team = app
        .call(
            Method::POST,
            &format!("{base}/teams"),
            member,
            Some(&json!({"name": "Ops"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::PUT,
        &format!("{base}/teams/{team}/members/{}", w.guest.id),
        member,
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let project = app
        .call(
            Method::POST,
            &format!("{base}/projects"),
            member,
            Some(&json!({"name": "Jigs"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id();
    app.call(
        Method::PUT,
        &format!("{base}/projects/{project}/shares"),
        member,
        Some(&json!({"grantee_type": "team", "grantee_id": team, "permission": "view"})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let printer = app.register_printer(org, w.admin.id, "S5").await;
    app.call(
        Method::PUT,
        &format!("{base}/printers/{printer}/shares"),
        admin,
        Some(&json!({"grantee_type": "team", "grantee_id": team})),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(
        Method::PUT,
        &format!("{base}/printers/{printer}/security"),
        admin,
        Some(&json!({"firewall_enabled": true, "pin": "551923"})),
    )
    .await
    .expect(StatusCode::OK);
    app.call(
        Method::PATCH,
        &base,
        admin,
        Some(&json!({"name": "Fab Lab North"})),
    )
    .await
    .expect(StatusCode::OK);
    app.call(
        Method::DELETE,
        &format!("{base}/members/{}", newcomer.id),
        admin,
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    // A member's sign-ins (and failures) belong to the organization's view too.
    let res = app
        .client
        .post(app.url("/account/v1/sessions"))
        .json(&json!({"email": w.member.email, "password": "wrong horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    app.login(&w.member.email, PASSWORD).await;
    // Refused changes are not changes: nothing recorded.
    app.call(
        Method::POST,
        &format!("{base}/teams"),
        member,
        Some(&json!({"name": "ops"})),
    )
    .await
    .expect(StatusCode::CONFLICT);
    app.call(
        Method::PATCH,
        &base,
        Some(&w.member_token),
        Some(&json!({"name": "Mine"})),
    )
    .await
    .expect(StatusCode::FORBIDDEN);

    let from = since
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let got = tally(&app, &w, &format!("&from={from}")).await;
    let user = |id: Uuid| format!("user:{id}");
    let (a, m, n) = (user(w.admin.id), user(w.member.id), user(newcomer.id));
    let want: BTreeMap<(String, String, String), usize> = [
        ("invitation.create", "success", &a, 2),
        ("invitation.accept", "success", &n, 1),
        ("invitation.revoke", "success", &a, 1),
        ("member.role_change", "success", &a, 1),
        ("team.create", "success", &m, 1),
        ("team.member_add", "success", &m, 1),
        ("project.create", "success", &m, 1),
        ("project.share", "success", &m, 1),
        ("printer.share", "success", &a, 1),
        ("printer.security", "success", &a, 1),
        ("organization.rename", "success", &a, 1),
        ("member.remove", "success", &a, 1),
        ("session.login", "failure", &m, 1),
        ("session.login", "success", &m, 1),
    ]
    .into_iter()
    .map(|(action, outcome, actor, n)| ((action.to_owned(), outcome.to_owned(), actor.clone()), n))
    .collect();
    assert_eq!(got, want);

    // Filters: by actor, by action (exact or a prefix ending in a dot), by time.
    let by_member = tally(
        &app,
        &w,
        &format!("&from={from}&actor=user:{}", w.member.id),
    )
    .await;
    assert!(by_member.keys().all(|(_, _, actor)| *actor == m));
    assert_eq!(by_member.values().sum::<usize>(), 6);
    let teams = tally(&app, &w, "&action=team.").await;
    assert_eq!(teams.values().sum::<usize>(), 2);
    let renames = tally(&app, &w, "&action=organization.rename").await;
    assert_eq!(renames.values().sum::<usize>(), 1);
    let before = tally(&app, &w, &format!("&to={from}")).await;
    assert!(before.contains_key(&("organization.create".into(), "success".into(), a.clone())));
    assert!(!before.keys().any(|(action, _, _)| action == "team.create"));
    for bad in [
        "&actor=root",
        "&actor=user:",
        "&from=yesterday",
        "&limit=1000",
        "&action=",
    ] {
        app.call(
            Method::GET,
            &format!("{}?{}", events_path(org), &bad[1..]),
            admin,
            None,
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    }
    // Each record carries a source address and an RFC 3339 UTC time.
    let page = app
        .call(Method::GET, &events_path(org), admin, None)
        .await
        .expect(StatusCode::OK);
    let first = &page.body["items"][0];
    assert!(first["occurred_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["source_addr"], "127.0.0.1");
}

/// The organization's chain through the API.
async fn verify(app: &TestApp, w: &OrgWorld, org: Uuid) -> Value {
    let token = if org == w.org {
        &w.admin_token
    } else {
        &w.outsider_token
    };
    app.call(
        Method::GET,
        &format!("{}/verify", events_path(org)),
        Some(token),
        None,
    )
    .await
    .expect(StatusCode::OK)
    .body
}

/// Runs SQL as the database superuser with the append-only trigger bypassed: what an
/// attacker with the database's keys could do.
async fn as_superuser(db: &PgPool, sql: &'static str, org: Uuid, index: i64) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sql)
        .bind(org)
        .bind(index)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Runs `printworks audit verify` against the test's database.
fn cli_verify(app: &TestApp) -> (bool, String) {
    cli_verify_with(app, "365d")
}

/// The CLI judges pruning by the real clock and its own retention setting.
fn cli_verify_with(app: &TestApp, retention: &str) -> (bool, String) {
    let url = app.db.connect_options().to_url_lossy().to_string();
    let out = crate::binary::printworks(app.data_dir.path())
        .env("DATABASE_URL", url)
        .env("PRINTWORKS_LOG", "warn")
        .env("PRINTWORKS_AUDIT_RETENTION", retention)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn tampering_by_a_superuser_is_found_and_named(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    for i in 0..6 {
        app.call(
            Method::POST,
            &format!("/org/v1/organizations/{org}/teams"),
            Some(&w.admin_token),
            Some(&json!({"name": format!("T{i}")})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let ok = verify(&app, &w, org).await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["records_checked"], 7);
    let (cli_ok, out) = cli_verify(&app);
    assert!(cli_ok, "{out}");
    assert!(
        out.contains(&format!("chain {org}: ok, 7 records")),
        "{out}"
    );

    // Without the bypass the database itself refuses.
    for sql in [
        "UPDATE audit_events SET outcome = 'failure' WHERE organization_id = $1",
        "DELETE FROM audit_events WHERE organization_id = $1",
        "TRUNCATE audit_events",
    ] {
        let err = sqlx::query(sql)
            .bind(org)
            .execute(&app.db)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }

    // An edited column.
    as_superuser(&app.db, "UPDATE audit_events SET outcome = 'failure' WHERE organization_id = $1 AND chain_index = $2", org, 3).await;
    let v = verify(&app, &w, org).await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_record"]["chain_index"], 3, "{v}");
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("columns"),
        "{v}"
    );
    let (cli_ok, out) = cli_verify(&app);
    assert!(!cli_ok);
    assert!(
        out.contains(&format!("chain {org}: BROKEN at record #3")),
        "{out}"
    );
    as_superuser(&app.db, "UPDATE audit_events SET outcome = 'success' WHERE organization_id = $1 AND chain_index = $2", org, 3).await;
    assert_eq!(verify(&app, &w, org).await["ok"], true);

    // An edited record text.
    as_superuser(
        &app.db,
        "UPDATE audit_events SET record = replace(record, '\"T2\"', '\"T9\"') WHERE organization_id = $1 AND chain_index = $2",
        org,
        4,
    )
    .await;
    let v = verify(&app, &w, org).await;
    assert_eq!(v["first_bad_record"]["chain_index"], 4, "{v}");
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("content"),
        "{v}"
    );
    as_superuser(
        &app.db,
        "UPDATE audit_events SET record = replace(record, '\"T9\"', '\"T2\"') WHERE organization_id = $1 AND chain_index = $2",
        org,
        4,
    )
    .await;
    assert_eq!(verify(&app, &w, org).await["ok"], true);

    // Two records swapped (their indexes exchanged).
    let swap =
        "UPDATE audit_events SET chain_index = CASE WHEN chain_index = $2 THEN $2 + 1 ELSE $2 END
                WHERE organization_id = $1 AND chain_index IN ($2, $2 + 1)";
    as_superuser(
        &app.db,
        "ALTER TABLE audit_events DROP CONSTRAINT audit_events_chain_index_key",
        org,
        0,
    )
    .await;
    as_superuser(&app.db, swap, org, 5).await;
    let v = verify(&app, &w, org).await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_record"]["chain_index"], 5, "{v}");
    as_superuser(&app.db, swap, org, 5).await;
    assert_eq!(verify(&app, &w, org).await["ok"], true);

    // A record removed from the middle, then the newest.
    as_superuser(
        &app.db,
        "DELETE FROM audit_events WHERE organization_id = $1 AND chain_index = $2",
        org,
        7,
    )
    .await;
    let v = verify(&app, &w, org).await;
    assert_eq!(v["first_bad_record"]["chain_index"], 7, "{v}");
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("newest"),
        "{v}"
    );
    as_superuser(
        &app.db,
        "DELETE FROM audit_events WHERE organization_id = $1 AND chain_index = $2",
        org,
        2,
    )
    .await;
    let v = verify(&app, &w, org).await;
    assert_eq!(v["first_bad_record"]["chain_index"], 2, "{v}");
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{v}"
    );

    // The other organization's chain is untouched, and says so.
    let b = verify(&app, &w, w.other_org).await;
    assert_eq!(b["ok"], true, "{b}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failed_audit_write_leaves_no_change(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    // The audit table refuses team.create records for a moment.
    sqlx::query(
        "CREATE FUNCTION refuse_team_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.action = 'team.create' THEN RAISE EXCEPTION 'audit storage failed'; END IF; RETURN NEW; END $$",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER refuse_team_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_team_audit()")
        .execute(&app.db)
        .await
        .unwrap();
    let teams = format!("/org/v1/organizations/{}/teams", w.org);
    let res = app
        .call(
            Method::POST,
            &teams,
            Some(&w.admin_token),
            Some(&json!({"name": "Ghost"})),
        )
        .await
        .expect(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !res.body.to_string().contains("audit storage failed"),
        "no internals leak"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM teams")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0, "the team must not exist without its audit record");
    // And the chain is intact: the failed append left no gap.
    sqlx::query("DROP TRIGGER refuse_team_audit ON audit_events")
        .execute(&app.db)
        .await
        .unwrap();
    app.call(
        Method::POST,
        &teams,
        Some(&w.admin_token),
        Some(&json!({"name": "Real"})),
    )
    .await
    .expect(StatusCode::CREATED);
    assert_eq!(verify(&app, &w, w.org).await["ok"], true);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn retention_prunes_old_records_and_the_chain_still_verifies(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let secrets = printworks_common::crypto::SecretBox::from_settings(
        &crate::helpers::test_settings(app.data_dir.path()),
    )
    .unwrap();
    let teams = format!("/org/v1/organizations/{org}/teams");
    for i in 0..3 {
        app.call(
            Method::POST,
            &teams,
            Some(&w.admin_token),
            Some(&json!({"name": format!("Old {i}")})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    // Signed now (the org's record 4 is the head)...
    printworks_common::audit::integrity::checkpoint(&app.db, &secrets, app.now())
        .await
        .unwrap();
    app.clock.advance(time::Duration::days(300));
    let w = OrgWorld {
        admin_token: app
            .access_token(&app.relogin(&w.admin).await, ORG_SCOPES)
            .await,
        ..w
    };
    for i in 0..2 {
        app.call(
            Method::POST,
            &teams,
            Some(&w.admin_token),
            Some(&json!({"name": format!("New {i}")})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    // ...and 300 days later.
    printworks_common::audit::integrity::checkpoint(&app.db, &secrets, app.now())
        .await
        .unwrap();
    app.clock.advance(time::Duration::days(100));
    // 400 days after the first records, 100 after the newest: the first four go, up to
    // the checkpoint older than the retention period, which stays as the chain's start.
    let year = std::time::Duration::from_secs(365 * 86400);
    let removed = printworks_common::audit::retention::prune(&app.db, app.now(), year)
        .await
        .unwrap();
    assert!(removed >= 4, "{removed}");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT record::json ->> 'action' FROM audit_events WHERE organization_id = $1 ORDER BY chain_index",
    )
    .bind(org)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(left, vec!["team.create", "team.create"]);
    let start: i64 =
        sqlx::query_scalar("SELECT pruned_through_index FROM audit_chains WHERE chain_id = $1")
            .bind(org)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(start, 4);
    // Pruning again removes nothing; every chain still verifies, here and in the CLI.
    assert_eq!(
        printworks_common::audit::retention::prune(&app.db, app.now(), year)
            .await
            .unwrap(),
        0
    );
    let w = OrgWorld {
        admin_token: app
            .access_token(&app.relogin(&w.admin).await, ORG_SCOPES)
            .await,
        ..w
    };
    let v = verify(&app, &w, org).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["records_checked"], 2);
    // The CLI reads the system clock, which the test's clock does not move: with a
    // retention shorter than the time since the test began (the signing of the start
    // checkpoint), that checkpoint counts as old enough, as 400 days did above.
    let (ok, out) = cli_verify_with(&app, "1ms");
    assert!(ok, "{out}");

    // Moving the start forward, to cut recent records away "as retention", is caught:
    // the start must be a checkpoint older than the retention period.
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE chain_id = $1 AND chain_index <= 6")
        .bind(org)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_chains SET pruned_through_index = 6,
                pruned_through_hash = (SELECT hash FROM audit_checkpoints WHERE chain_id = $1 AND chain_index = 6)
         WHERE chain_id = $1",
    )
    .bind(org)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let v = verify(&app, &w, org).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("start was moved"),
        "{v}"
    );
}

/// The head and the checkpoints are part of what is checked: removing either shows.
#[sqlx::test(migrator = "MIGRATOR")]
async fn removing_the_head_or_a_checkpoint_is_reported(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let secrets = printworks_common::crypto::SecretBox::from_settings(
        &crate::helpers::test_settings(app.data_dir.path()),
    )
    .unwrap();
    let teams = format!("/org/v1/organizations/{org}/teams");
    for i in 0..3 {
        app.call(
            Method::POST,
            &teams,
            Some(&w.admin_token),
            Some(&json!({"name": format!("T{i}")})),
        )
        .await
        .expect(StatusCode::CREATED);
        printworks_common::audit::integrity::checkpoint(&app.db, &secrets, app.now())
            .await
            .unwrap();
    }
    assert_eq!(verify(&app, &w, org).await["ok"], true);
    // A checkpoint from the middle.
    as_superuser(
        &app.db,
        "DELETE FROM audit_checkpoints WHERE chain_id = $1 AND chain_index = $2",
        org,
        3,
    )
    .await;
    let v = verify(&app, &w, org).await;
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("checkpoints before this one were removed"),
        "{v}"
    );
    // The head itself.
    as_superuser(
        &app.db,
        "DELETE FROM audit_chains WHERE chain_id = $1 AND $2 = $2",
        org,
        0,
    )
    .await;
    let v = verify(&app, &w, org).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("head is gone"),
        "{v}"
    );
    let (ok, out) = cli_verify(&app);
    assert!(
        !ok && out.contains(&format!("chain {org}: BROKEN")),
        "{out}"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_export_can_be_verified_by_anyone(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    for i in 0..3 {
        app.call(
            Method::POST,
            &format!("/org/v1/organizations/{org}/teams"),
            Some(&w.admin_token),
            Some(&json!({"name": format!("T{i}")})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let res = app
        .client
        .get(app.url(&format!("{}/export", events_path(org))))
        .bearer_auth(&w.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let own: Vec<&Value> = lines
        .iter()
        .filter(|l| l["chain_id"] == json!(org))
        .collect();
    assert_eq!(own.len(), 4);
    let mut prev = hex(&[0u8; 32]);
    for line in own {
        assert_eq!(line["prev_hash"], prev.as_str());
        let mut data = hex_decode(&prev).unwrap();
        data.extend_from_slice(line["record"].as_str().unwrap().as_bytes());
        let hash = hex(&sha256(&data));
        assert_eq!(line["hash"], hash.as_str());
        prev = hash;
    }
}

/// What a superuser could do that hashes alone cannot catch: rewrite a record and
/// recompute every hash after it, and the chain head. The signed checkpoints catch it.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_consistently_rewritten_chain_is_caught_by_its_signed_checkpoints(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let org = w.org;
    let teams = format!("/org/v1/organizations/{org}/teams");
    for i in 0..4 {
        app.call(
            Method::POST,
            &teams,
            Some(&w.admin_token),
            Some(&json!({"name": format!("T{i}")})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    // The head (record 5) is signed; two more records follow it.
    let secrets = printworks_common::crypto::SecretBox::from_settings(
        &crate::helpers::test_settings(app.data_dir.path()),
    )
    .unwrap();
    let made = printworks_common::audit::integrity::checkpoint(&app.db, &secrets, app.now())
        .await
        .unwrap();
    assert!(made >= 1);
    for i in 4..6 {
        app.call(
            Method::POST,
            &teams,
            Some(&w.admin_token),
            Some(&json!({"name": format!("T{i}")})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    assert_eq!(verify(&app, &w, org).await["ok"], true);

    // Record 3 says another team name; every hash from there on is recomputed, and so
    // is the head: the hash chain alone is consistent again.
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT chain_index, record FROM audit_events WHERE chain_id = $1 ORDER BY chain_index",
    )
    .bind(org)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut prev: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM audit_events WHERE chain_id = $1 AND chain_index = 2")
            .bind(org)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    for (index, record) in rows.into_iter().filter(|(i, _)| *i >= 3) {
        let record = if index == 3 {
            record.replace("\"T1\"", "\"Nothing to see\"")
        } else {
            record
        };
        let hash = printworks_common::audit::chain_hash(&prev, &record).to_vec();
        sqlx::query("UPDATE audit_events SET record = $3, prev_hash = $4, hash = $5 WHERE chain_id = $1 AND chain_index = $2")
            .bind(org)
            .bind(index)
            .bind(&record)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_chains SET last_hash = $2 WHERE chain_id = $1")
        .bind(org)
        .bind(&prev)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let v = verify(&app, &w, org).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad_record"]["chain_index"], 5, "{v}");
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("rewritten"),
        "{v}"
    );
    let (cli_ok, out) = cli_verify(&app);
    assert!(!cli_ok, "{out}");

    // Nor can the checkpoint be re-signed without the master key.
    as_superuser(
        &app.db,
        "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit_events WHERE chain_id = $1 AND chain_index = $2) WHERE chain_id = $1 AND chain_index = $2",
        org,
        5,
    )
    .await;
    let v = verify(&app, &w, org).await;
    assert!(
        v["first_bad_record"]["reason"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{v}"
    );
}
