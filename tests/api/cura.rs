//! UltiMaker Cura signs in, replayed as Cura sends it (`../shared/reference/
//! cura-cloud-api.md` §3): its authorize URL with its keys in its order, its S512 PKCE
//! challenge of a known verifier, the consent of a person, its callback, its token and
//! refresh requests (form fields in its order, an empty `client_secret`, UltiMaker's scope
//! names), and the answers read with Cura's required-field rules; `check-token` and
//! `users/permissions` in its `{"data": …}` shape; a refusal as `error_code=user_denied`;
//! and S512 refused to every other client and in any other alphabet.

use printworks_common::db::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{CLI, CLI_REDIRECT, TestApp, TestUser, code_from_redirect, redirect_params};

const CURA: &str = "um----------------------------ultimaker_cura";
const CALLBACK: &str = "http://localhost:32118/callback";
/// `CLIENT_SCOPES` of `cura/API/Account.py`.
const SCOPES: &str = "account.user.read drive.backup.read drive.backup.write packages.download packages.rating.read packages.rating.write connect.cluster.read connect.cluster.write connect.material.write library.project.read library.project.write cura.printjob.read cura.printjob.write cura.mesh.read cura.mesh.write";
/// The reference's worked example: `secrets.token_hex(32)` and its S512 challenge.
const VERIFIER: &str = "5d8cf54ed7a86bb4787afaf1d0b51c4ae1a65b422cc577c70349346830cc6d2b";
const CHALLENGE: &str =
    "EBZuAPX1wAVdV_SqxZctxn3jjTxD4AWYHivsC3rOQ_pqYR9dTfwEcWTBuEbU29LpsQgnt8yZq0JCN8WxdVybOA==";
const STATE: &str = "7a1f4e4ad7c24bd0a3a0c2d1f7d2b9e3a6a4e0f1d2c3b4a5968778695a4b3c2d";
const USER_AGENT: &str = "cura/5.11.0 (Linux x86_64)";

/// The query Cura builds with `urllib.parse.urlencode`, its keys in its order.
fn cura_query(client: &str, redirect: &str, challenge: &str, method: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", SCOPES)
        .append_pair("response_type", "code")
        .append_pair("state", STATE)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", method)
        .finish()
}

