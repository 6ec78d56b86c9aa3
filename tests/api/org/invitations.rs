//! Invitations: the token shown once and stored hashed, e-mailed through the outbox,
//! accepted once, only by the person it names, before it expires, unless revoked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use printworks_account::BoxFuture;
use printworks_common::clock::ManualClock;
use printworks_common::db::MIGRATOR;
use printworks_common::mail::{self, MailSender};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{ORG_SCOPES, OrgWorld, TestApp, test_settings};

async fn invite(app: &TestApp, w: &OrgWorld, email: &str, role: &str) -> crate::helpers::Answer {
    app.call(
        Method::POST,
        &format!("/org/v1/organizations/{}/invitations", w.org),
        Some(&w.admin_token),
        Some(&json!({"email": email, "role": role})),
    )
    .await
}

async fn accept(app: &TestApp, token: &str, invitation_token: &str) -> crate::helpers::Answer {
    app.call(
        Method::POST,
        "/org/v1/invitations/accept",
        Some(token),
        Some(&json!({"token": invitation_token})),
    )
    .await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_invitation_is_mailed_accepted_once_and_only_by_its_addressee(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let newcomer = app.new_user("newcomer").await;
    let newcomer_token = app.access_token(&newcomer, ORG_SCOPES).await;

    // The address is normalised; the token comes back this once.
    let res = invite(&app, &w, &newcomer.email.to_uppercase(), "guest")
        .await
        .expect(StatusCode::CREATED);
    let token = res.body["token"].as_str().unwrap().to_owned();
    assert_eq!(res.body["email"], newcomer.email.as_str());
    assert_eq!(res.body["role"], "guest");
    let expires = time::OffsetDateTime::parse(
        res.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires - app.now(), time::Duration::days(7));

    // Stored only as a digest; listed without it.
    let stored: String =
        sqlx::query_scalar("SELECT to_jsonb(i)::text FROM invitations i WHERE id = $1")
            .bind(res.id())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(!stored.contains(&token));
    let list = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{}/invitations", w.org),
            Some(&w.admin_token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert!(!list.body.to_string().contains(&token));

    // The e-mail carrying the token leaves through the outbox, to the addressee.
    let mail_dir = app.data_dir.path().join("mail");
    let mut delivered = None;
    for _ in 0..100 {
        let sent: Option<(String, String)> = sqlx::query_as(
            "SELECT to_address, to_jsonb(o)::text FROM email_outbox o
             WHERE sent_at IS NOT NULL AND topic LIKE 'invitation:%'",
        )
        .fetch_optional(&app.db)
        .await
        .unwrap();
        if sent.is_some() {
            delivered = sent;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (to, row) = delivered.expect("the outbox worker delivers the invitation");
    assert_eq!(to, newcomer.email);
    // Sent: the message (and the token in it) is no longer in the database.
    assert!(!row.contains(&token), "{row}");
    let files: Vec<_> = std::fs::read_dir(&mail_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains("Subject: Invitation")
        })
        .collect();
    assert_eq!(files.len(), 1);
    let file = files[0].clone();
    assert!(std::fs::read_to_string(&file).unwrap().contains(&token));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o077,
        0
    );

    // Someone else holding the token cannot use it; the refusal is audited.
    let res = accept(&app, &w.outsider_token, &token)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(res.body["type"], "urn:printworks:problem:forbidden");
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'invitation.accept' AND outcome = 'failure' AND actor_id = $1",
    )
    .bind(w.outsider.id.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(failures, 1);

    // The addressee joins with the role the invitation names.
    let res = accept(&app, &newcomer_token, &token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(res.body, json!({"organization_id": w.org, "role": "guest"}));
    let org = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{}", w.org),
            Some(&newcomer_token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(org.body["role"], "guest");

    // Once only, and no longer pending.
    let again = accept(&app, &newcomer_token, &token)
        .await
        .expect(StatusCode::NOT_FOUND);
    assert_eq!(
        again.body["type"],
        "urn:printworks:problem:invitation-not-found"
    );
    let list = app
        .call(
            Method::GET,
            &format!("/org/v1/organizations/{}/invitations", w.org),
            Some(&w.admin_token),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(list.body["items"], json!([]));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn invitations_expire_after_seven_days_and_can_be_revoked(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let early = app.new_user("early").await;
    let late = app.new_user("late").await;
    let revoked = app.new_user("revoked").await;
    let revoked_token = app.access_token(&revoked, ORG_SCOPES).await;

    let t_early = invite(&app, &w, &early.email, "member")
        .await
        .expect(StatusCode::CREATED);
    let t_late = invite(&app, &w, &late.email, "member")
        .await
        .expect(StatusCode::CREATED);
    let t_revoked = invite(&app, &w, &revoked.email, "member")
        .await
        .expect(StatusCode::CREATED);

    // Revoked: gone, and the same answer as an unknown token.
    let path = format!(
        "/org/v1/organizations/{}/invitations/{}",
        w.org,
        t_revoked.id()
    );
    app.call(Method::DELETE, &path, Some(&w.admin_token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::DELETE, &path, Some(&w.admin_token), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let res = accept(
        &app,
        &revoked_token,
        t_revoked.body["token"].as_str().unwrap(),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    let unknown = accept(&app, &revoked_token, "not-a-token-we-gave-out")
        .await
        .expect(StatusCode::NOT_FOUND);
    assert_eq!(res.body["type"], unknown.body["type"]);
    assert_eq!(res.body["title"], unknown.body["title"]);

    // A second before the seventh day ends it works; a second after, it does not.
    app.clock
        .advance(time::Duration::days(7) - time::Duration::seconds(1));
    // A week later they sign in again (sessions idle out) and get tokens then.
    let early_token2 = app
        .access_token(&app.relogin(&early).await, ORG_SCOPES)
        .await;
    let late_token2 = app
        .access_token(&app.relogin(&late).await, ORG_SCOPES)
        .await;
    accept(&app, &early_token2, t_early.body["token"].as_str().unwrap())
        .await
        .expect(StatusCode::OK);
    app.clock.advance(time::Duration::seconds(2));
    accept(&app, &late_token2, t_late.body["token"].as_str().unwrap())
        .await
        .expect(StatusCode::NOT_FOUND);
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM organization_members WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(w.org)
    .bind(late.id)
    .fetch_optional(&app.db)
    .await
    .unwrap();
    assert_eq!(role, None);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_organization_has_at_most_a_hundred_invitations_waiting(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let mut first = None;
    for i in 0..printworks_org::invitations::MAX_PENDING {
        let id = invite(&app, &w, &format!("person{i}@example.com"), "guest")
            .await
            .expect(StatusCode::CREATED)
            .id();
        first.get_or_insert(id);
    }
    let full = invite(&app, &w, "one-more@example.com", "guest")
        .await
        .expect(StatusCode::CONFLICT);
    assert!(full.body["detail"].as_str().unwrap().contains("revoke"));
    // Revoking one makes room; so does time (expired invitations do not count).
    app.call(
        Method::DELETE,
        &format!(
            "/org/v1/organizations/{}/invitations/{}",
            w.org,
            first.unwrap()
        ),
        Some(&w.admin_token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    invite(&app, &w, "one-more@example.com", "guest")
        .await
        .expect(StatusCode::CREATED);
    invite(&app, &w, "two-more@example.com", "guest")
        .await
        .expect(StatusCode::CONFLICT);
    app.clock.advance(time::Duration::days(8));
    let admin_token = app
        .access_token(&app.relogin(&w.admin).await, ORG_SCOPES)
        .await;
    app.call(
        Method::POST,
        &format!("/org/v1/organizations/{}/invitations", w.org),
        Some(&admin_token),
        Some(&json!({"email": "two-more@example.com", "role": "guest"})),
    )
    .await
    .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn revoking_and_inviting_again_is_limited_per_day(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    // The day's invitations so far, all revoked (written directly: the point is the
    // count, and two hundred requests would only make the test slow).
    let now = app.now();
    for i in 0..printworks_org::invitations::MAX_PER_DAY - 1 {
        sqlx::query(
            "INSERT INTO invitations (id, organization_id, email, role, token_hash, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, 'guest', $4, $5, $6, $5)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(w.org)
        .bind(format!("p{i}@example.com"))
        .bind(uuid::Uuid::new_v4().as_bytes().to_vec())
        .bind(now - time::Duration::hours(23) + time::Duration::seconds(i))
        .bind(now + time::Duration::days(6))
        .execute(&app.db)
        .await
        .unwrap();
    }
    invite(&app, &w, "last@example.com", "guest")
        .await
        .expect(StatusCode::CREATED);
    let res = invite(&app, &w, "over@example.com", "guest")
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.body["type"], "urn:printworks:problem:rate-limited");
    // An hour later the oldest of the day has left the window.
    app.clock
        .advance(time::Duration::hours(1) + time::Duration::seconds(1));
    let admin_token = app
        .access_token(&app.relogin(&w.admin).await, ORG_SCOPES)
        .await;
    app.call(
        Method::POST,
        &format!("/org/v1/organizations/{}/invitations", w.org),
        Some(&admin_token),
        Some(&json!({"email": "over@example.com", "role": "guest"})),
    )
    .await
    .expect(StatusCode::CREATED);
    // Nothing was mailed for the refused one.
    let mailed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE topic LIKE 'invitation:%'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(mailed, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn accepting_while_the_inviter_is_demoted_ends_one_way_or_the_other(pool: PgPool) {
    // Accepting locks the organization, then the invitation; a demotion withdraws the
    // inviter's invitations under the same organization lock. Run together many
    // times, each pair ends cleanly: the person joined (the invitation was used before
    // the withdrawal) or did not (withdrawn first) — never a 500 or a deadlock.
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let set_role = |role| app.set_role(&w.admin_token, w.org, w.member.id, role);
    for round in 0..8 {
        set_role("admin").await.expect(StatusCode::OK);
        let invitee = app.new_user(&format!("invitee{round}")).await;
        let invitee_token = app.access_token(&invitee, ORG_SCOPES).await;
        let sent = app
            .call(
                Method::POST,
                &format!("/org/v1/organizations/{}/invitations", w.org),
                Some(&w.member_token),
                Some(&json!({"email": invitee.email, "role": "guest"})),
            )
            .await
            .expect(StatusCode::CREATED);
        let token = sent.body["token"].as_str().unwrap().to_owned();
        let (accepted, demoted) =
            tokio::join!(accept(&app, &invitee_token, &token), set_role("member"));
        demoted.expect(StatusCode::OK);
        match accepted.status {
            StatusCode::OK | StatusCode::NOT_FOUND => {}
            other => panic!("accepting answered {other}: {}", accepted.body),
        }
        let member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM organization_members WHERE organization_id = $1 AND user_id = $2)",
        )
        .bind(w.org)
        .bind(invitee.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(member, accepted.status == StatusCode::OK);
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_invitations_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    for (email, role) in [
        ("not-an-address", "member"),
        ("", "member"),
        ("someone@example.com", "owner"),
        ("someone@example.com", ""),
    ] {
        invite(&app, &w, email, role)
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
    }
    // Already a member.
    invite(&app, &w, &w.member.email, "admin")
        .await
        .expect(StatusCode::CONFLICT);
    // Malformed bodies.
    for body in [
        json!({"email": "a@example.com"}),
        json!("text"),
        json!({"email": 5, "role": "guest"}),
    ] {
        let res = app
            .call(
                Method::POST,
                &format!("/org/v1/organizations/{}/invitations", w.org),
                Some(&w.admin_token),
                Some(&body),
            )
            .await;
        assert!(res.status.is_client_error(), "{body}: {}", res.status);
    }
    // Oversized or empty tokens are simply unknown.
    for token in ["", &"x".repeat(5000)] {
        accept(&app, &w.outsider_token, token)
            .await
            .expect(StatusCode::NOT_FOUND);
    }
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM invitations")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

/// A sender that fails while `down` and records what it sends otherwise.
#[derive(Default)]
struct FlakySender {
    down: Mutex<bool>,
    sent: Mutex<Vec<(String, String)>>,
}

impl MailSender for FlakySender {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        _body: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if *self.down.lock().unwrap() {
                anyhow::bail!("connection refused");
            }
            self.sent
                .lock()
                .unwrap()
                .push((to.to_owned(), subject.to_owned()));
            Ok(())
        })
    }
}

/// A context of its own (data directory, manual clock) with one message to `to` waiting
/// in the outbox.
async fn outbox_with_one(
    pool: &PgPool,
    to: &str,
) -> (
    tempfile::TempDir,
    std::sync::Arc<ManualClock>,
    printworks_common::AppContext,
    uuid::Uuid,
) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let ctx = crate::helpers::test_context(pool, test_settings(dir.path()), clock.clone()).await;
    let mut conn = pool.acquire().await.unwrap();
    let id = mail::enqueue(
        &mut conn,
        &ctx.secrets,
        to,
        "Hello",
        "Body",
        None,
        clock_now(&clock),
    )
    .await
    .unwrap();
    (dir, clock, ctx, id)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn mail_waits_in_the_outbox_while_the_sender_is_down(pool: PgPool) {
    let (_dir, clock, ctx, id) = outbox_with_one(&pool, "ada@example.com").await;
    let sender = Arc::new(FlakySender::default());
    *sender.down.lock().unwrap() = true;
    // Waiting, the body is sealed: not in the row as text.
    let row: String =
        sqlx::query_scalar("SELECT to_jsonb(o)::text FROM email_outbox o WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!row.contains("Body"), "{row}");

    // Down: nothing sent, nothing lost, the next attempt later.
    assert_eq!(
        mail::deliver_due(&ctx, sender.as_ref(), 10).await.unwrap(),
        0
    );
    let (attempts, next, error): (i32, time::OffsetDateTime, Option<String>) = sqlx::query_as(
        "SELECT attempts, next_attempt_at, last_error FROM email_outbox WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert_eq!(next - clock_now(&clock), time::Duration::seconds(10));
    assert!(error.unwrap().contains("connection refused"));
    // Not due yet.
    *sender.down.lock().unwrap() = false;
    assert_eq!(
        mail::deliver_due(&ctx, sender.as_ref(), 10).await.unwrap(),
        0
    );
    // Due: sent once, and not again.
    clock.advance(time::Duration::seconds(10));
    assert_eq!(
        mail::deliver_due(&ctx, sender.as_ref(), 10).await.unwrap(),
        1
    );
    assert_eq!(
        mail::deliver_due(&ctx, sender.as_ref(), 10).await.unwrap(),
        0
    );
    assert_eq!(
        *sender.sent.lock().unwrap(),
        vec![("ada@example.com".to_owned(), "Hello".to_owned())]
    );
    // Sent: marked so, and the body (an invitation token) is no longer kept.
    let (sent, kept): (bool, bool) = sqlx::query_as(
        "SELECT sent_at IS NOT NULL, body IS NOT NULL OR body_sealed IS NOT NULL
         FROM email_outbox WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(sent && !kept);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn mail_that_cannot_be_sent_is_given_up_on_after_a_day_of_retries(pool: PgPool) {
    let (_dir, clock, ctx, id) = outbox_with_one(&pool, "nobody@example.com").await;
    let sender = FlakySender::default();
    *sender.down.lock().unwrap() = true;
    let state = || async {
        sqlx::query_as::<_, (i32, bool, bool)>(
            "SELECT attempts, gave_up_at IS NOT NULL, body_sealed IS NOT NULL
             FROM email_outbox WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let mut waited = time::Duration::ZERO;
    for attempt in 1..=mail::MAX_ATTEMPTS {
        mail::deliver_due(&ctx, &sender, 10).await.unwrap();
        let (attempts, gave_up, kept) = state().await;
        assert_eq!(attempts, attempt);
        assert_eq!(gave_up, attempt == mail::MAX_ATTEMPTS);
        assert_eq!(
            kept, !gave_up,
            "the body goes when the message is given up on"
        );
        let pause = mail::backoff(attempt - 1);
        clock.advance(pause);
        waited += pause;
    }
    assert!(waited > time::Duration::hours(20) && waited < time::Duration::days(2));
    // Given up: never tried again, even much later.
    clock.advance(time::Duration::days(30));
    mail::deliver_due(&ctx, &sender, 10).await.unwrap();
    assert_eq!(state().await, (mail::MAX_ATTEMPTS, true, false));
}

fn clock_now(clock: &ManualClock) -> time::OffsetDateTime {
    use printworks_common::clock::Clock as _;
    clock.now()
}

/// A minimal SMTP server on loopback: accepts one message and hands back what it got.
async fn smtp_sink() -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
        let mut transcript = String::new();
        let mut in_data = false;
        while let Some(line) = lines.next_line().await.unwrap() {
            transcript.push_str(&line);
            transcript.push('\n');
            let reply: &[u8] = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                b"250 queued\r\n"
            } else {
                match line
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase()
                    .as_str()
                {
                    "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                    "DATA" => {
                        in_data = true;
                        b"354 go on\r\n"
                    }
                    "QUIT" => {
                        write.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    }
                    _ => b"250 ok\r\n",
                }
            };
            write.write_all(reply).await.unwrap();
        }
        transcript
    });
    (port, task)
}

#[tokio::test]
async fn smtp_delivers_the_message_and_refuses_passwords_in_the_clear() {
    let (port, transcript) = smtp_sink().await;
    let sender = mail::SmtpSender::new(
        &format!("smtp://127.0.0.1:{port}"),
        "Printworks <no-reply@example.com>",
    )
    .unwrap();
    sender
        .send(
            "ada@example.com",
            "Invitation to Fab Lab",
            "Your token: tok-123",
        )
        .await
        .unwrap();
    drop(sender);
    let got = tokio::time::timeout(Duration::from_secs(10), transcript)
        .await
        .unwrap()
        .unwrap();
    assert!(got.contains("RCPT TO:<ada@example.com>"), "{got}");
    assert!(got.contains("Subject: Invitation to Fab Lab"), "{got}");
    assert!(got.contains("Your token: tok-123"), "{got}");

    for url in [
        "smtp://user:secret@mail.example.com:587",
        "smtp://user:secret@mail.example.com?tls=opportunistic",
    ] {
        let err = mail::SmtpSender::new(url, "a@example.com")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("unencrypted") && !err.contains("secret"),
            "{err}"
        );
    }
    assert!(
        mail::SmtpSender::new(
            "smtp://user:secret@mail.example.com:587?tls=required",
            "a@example.com"
        )
        .is_ok()
    );
    assert!(mail::SmtpSender::new("smtps://user:secret@mail.example.com", "a@example.com").is_ok());
}

/// A sender that, while sending a message, sees every other message withdrawn (their
/// invitations revoked meanwhile).
struct WithdrawingSender {
    db: PgPool,
    now: time::OffsetDateTime,
    sent: Mutex<Vec<String>>,
}

impl MailSender for WithdrawingSender {
    fn send<'a>(
        &'a self,
        to: &'a str,
        _subject: &'a str,
        _body: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let others: Vec<String> = sqlx::query_scalar(
                "SELECT topic FROM email_outbox WHERE to_address <> $1 AND topic IS NOT NULL",
            )
            .bind(to)
            .fetch_all(&self.db)
            .await?;
            let mut conn = self.db.acquire().await?;
            for topic in others {
                mail::cancel(&mut conn, &topic, self.now).await?;
            }
            self.sent.lock().unwrap().push(to.to_owned());
            Ok(())
        })
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn mail_withdrawn_while_its_batch_is_being_sent_is_not_sent(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let ctx = crate::helpers::test_context(&pool, test_settings(dir.path()), clock.clone()).await;
    let mut conn = pool.acquire().await.unwrap();
    for (to, topic) in [
        ("first@example.com", "invitation:first"),
        ("second@example.com", "invitation:second"),
    ] {
        mail::enqueue(
            &mut conn,
            &ctx.secrets,
            to,
            "Hello",
            "Body",
            Some(topic),
            clock_now(&clock),
        )
        .await
        .unwrap();
    }
    drop(conn);
    let sender = WithdrawingSender {
        db: pool.clone(),
        now: clock_now(&clock),
        sent: Mutex::default(),
    };
    // Both are taken in one batch; whichever goes first, the other is withdrawn before
    // its turn, and is not sent.
    assert_eq!(mail::deliver_due(&ctx, &sender, 10).await.unwrap(), 1);
    let sent = sender.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let (unsent, withdrawn): (bool, bool) = sqlx::query_as(
        "SELECT sent_at IS NULL, gave_up_at IS NOT NULL FROM email_outbox WHERE to_address <> $1",
    )
    .bind(&sent[0])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(unsent && withdrawn);
}
