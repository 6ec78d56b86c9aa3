//! The pages people see: sign in (with the optional system use notification, IEC 62443
//! CR 1.12), the TOTP step, sign out, and (in [`crate::oauth::authorize`]) consent.
//! Server-rendered, no JavaScript, with a strict Content-Security-Policy.
//!
//! Every form carries a CSRF token that must equal the one in a `SameSite=Strict`,
//! HttpOnly cookie (double submit), and a POST whose `Origin` is not this server's is
//! refused.

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::crypto::{constant_time_eq, random_token, token_digest};
use printworks_common::http::{ClientInfo, Query};
use secrecy::SecretString;
use serde::Deserialize;
use uuid::Uuid;

use crate::login::{self, Account, LoginError};
use crate::session::{self, session_from_parts_headers};
use crate::{AccountState, totp};
use printworks_common::throttle::Gate;

/// How long the TOTP step of the login page waits for its code, and how many codes it
/// takes before the whole login must start again.
const MFA_CHALLENGE_TTL: time::Duration = time::Duration::minutes(5);
const MFA_CHALLENGE_ATTEMPTS: i32 = 5;

/// Pages: CSS from this origin only, no scripts, no framing, no plugins.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'";

/// An HTML page with the page headers.
pub fn html(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(body) => {
            let mut res = (status, body).into_response();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_CSP),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, and
            // the origin check below needs the real one. Other sites still learn nothing.
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            );
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "rendering a page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub title: &'a str,
    pub message: &'a str,
    pub link: Option<(&'a str, &'a str)>,
}

pub fn message(
    status: StatusCode,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Response {
    html(
        status,
        &MessagePage {
            title,
            message: text,
            link,
        },
    )
}

#[derive(Template)]
#[template(path = "login.html")]
pub(crate) struct LoginPage<'a> {
    notice: Option<&'a str>,
    /// An organization's name and its own notification (`?org=`).
    org_notice: Option<(&'a str, &'a str)>,
    error: Option<&'a str>,
    csrf: &'a str,
    return_to: &'a str,
    email: &'a str,
}

#[derive(Template)]
#[template(path = "totp.html")]
pub(crate) struct TotpPage<'a> {
    error: Option<&'a str>,
    csrf: &'a str,
    challenge: &'a str,
}

#[derive(Template)]
#[template(path = "logout.html")]
pub(crate) struct LogoutPage<'a> {
    email: &'a str,
    csrf: &'a str,
}

// ---- CSRF ---------------------------------------------------------------------------

fn csrf_cookie_name(https: bool) -> &'static str {
    if https { "__Host-pw_csrf" } else { "pw_csrf" }
}

/// The form token for this browser: the one in its cookie, or a new one (with the
/// cookie that carries it).
pub fn csrf_token(state: &AccountState, jar: CookieJar) -> (String, CookieJar) {
    let https = state.ctx.settings.public_url.is_https();
    let name = csrf_cookie_name(https);
    if let Some(c) = jar.get(name)
        && c.value().len() == 43
    {
        let token = c.value().to_owned();
        return (token, jar);
    }
    let token = random_token();
    let cookie = Cookie::build((name, token.clone()))
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Strict)
        .build();
    (token, jar.add(cookie))
}

/// The form's token equals the cookie's, and the request comes from this origin.
pub fn csrf_ok(
    state: &AccountState,
    jar: &CookieJar,
    headers: &HeaderMap,
    form_token: &str,
) -> bool {
    let public = state.ctx.settings.public_url.as_str();
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => origin == public,
    };
    let name = csrf_cookie_name(state.ctx.settings.public_url.is_https());
    let token_ok = jar
        .get(name)
        .is_some_and(|c| constant_time_eq(c.value().as_bytes(), form_token.as_bytes()));
    if !(origin_ok && token_ok) {
        let origin = headers.get(header::ORIGIN).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect::<String>()
        });
        tracing::info!(
            origin_ok,
            token_ok,
            ?origin,
            "form refused: CSRF check failed"
        );
    }
    origin_ok && token_ok
}