/// The browser Cura opened, at `{account}/authorize`, with the person signed in: the
/// consent page approved (or refused), the redirect to Cura's callback.
async fn authorize(
    app: &TestApp,
    user: &TestUser,
    query: &str,
    decision: &str,
) -> reqwest::Response {
    let res = user
        .browser
        .get(app.url(&format!("/cura-account/authorize?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("UltiMaker Cura"),
        "the consent page names Cura"
    );
    app.decide(user, &page, decision).await
}

/// `POST {account}/token` as `AuthorizationHelpers.py` sends it.
async fn cura_token(app: &TestApp, fields: &[(&str, &str)]) -> (StatusCode, Value) {
    let res = app
        .client
        .post(app.url("/cura-account/token"))
        .header("user-agent", USER_AGENT)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

/// Cura's code exchange (`AuthorizationHelpers.getAccessTokenUsingAuthorizationCode`):
/// its fields in its order, its secret empty, its S512 verifier, UltiMaker's scopes.
async fn exchange(app: &TestApp, code: &str) -> (StatusCode, Value) {
    cura_token(
        app,
        &[
            ("client_id", CURA),
            ("client_secret", ""),
            ("redirect_uri", CALLBACK),
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", VERIFIER),
            ("scope", SCOPES),
        ],
    )
    .await
}

/// Cura's token response rules (`AuthorizationHelpers.parseTokenResponse`): a JSON
/// object, and on success all five fields, `expires_in` well above Cura's 60 s margin.
fn as_cura_reads_it(body: &Value) {
    for field in [
        "token_type",
        "access_token",
        "refresh_token",
        "expires_in",
        "scope",
    ] {
        assert!(!body[field].is_null(), "{field} missing: {body}");
    }
    assert!(body["expires_in"].as_f64().unwrap() > 120.0, "{body}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cura_signs_in_with_its_own_pkce_and_refreshes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let user = app.new_user("cura-user").await;
    let query = cura_query(CURA, CALLBACK, CHALLENGE, "S512");
    let back = authorize(&app, &user, &query, "approve").await;
    let code = code_from_redirect(&back, CALLBACK);
    let params = redirect_params(&back, CALLBACK);
    assert!(
        params.contains(&("state".to_owned(), STATE.to_owned())),
        "{params:?}"
    );

    // The exchange, fields in Cura's order, its secret empty.
    let (status, tokens) = exchange(&app, &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    as_cura_reads_it(&tokens);
    let scope = tokens["scope"].as_str().unwrap();
    for granted in ["print_job.write", "printer.read", "offline_access"] {
        assert!(scope.split(' ').any(|s| s == granted), "{scope}");
    }
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    // check-token, as Cura reads it: data.user_id and data.username required, no null
    // organization.
    let checked = app
        .call(
            Method::GET,
            "/cura-account/check-token",
            Some(&access),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(checked.body["data"]["user_id"], user.id.to_string());
    assert!(checked.body["data"]["username"].is_string());
    assert!(
        !checked.body["data"]
            .as_object()
            .unwrap()
            .get("organization")
            .is_some_and(Value::is_null)
    );
    // Permissions: Cura asks first without a token (refused), then with one.
    let anonymous = app
        .client
        .get(app.url("/cura-account/users/permissions"))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let permissions = app
        .call(
            Method::GET,
            "/cura-account/users/permissions",
            Some(&access),
            None,
        )
        .await
        .expect(StatusCode::OK);
    let list: Vec<&str> = permissions.body["data"]["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [
        "digital-factory.print-job.read",
        "digital-factory.print-job.write.own",
        "digital-factory.printer.read",
    ] {
        assert!(list.contains(&p), "{list:?}");
    }
    // The Marketplace's sync Cura polls every minute: harmlessly empty.
    let packages = app
        .call(
            Method::GET,
            "/cura-packages/v1/user/packages",
            Some(&access),
            None,
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(packages.body["data"], serde_json::json!([]));
    // The token works on Printworks' own API.
    app.call(Method::GET, "/org/v1/organizations", Some(&access), None)
        .await
        .expect(StatusCode::OK);

    // The refresh Cura sends when the token nears its end: every field again.
    let (status, refreshed) = cura_token(
        &app,
        &[
            ("client_id", CURA),
            ("client_secret", ""),
            ("redirect_uri", CALLBACK),
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("scope", SCOPES),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    as_cura_reads_it(&refreshed);
    assert_ne!(refreshed["refresh_token"], tokens["refresh_token"]);

    // A code is good once; its replay is refused with a JSON body Cura can read.
    let (status, again) = exchange(&app, &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(again["error_description"].is_string(), "{again}");

    // The pages Cura sends the browser to.
    for page in [
        "/cura-account/app/auth-success",
        "/cura-account/app/auth-error",
    ] {
        let res = app.get(page).await;
        assert_eq!(res.status(), StatusCode::OK, "{page}");
        assert!(res.text().await.unwrap().contains("Cura"));
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn curas_pkce_is_curas_alone_and_a_refusal_is_user_denied(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let user = app.new_user("cura-refusals").await;

    // Refused by the person: error_code=user_denied (and the standard error), state kept.
    let back = authorize(
        &app,
        &user,
        &cura_query(CURA, CALLBACK, CHALLENGE, "S512"),
        "deny",
    )
    .await;
    let params = redirect_params(&back, CALLBACK);
    for (k, v) in [
        ("error_code", "user_denied"),
        ("error", "access_denied"),
        ("state", STATE),
    ] {
        assert!(params.contains(&(k.to_owned(), v.to_owned())), "{params:?}");
    }

    // The same digest in base64url (what a server computing "S512" the usual way would
    // expect) is not Cura's challenge: the code it gets cannot be exchanged.
    let url_safe = CHALLENGE
        .replace('_', "+")
        .replace('-', "_")
        .replace('+', "-");
    assert_ne!(url_safe, CHALLENGE);
    let back = authorize(
        &app,
        &user,
        &cura_query(CURA, CALLBACK, &url_safe, "S512"),
        "approve",
    )
    .await;
    let code = code_from_redirect(&back, CALLBACK);
    let (status, e) = exchange(&app, &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"], "invalid_grant");

    // Unpadded: not a challenge Cura makes.
    let res = user
        .browser
        .get(app.url(&format!(
            "/cura-account/authorize?{}",
            cura_query(CURA, CALLBACK, CHALLENGE.trim_end_matches('='), "S512")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // S512 is Cura's alone: the command-line client stays S256-only.
    let cli = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", CLI)
        .append_pair("redirect_uri", CLI_REDIRECT)
        .append_pair("scope", "openid print_job.read")
        .append_pair("response_type", "code")
        .append_pair("state", STATE)
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S512")
        .finish();
    let res = user
        .browser
        .get(app.url(&format!("/oauth/authorize?{cli}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("S256"));

    // Cura's client redirects only to Cura's callback.
    let res = user
        .browser
        .get(app.url(&format!(
            "/cura-account/authorize?{}",
            cura_query(CURA, "http://localhost:32119/callback", CHALLENGE, "S512")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

/// A person signed in to Cura: Cura's tokens.
async fn cura_sign_in(app: &TestApp, user: &TestUser) -> Value {
    let back = authorize(
        app,
        user,
        &cura_query(CURA, CALLBACK, CHALLENGE, "S512"),
        "approve",
    )
    .await;
    let code = code_from_redirect(&back, CALLBACK);
    let (status, tokens) = exchange(app, &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens
}

/// A GET as Cura sends it (`JsonDecoratorScope`): JSON headers on every request.
async fn cura_get(app: &TestApp, token: &str, path: &str) -> (StatusCode, Value) {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .header("user-agent", USER_AGENT)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

/// `strptime("%Y-%m-%dT%H:%M:%S.%fZ")`: 1 to 6 fraction digits and a literal Z.
fn cura_parses_date(s: &str) -> bool {
    let Some((main, frac)) = s.strip_suffix('Z').and_then(|s| s.split_once('.')) else {
        return false;
    };
    time::PrimitiveDateTime::parse(
        main,
        &time::format_description::well_known::Iso8601::DEFAULT,
    )
    .is_ok()
        && (1..=6).contains(&frac.len())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

fn has(v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(*f).is_some(), "{f} missing in {v}");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cura_sees_the_printers_it_may_use_as_clusters(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = crate::helpers::OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, crate::helpers::ALL_SCOPES).await;
    let online = app.pair_printer(&admin, w.org, "SN-CURA-ON").await;
    let waiting = app.pair_printer(&admin, w.org, "SN-CURA-WAIT").await;
    app.share_printer(online.id, &[w.member.id]).await;
    let elsewhere = app
        .register_printer(w.other_org, w.outsider.id, "Ultimaker S5")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let stop = crate::relay::agent::start_agent(&app, &online, &dir.path().join("p"));
    let job = app
        .submit_gcode(&admin, waiting.id, "queued.gcode", crate::relay::gcode(10))
        .await
        .expect(StatusCode::CREATED)
        .id();

    // The member, signed in to Cura, sees the printer shared with them, online.
    let member = cura_sign_in(&app, &w.member).await;
    let member = member["access_token"].as_str().unwrap();
    // check-token is Cura's, and answers no other app's token.
    let cli = app.access_token(&w.admin, "openid profile email").await;
    app.call(Method::GET, "/cura-account/check-token", Some(&cli), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let deadline = tokio::time::Instant::now() + crate::relay::agent::WITHIN;
    let clusters = loop {
        let (status, body) = cura_get(&app, member, "/connect/v1/clusters?status=active").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["data"][0]["is_online"] == true {
            break body["data"].as_array().unwrap().clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(clusters.len(), 1);
    let c = &clusters[0];
    has(
        c,
        &[
            "cluster_id",
            "host_guid",
            "host_name",
            "is_online",
            "status",
            "display_status",
        ],
    );
    assert_eq!(c["cluster_id"], online.id.to_string());
    assert!(!c["cluster_id"].as_str().unwrap().is_empty());
    assert_eq!(c["capabilities"], serde_json::json!(["queue"]));

    // The admin sees both, and the queue of the one that waits.
    let admin_cura = cura_sign_in(&app, &w.admin).await;
    let admin_cura = admin_cura["access_token"].as_str().unwrap();
    let (_, all) = cura_get(&app, admin_cura, "/connect/v1/clusters").await;
    let ids: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{all}");
    assert!(!ids.contains(&elsewhere.to_string().as_str()));
    let (status, s) = cura_get(
        &app,
        admin_cura,
        &format!("/connect/v1/clusters/{}/status", waiting.id),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    let data = &s["data"];
    has(data, &["printers", "print_jobs", "generated_time"]);
    assert!(
        cura_parses_date(data["generated_time"].as_str().unwrap()),
        "{data}"
    );
    assert_eq!(data["printers"][0]["status"], "unreachable");
    let queued = &data["print_jobs"][0];
    has(
        queued,
        &[
            "created_at",
            "force",
            "machine_variant",
            "name",
            "started",
            "status",
            "time_total",
            "uuid",
            "configuration",
        ],
    );
    assert_eq!(queued["uuid"], job.to_string());
    assert_eq!(queued["status"], "queued");
    assert!(queued["configuration"].is_array());

    // Another organization's printer: 404, in Cura's error envelope.
    let (status, e) = cura_get(
        &app,
        member,
        &format!("/connect/v1/clusters/{elsewhere}/status"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    has(&e["errors"][0], &["id", "code", "title", "http_status"]);
    assert_eq!(e["errors"][0]["http_status"], "404");
    stop.cancel();
}

/// A request with a JSON body as Cura sends it (its JSON headers, the bearer token).
async fn cura_send(
    app: &TestApp,
    method: Method,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let res = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("user-agent", USER_AGENT)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.map(|b| b.to_string()).unwrap_or_default())
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

/// Cura's `requestUpload`: the pre-signed URL for a file.
async fn request_upload(app: &TestApp, token: &str, name: &str, size: usize) -> Value {
    let (status, body) = cura_send(
        app,
        Method::PUT,
        token,
        "/cura/v1/jobs/upload",
        Some(serde_json::json!({"data": {
            "job_name": name, "file_size": size, "content_type": "text/x-gcode",
        }})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // CloudPrintJobResponse: job_id and status required; upload_url and a content_type
    // that is not null, or Cura cannot send the file.
    has(
        &body["data"],
        &["job_id", "status", "upload_url", "content_type"],
    );
    assert_eq!(body["data"]["content_type"], "text/x-gcode");
    body["data"].clone()
}

/// `ToolPathUploader`: a PUT with only the content type — no token.
async fn put_file(url: &str, bytes: Vec<u8>) -> StatusCode {
    reqwest::Client::new()
        .put(url)
        .header("user-agent", USER_AGENT)
        .header("content-type", "text/x-gcode")
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cura_uploads_a_file_and_prints_it_on_a_printer_it_may_use(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = crate::helpers::OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, crate::helpers::ALL_SCOPES).await;
    let printer = app.pair_printer(&admin, w.org, "SN-CURA-PRINT").await;
    app.share_printer(printer.id, &[w.member.id]).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = crate::relay::agent::start_agent(&app, &printer, &dir.path().join("p"));
    let tokens = cura_sign_in(&app, &w.member).await;
    let member = tokens["access_token"].as_str().unwrap();
    let file = crate::relay::gcode(200);

    let upload = request_upload(&app, member, "UMS5_bracket", file.len()).await;
    let url = upload["upload_url"].as_str().unwrap().to_owned();
    let job_id = upload["job_id"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&app.base), "{url}");
    // Nothing to print before the file arrived.
    let print_path = format!("/connect/v1/clusters/{}/print/{job_id}", printer.id);
    let (status, _) = cura_send(&app, Method::POST, member, &print_path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(put_file(&url, file.clone()).await, StatusCode::OK);
    // The URL is good once.
    assert_eq!(put_file(&url, file.clone()).await, StatusCode::NOT_FOUND);

    // Print: a job of the printer, checked and sealed like any, printed by the agent.
    let (status, printed) = cura_send(&app, Method::POST, member, &print_path, None).await;
    assert_eq!(status, StatusCode::OK, "{printed}");
    has(&printed["data"], &["job_id", "status", "generated_time"]);
    assert!(cura_parses_date(
        printed["data"]["generated_time"].as_str().unwrap()
    ));
    let relay_job: uuid::Uuid = printed["data"]["cluster_job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let done = app
        .wait_for_job(member, relay_job, "completed", crate::relay::agent::WITHIN)
        .await;
    assert_eq!(done["name"], "UMS5_bracket.gcode");
    assert_eq!(done["sha256"], crate::relay::sha256_hex(&file));
    // Cura prints an unchanged scene again by the same job_id.
    let (status, again) = cura_send(&app, Method::POST, member, &print_path, None).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_ne!(
        again["data"]["cluster_job_id"],
        printed["data"]["cluster_job_id"]
    );

    // Another person's upload is not theirs to print.
    let admin_cura = cura_sign_in(&app, &w.admin).await;
    let admin_cura = admin_cura["access_token"].as_str().unwrap();
    let (status, e) = cura_send(&app, Method::POST, admin_cura, &print_path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    has(&e["errors"][0], &["id", "code", "title", "http_status"]);

    // A file over the printer's limits is refused when it is printed, in Cura's shape.
    let hot = b"M104 S300\nG28\n".to_vec();
    let upload = request_upload(&app, member, "hot", hot.len()).await;
    assert_eq!(
        put_file(upload["upload_url"].as_str().unwrap(), hot).await,
        StatusCode::OK
    );
    let (status, e) = cura_send(
        &app,
        Method::POST,
        member,
        &format!(
            "/connect/v1/clusters/{}/print/{}",
            printer.id,
            upload["job_id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["errors"][0]["http_status"], "422");

    // A file larger than announced is refused.
    let small = request_upload(&app, member, "small", 4).await;
    assert_eq!(
        put_file(
            small["upload_url"].as_str().unwrap(),
            b"G28\nG28\n".to_vec()
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Bad requests for an upload.
    for bad in [
        serde_json::json!({"data": {"job_name": "x", "file_size": 1, "content_type": "application/x-makerbot"}}),
        serde_json::json!({"data": {"job_name": "", "file_size": 1, "content_type": "text/x-gcode"}}),
        serde_json::json!({"job_name": "x"}),
    ] {
        let (status, e) = cura_send(
            &app,
            Method::PUT,
            member,
            "/cura/v1/jobs/upload",
            Some(bad.clone()),
        )
        .await;
        assert!(status.is_client_error(), "{bad}: {status}");
        assert!(e["errors"][0]["http_status"].is_string(), "{e}");
    }
    // An upload URL not used within ten minutes is gone.
    let late = request_upload(&app, member, "late", 10).await;
    app.clock.advance(time::Duration::minutes(11));
    assert_eq!(
        put_file(late["upload_url"].as_str().unwrap(), vec![b'G'; 10]).await,
        StatusCode::NOT_FOUND
    );
    stop.cancel();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn curas_queue_actions_are_the_relays_with_its_rules(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = crate::helpers::OrgWorld::new(&app).await;
    let admin = app.access_token(&w.admin, crate::helpers::ALL_SCOPES).await;
    let printer = app.pair_printer(&admin, w.org, "SN-CURA-QUEUE").await;
    let other = app.pair_printer(&admin, w.org, "SN-CURA-OTHER").await;
    app.share_printer(printer.id, &[w.member.id]).await;
    // No agent runs: the jobs wait in the queue.
    let admins_job = app
        .submit_gcode(&admin, printer.id, "admins.gcode", crate::relay::gcode(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let elsewhere = app
        .submit_gcode(&admin, other.id, "elsewhere.gcode", crate::relay::gcode(5))
        .await
        .expect(StatusCode::CREATED)
        .id();
    let member = cura_sign_in(&app, &w.member).await;
    let member = member["access_token"].as_str().unwrap().to_owned();
    let act = |token: String, job: uuid::Uuid, action: &'static str| {
        let app = &app;
        let printer = printer.id;
        async move {
            cura_send(
                app,
                Method::POST,
                &token,
                &format!("/connect/v1/clusters/{printer}/print_jobs/{job}/action/{action}"),
                None,
            )
            .await
        }
    };
    // A refusal made before any handler runs (no valid token) is in Cura's envelope too:
    // Cura's print-refusal parser reads errors[0].
    let (status, e) = act("not-a-token".to_owned(), admins_job, "abort").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    has(&e["errors"][0], &["id", "code", "title", "http_status"]);
    assert_eq!(e["errors"][0]["http_status"], "401");
    // Someone else's job: only admins, its sender and whoever added the printer.
    let (status, e) = act(member.clone(), admins_job, "abort").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["errors"][0]["http_status"], "403");
    // A job of another printer, through this cluster: unknown, even to an admin who may
    // abort it on its own printer.
    let admin_cura = cura_sign_in(&app, &w.admin).await;
    let admin_cura = admin_cura["access_token"].as_str().unwrap().to_owned();
    let (status, _) = act(admin_cura.clone(), elsewhere, "abort").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The member's own job, sent from Cura.
    let file = crate::relay::gcode(20);
    let upload = request_upload(&app, &member, "own", file.len()).await;
    assert_eq!(
        put_file(upload["upload_url"].as_str().unwrap(), file).await,
        StatusCode::OK
    );
    let (_, printed) = cura_send(
        &app,
        Method::POST,
        &member,
        &format!(
            "/connect/v1/clusters/{}/print/{}",
            printer.id,
            upload["job_id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    let own: uuid::Uuid = printed["data"]["cluster_job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, _) = act(member.clone(), own, "move").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = act(member.clone(), own, "force").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Not with the printer yet: pausing is refused by the relay's rule.
    let (status, _) = act(member.clone(), own, "pause").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = act(member.clone(), own, "explode").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = act(member.clone(), own, "remove").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call(
            Method::GET,
            &format!("/relay/v1/jobs/{own}"),
            Some(&member),
            None
        )
        .await
        .body["status"],
        "aborted"
    );
    // An admin, from Cura, aborts anyone's.
    let (status, _) = act(admin_cura.clone(), admins_job, "abort").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'job.abort'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(audited, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn curas_digital_library_lists_the_projects_a_person_may_see(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = crate::helpers::OrgWorld::new(&app).await;
    let make = |token: String, org: uuid::Uuid, name: &'static str| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                &format!("/org/v1/organizations/{org}/projects"),
                Some(&token),
                Some(&serde_json::json!({ "name": name })),
            )
            .await
            .expect(StatusCode::CREATED)
            .body["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let bracket = make(w.admin_token.clone(), w.org, "Bracket 100%").await;
    let housing = make(w.admin_token.clone(), w.org, "Housing").await;
    let foreign = make(w.outsider_token.clone(), w.other_org, "Not yours").await;

    let member = cura_sign_in(&app, &w.member).await;
    let member = member["access_token"].as_str().unwrap();
    let (status, budgets) = cura_get(&app, member, "/cura/v1/feature_budgets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(budgets["data"]["library_max_private_projects"], -1);

    // A page of one, then the next through links.next fetched verbatim.
    let (status, first) = cura_get(&app, member, "/cura/v1/projects?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let items = first["data"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    has(&items[0], &["library_project_id", "display_name"]);
    assert!(cura_parses_date(items[0]["last_updated"].as_str().unwrap()));
    assert!(items[0]["meta"].is_null() && first["meta"]["page"].is_object());
    let next = first["links"]["next"].as_str().unwrap().to_owned();
    assert!(
        next.starts_with(&app.base) && next.contains("limit=1"),
        "{next}"
    );
    let res = app
        .client
        .get(&next)
        .bearer_auth(member)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let second: Value = res.json().await.unwrap();
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert!(second["links"]["next"].is_null());
    let mut seen: Vec<&str> = vec![
        items[0]["library_project_id"].as_str().unwrap(),
        second["data"][0]["library_project_id"].as_str().unwrap(),
    ];
    seen.sort_unstable();
    let mut want = vec![bracket.as_str(), housing.as_str()];
    want.sort_unstable();
    assert_eq!(seen, want, "both of the organization's, not the other's");

    // Search by name, its % taken literally; shared=false: the person's own (none).
    let (_, found) = cura_get(&app, member, "/cura/v1/projects?limit=20&search=100%25").await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["data"][0]["display_name"], "Bracket 100%");
    let (_, all_like) = cura_get(&app, member, "/cura/v1/projects?limit=20&search=%25").await;
    assert_eq!(all_like["data"].as_array().unwrap().len(), 1, "{all_like}");
    let (_, own) = cura_get(&app, member, "/cura/v1/projects?shared=false&limit=20").await;
    assert_eq!(own["data"].as_array().unwrap().len(), 0);

    // One project; another organization's is unknown, in Cura's envelope.
    let (status, one) = cura_get(&app, member, &format!("/cura/v1/projects/{housing}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["data"]["display_name"], "Housing");
    let (status, e) = cura_get(&app, member, &format!("/cura/v1/projects/{foreign}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["errors"][0]["http_status"], "404");

    // A guest sees only what is shared with them: nothing here.
    let guest = cura_sign_in(&app, &w.guest).await;
    let (_, theirs) = cura_get(
        &app,
        guest["access_token"].as_str().unwrap(),
        "/cura/v1/projects?limit=20",
    )
    .await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0);
}
