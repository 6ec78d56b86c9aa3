//! Getting a server ready to be measured, through its public API as people and printers
//! use it: an account (its address confirmed by the link in the e-mail the server
//! wrote), an organization, an access token through the CLI's authorization-code flow,
//! and printers paired by the agent's own pairing code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use printworks_agent::{PairOptions, PrinterInfo, Saved, StateDir};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

pub const PASSWORD: &str = "violet-lantern 93 orbit quince";
const CLI: &str = "printworks-cli";
const CLI_REDIRECT: &str = "http://127.0.0.1:53682/callback";
/// Every scope the benchmarks use.
const SCOPES: &str = "organization.read organization.write printer.read printer.write print_job.read print_job.write";

/// What `setup` leaves for the benchmarks (`<state>/bench.json`).
#[derive(Serialize, Deserialize)]
pub struct Fixture {
    pub organization_id: Uuid,
    pub access_token: String,
    pub printers: usize,
}

impl Fixture {
    pub fn load(state: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(state.join("bench.json"))
            .context("no bench.json: run `printworks-bench setup` first")?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The paired printers `from..to`, as the agent saved them.
    pub fn printers(state: &Path, range: std::ops::Range<usize>) -> anyhow::Result<Vec<Saved>> {
        range
            .map(|i| StateDir::new(printer_dir(state, i)).load())
            .collect()
    }
}

fn printer_dir(state: &Path, i: usize) -> PathBuf {
    state.join("printers").join(format!("p{i:05}"))
}

/// A browser: keeps cookies, does not follow redirects.
pub fn browser() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

async fn expect(res: reqwest::Response, status: u16, what: &str) -> anyhow::Result<Value> {
    let got = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    anyhow::ensure!(got == status, "{what}: {got} {text}");
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Signs up `email` (without confirming it).
pub async fn sign_up(http: &reqwest::Client, api: &str, email: &str) -> anyhow::Result<()> {
    let res = http
        .post(format!("{api}/account/v1/users"))
        .json(&json!({"email": email, "password": PASSWORD, "display_name": "Bench"}))
        .send()
        .await?;
    expect(res, 201, "sign-up").await.map(drop)
}

/// Follows the confirmation link the server e-mailed to `email` (the development
/// sender writes each message into `<data_dir>/mail`).
async fn confirm(http: &reqwest::Client, data_dir: &Path, email: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let link = loop {
        let found = std::fs::read_dir(data_dir.join("mail"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter(|m| m.starts_with(&format!("To: {email}\r\n")))
            .find_map(|m| {
                m.split_whitespace()
                    .find(|w| w.contains("/account/verify-email?token="))
                    .map(str::to_owned)
            });
        if let Some(link) = found {
            break link;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no confirmation e-mail to {email}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let res = http.get(&link).send().await?;
    anyhow::ensure!(res.status().is_success(), "confirming: {}", res.status());
    Ok(())
}

/// Hidden form fields of a page.
fn form_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|chunk| {
            let name = chunk.split("name=\"").nth(1)?.split('"').next()?;
            let value = chunk.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// An access token for the signed-in `browser`: the CLI's authorization-code flow with
/// PKCE, consent approved.
async fn access_token(browser: &reqwest::Client, api: &str) -> anyhow::Result<String> {
    let verifier = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    let params = [
        ("response_type", "code"),
        ("client_id", CLI),
        ("redirect_uri", CLI_REDIRECT),
        ("scope", SCOPES),
        ("state", "bench"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let mut res = browser
        .get(format!("{api}/oauth/authorize"))
        .query(&params)
        .send()
        .await?;
    if res.status() == 200 {
        let page = res.text().await?;
        let mut fields = form_fields(&page);
        fields.push(("decision".into(), "approve".into()));
        res = browser
            .post(format!("{api}/oauth/authorize"))
            .header("origin", api)
            .form(&fields)
            .send()
            .await?;
    }
    anyhow::ensure!(res.status().is_redirection(), "authorize: {}", res.status());
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("no redirect")?;
    let url = reqwest::Url::parse(location)?;
    let code = url
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .context("no code in the redirect")?;
    let res = browser
        .post(format!("{api}/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CLI_REDIRECT),
            ("client_id", CLI),
            ("code_verifier", &verifier),
        ])
        .send()
        .await?;
    let body = expect(res, 200, "token").await?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token")
}

/// An admin with a confirmed address, their organization and an access token, then
/// `printers` printers paired into it (`concurrency` at a time), saved under `state`.
pub async fn run(
    api: &str,
    data_dir: &Path,
    state: &Path,
    printers: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    std::fs::create_dir_all(state.join("printers"))?;
    let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
    let browser = browser()?;
    sign_up(&browser, api, &email).await?;
    confirm(&browser, data_dir, &email).await?;
    eprintln!("setup: signed up and confirmed in {:?}", started.elapsed());
    let res = browser
        .post(format!("{api}/account/v1/sessions"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    expect(res, 201, "login").await?;
    let token = access_token(&browser, api).await?;
    eprintln!("setup: access token in {:?}", started.elapsed());
    let res = browser
        .post(format!("{api}/org/v1/organizations"))
        .bearer_auth(&token)
        .json(&json!({"name": "Bench farm"}))
        .send()
        .await?;
    let org = expect(res, 201, "organization").await?;
    let organization_id: Uuid = serde_json::from_value(org["id"].clone())?;
    let fixture = Fixture {
        organization_id,
        access_token: token.clone(),
        printers,
    };
    std::fs::write(state.join("bench.json"), serde_json::to_vec(&fixture)?)?;
    eprintln!("setup: organization in {:?}", started.elapsed());

    // A printer asks from its own address: one address may have only a few requests
    // waiting (the pairing service's per-address limit), a farm has many.
    let clients: Vec<reqwest::Client> = (0..concurrency)
        .map(|i| {
            reqwest::Client::builder()
                .local_address(crate::printers::source(i, concurrency))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let claims = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let claiming = Arc::new(tokio::sync::Mutex::new(()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..printers {
        let dir = StateDir::new(printer_dir(state, i));
        if dir.is_paired() {
            continue;
        }
        let (http, api, token) = (
            clients[i % concurrency].clone(),
            api.to_owned(),
            token.clone(),
        );
        let claiming = claiming.clone();
        let permit = claims.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            pair_one(&http, &api, &token, organization_id, i, &dir, &claiming).await
        });
        while tasks.len() >= concurrency {
            if let Some(done) = tasks.join_next().await {
                done??;
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(json!({
        "printers": printers,
        "setup_secs": super::measure::round(started.elapsed().as_secs_f64()),
    }))
}

/// One printer paired: the agent asks, shows its code; the admin enters it.
async fn pair_one(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    organization_id: Uuid,
    i: usize,
    dir: &StateDir,
    claiming: &tokio::sync::Mutex<()>,
) -> anyhow::Result<()> {
    let (code_tx, code_rx) = tokio::sync::oneshot::channel::<String>();
    let mut code_tx = Some(code_tx);
    let info = PrinterInfo {
        serial: format!("BENCH-{i:05}-{}", Uuid::new_v4().simple()),
        model: "Ultimaker S5".into(),
        firmware_version: "bench".into(),
    };
    let options = PairOptions {
        max_poll_interval: Some(Duration::from_millis(50)),
    };
    let pairing = printworks_agent::pair(http, api, &info, dir, &options, |code, _| {
        if let Some(tx) = code_tx.take() {
            let _ = tx.send(code.to_owned());
        }
    });
    let claim = async {
        let code = code_rx.await.context("the agent showed no code")?;
        // One person enters codes one after another: the claim throttle counts
        // attempts under way, as it should against someone guessing.
        let _turn = claiming.lock().await;
        loop {
            let res = http
                .post(format!("{api}/pairing/v1/claims"))
                .bearer_auth(token)
                .json(&json!({"organization_id": organization_id, "code": code, "name": format!("bench {i}")}))
                .send()
                .await?;
            if res.status() != 429 {
                return expect(res, 201, "claim").await.map(drop);
            }
            let wait = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    };
    tokio::try_join!(async { pairing.await.map(drop) }, claim).map(drop)
}