pub fn csrf_refused() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "Go back, reload the page and try again.",
        Some(("/account/login", "Sign in")),
    )
}

/// A local path to go back to after signing in; anything else (another host, a scheme,
/// `//evil.example`) is dropped, so the login page cannot become an open redirect.
pub fn safe_return_to(input: Option<&str>) -> Option<String> {
    let s = input?.trim();
    let ok = s.starts_with('/')
        && !s.starts_with("//")
        && !s.starts_with("/\\")
        && s.len() <= 4000
        && !s.chars().any(|c| c.is_control() || c == '\\');
    ok.then(|| s.to_owned())
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- Sign in --------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    return_to: Option<String>,
    /// The organization whose system use notification to show (IEC 62443 CR 1.12).
    org: Option<Uuid>,
}

pub(crate) async fn login_page(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
    Query(q): Query<LoginQuery>,
) -> Result<Response, printworks_common::ApiError> {
    let return_to = safe_return_to(q.return_to.as_deref());
    let org_notice = match q.org {
        Some(org) => state.orgs.notice(org).await?,
        None => None,
    };
    if session_from_parts_headers(&headers, &state)
        .await?
        .is_some()
    {
        return Ok(see_other(return_to.as_deref().unwrap_or("/account/")));
    }
    let (csrf, jar) = csrf_token(&state, jar);
    let page = LoginPage {
        notice: state.ctx.settings.account.system_use_notice.as_deref(),
        org_notice: org_notice.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
        error: None,
        csrf: &csrf,
        return_to: return_to.as_deref().unwrap_or(""),
        email: "",
    };
    Ok((jar, html(StatusCode::OK, &page)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    email: String,
    password: SecretString,
    csrf: String,
    return_to: Option<String>,
}

pub(crate) fn login_again(
    state: &AccountState,
    jar: CookieJar,
    status: StatusCode,
    error: &str,
    email: &str,
    return_to: &str,
) -> Response {
    let (csrf, jar) = csrf_token(state, jar);
    let page = LoginPage {
        notice: state.ctx.settings.account.system_use_notice.as_deref(),
        org_notice: None,
        error: Some(error),
        csrf: &csrf,
        return_to,
        email,
    };
    (jar, html(status, &page)).into_response()
}

fn login_error_page(
    state: &AccountState,
    jar: CookieJar,
    e: LoginError,
    email: &str,
    return_to: &str,
) -> Response {
    match e {
        LoginError::Throttled(wait) => {
            let mut res = login_again(
                state,
                jar,
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many attempts for this account. Try again in {} seconds.",
                    wait.as_secs().max(1)
                ),
                email,
                return_to,
            );
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            res
        }
        LoginError::InvalidCredentials => login_again(
            state,
            jar,
            StatusCode::UNAUTHORIZED,
            "The e-mail address or the password is wrong.",
            email,
            return_to,
        ),
        LoginError::SecondFactorRequired | LoginError::InvalidSecondFactor => login_again(
            state,
            jar,
            StatusCode::UNAUTHORIZED,
            "Sign in again.",
            email,
            return_to,
        ),
        LoginError::FederationRequired => login_again(
            state,
            jar,
            StatusCode::FORBIDDEN,
            "Your organization signs you in with its own account: choose “Sign in with single sign-on”.",
            email,
            return_to,
        ),
        LoginError::Internal(e) => printworks_common::ApiError::from(e).into_response(),
    }
}

pub(crate) async fn login_submit(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
    client: ClientInfo,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, printworks_common::ApiError> {
    let Ok(Form(form)) = form else {
        return Ok(message(
            StatusCode::BAD_REQUEST,
            "Something is missing",
            "The form was incomplete. Go back and try again.",
            Some(("/account/login", "Sign in")),
        ));
    };
    if !csrf_ok(&state, &jar, &headers, &form.csrf) {
        return Ok(csrf_refused());
    }
    let return_to = safe_return_to(form.return_to.as_deref()).unwrap_or_default();
    let email: String = form.email.chars().take(254).collect();
    // No password: the person signs in through their organization's provider.
    if secrecy::ExposeSecret::expose_secret(&form.password).is_empty() {
        return crate::federation::signin::start(&state, jar, &client, &email, &return_to, false)
            .await;
    }
    let counted = login::throttle_subject(&state, &jar, &email);
    let account =
        match login::check_password(&state, &email, form.password, &client, &counted).await {
            Ok(a) => a,
            Err(e) => return Ok(login_error_page(&state, jar, e, &email, &return_to)),
        };
    if totp::enabled(&state.ctx.db, account.id).await? {
        let challenge = random_token();
        let now = state.ctx.now();
        sqlx::query(
            "INSERT INTO mfa_challenges (token_hash, user_id, return_to, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_digest(&challenge))
        .bind(account.id)
        .bind(&return_to)
        .bind(now)
        .bind(now + MFA_CHALLENGE_TTL)
        .execute(&state.ctx.db)
        .await?;
        let (csrf, jar) = csrf_token(&state, jar);
        let page = TotpPage {
            error: None,
            csrf: &csrf,
            challenge: &challenge,
        };
        return Ok((jar, html(StatusCode::OK, &page)).into_response());
    }
    finish_login(&state, jar, &account, None, &client, &return_to).await
}

async fn finish_login(
    state: &AccountState,
    jar: CookieJar,
    account: &Account,
    factor: Option<totp::SecondFactor>,
    client: &ClientInfo,
    return_to: &str,
) -> Result<Response, printworks_common::ApiError> {
    let counted = login::throttle_subject(state, &jar, &account.email);
    let new = match login::start_session(state, account, factor, client, &counted).await {
        Ok(n) => n,
        Err(e) => return Ok(login_error_page(state, jar, e, &account.email, return_to)),
    };
    let device = crate::device::issue(state, &jar, &login::subject(&account.email));
    let jar = jar.add(session::cookie(state, &new)).add(device);
    let to = if return_to.is_empty() {
        "/account/"
    } else {
        return_to
    };
    Ok((jar, see_other(to)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct TotpForm {
    challenge: String,
    code: String,
    csrf: String,
}

pub(crate) async fn totp_submit(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
    client: ClientInfo,
    form: Result<Form<TotpForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, printworks_common::ApiError> {
    let Ok(Form(form)) = form else {
        return Ok(login_again(
            &state,
            jar,
            StatusCode::BAD_REQUEST,
            "Sign in again.",
            "",
            "",
        ));
    };
    if !csrf_ok(&state, &jar, &headers, &form.csrf) {
        return Ok(csrf_refused());
    }
    let now = state.ctx.now();
    // Each challenge allows a few guesses, counted atomically before the check.
    let row: Option<(Uuid, Option<String>)> = if form.challenge.len() <= 100 {
        sqlx::query_as(
            "UPDATE mfa_challenges SET attempts = attempts + 1
             WHERE token_hash = $1 AND expires_at > $2 AND attempts < $3
             RETURNING user_id, return_to",
        )
        .bind(token_digest(&form.challenge))
        .bind(now)
        .bind(MFA_CHALLENGE_ATTEMPTS)
        .fetch_optional(&state.ctx.db)
        .await?
    } else {
        None
    };
    let Some((user_id, return_to)) = row else {
        return Ok(login_again(
            &state,
            jar,
            StatusCode::UNAUTHORIZED,
            "This sign-in has expired. Sign in again.",
            "",
            "",
        ));
    };
    let return_to = return_to.unwrap_or_default();
    let account: Account =
        sqlx::query_as("SELECT id, email, display_name, password_hash FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&state.ctx.db)
            .await?;
    let code: String = form.code.chars().take(32).collect();
    // The code counts in the throttle like a password (the device's, when this browser
    // proves it logged in to the account before), before it is checked.
    let counted = login::throttle_subject(&state, &jar, &account.email);
    let result = match state.throttle.attempt(&state.ctx.db, &counted, now).await? {
        Gate::Wait(wait) => Err(LoginError::Throttled(wait)),
        Gate::Allowed => login::check_second_factor(&state, &account, &code, &client).await,
    };
    match result {
        Ok(factor) => {
            sqlx::query("DELETE FROM mfa_challenges WHERE token_hash = $1")
                .bind(token_digest(&form.challenge))
                .execute(&state.ctx.db)
                .await?;
            finish_login(&state, jar, &account, Some(factor), &client, &return_to).await
        }
        Err(LoginError::Internal(e)) => Err(e.into()),
        Err(e) => {
            let (status, text, wait) = match e {
                LoginError::Throttled(wait) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Too many attempts. Try again in {} seconds.",
                        wait.as_secs().max(1)
                    ),
                    Some(wait),
                ),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    "The code is wrong or was already used.".to_owned(),
                    None,
                ),
            };
            let (csrf, jar) = csrf_token(&state, jar);
            let page = TotpPage {
                error: Some(&text),
                csrf: &csrf,
                challenge: &form.challenge,
            };
            let mut res = (jar, html(status, &page)).into_response();
            if let Some(wait) = wait
                && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
            {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(res)
        }
    }
}

// ---- Signed in, sign out --------------------------------------------------------------

pub(crate) async fn home(
    State(state): State<AccountState>,
    headers: HeaderMap,
) -> Result<Response, printworks_common::ApiError> {
    let Some(s) = session_from_parts_headers(&headers, &state).await? else {
        return Ok(see_other("/account/login"));
    };
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(s.user_id)
        .fetch_one(&state.ctx.db)
        .await?;
    Ok(message(
        StatusCode::OK,
        "You are signed in",
        &format!("Signed in as {email}."),
        Some(("/account/logout", "Sign out")),
    ))
}

pub(crate) async fn logout_page(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<Response, printworks_common::ApiError> {
    let Some(s) = session_from_parts_headers(&headers, &state).await? else {
        return Ok(message(
            StatusCode::OK,
            "You are signed out",
            "You are not signed in.",
            Some(("/account/login", "Sign in")),
        ));
    };
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(s.user_id)
        .fetch_one(&state.ctx.db)
        .await?;
    let (csrf, jar) = csrf_token(&state, jar);
    Ok((
        jar,
        html(
            StatusCode::OK,
            &LogoutPage {
                email: &email,
                csrf: &csrf,
            },
        ),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: String,
}

pub(crate) async fn logout(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
    client: ClientInfo,
    form: Result<Form<CsrfOnly>, axum::extract::rejection::FormRejection>,
) -> Result<Response, printworks_common::ApiError> {
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !csrf_ok(&state, &jar, &headers, &token) {
        return Ok(csrf_refused());
    }
    if let Some(s) = session_from_parts_headers(&headers, &state).await? {
        let now = state.ctx.now();
        let mut tx = state.ctx.db.begin().await?;
        if session::end(&mut tx, s.user_id, s.id, "logout", now).await? {
            AuditEvent::new("session.end", Actor::User(s.user_id), Outcome::Success)
                .source(client.addr)
                .target("session", s.id)
                .detail("reason", "logout")
                .write(&mut tx, now)
                .await?;
        }
        tx.commit().await?;
    }
    let jar = jar.add(session::removal_cookie(&state));
    Ok((
        jar,
        message(
            StatusCode::OK,
            "You are signed out",
            "You have been signed out.",
            Some(("/account/login", "Sign in again")),
        ),
    )
        .into_response())
}

pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../templates/printworks.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(
            safe_return_to(Some("/oauth/authorize?client_id=x")).as_deref(),
            Some("/oauth/authorize?client_id=x")
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "javascript:alert(1)",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_return_to(Some(bad)), None, "{bad}");
        }
        assert_eq!(safe_return_to(None), None);
    }
}
