//! `GET /oauth/authorize` and the consent form's `POST /oauth/authorize`: the
//! authorization code flow (RFC 6749 §4.1) with PKCE (RFC 7636, S256 only, required of
//! public clients), exact redirect URI matching (any port for loopback, RFC 8252),
//! `state` and `nonce` carried through, and the `iss` response parameter (RFC 9207).
//!
//! A request with an unknown client or a redirect URI that does not match is answered
//! with a page, never a redirect: the flow cannot be used to send a browser elsewhere.
//! Nor is an invalid request from a known client sent back to its redirect URI on its
//! own (RFC 9700 §4.11.2: that would make this server an open redirector for whoever
//! registers a client): a page says what is wrong and offers the way back as a link the
//! person may follow. Only the outcomes of a valid request go back by themselves — a
//! code, the person's refusal, or `login_required` / `consent_required` for
//! `prompt=none`.
//!
//! Every public client — the built-in command-line client too — gets the consent page
//! (RFC 8252 §8.6: anyone can claim to be a public client), remembered per person,
//! client and scope set like any other; only a confidential first-party client is
//! approved without asking.

use askama::Template;
use axum::extract::{Form, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::auth::{Scope, ScopeSet};
use printworks_common::crypto::{random_token, token_digest};
use printworks_common::http::ClientInfo;
use serde::Deserialize;
use url::Url;
use uuid::Uuid;

use super::clients::{self, Client, GRANT_AUTHORIZATION_CODE};
use crate::AccountState;
use crate::pages::{self, csrf_ok, csrf_refused, csrf_token, html, message};
use crate::session::{ActiveSession, session_from_parts_headers};

/// Authorization codes live a minute (RFC 6749 §4.1.2 recommends at most ten).
const CODE_TTL: time::Duration = time::Duration::seconds(60);
const MAX_PARAM: usize = 1000;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
}

impl AuthorizeParams {
    /// The parameters as form fields, to carry through the consent form.
    fn as_fields(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        let mut push = |k: &'static str, val: &Option<String>| {
            if let Some(val) = val {
                v.push((k, val.clone()));
            }
        };
        push("response_type", &self.response_type);
        push("client_id", &self.client_id);
        push("redirect_uri", &self.redirect_uri);
        push("scope", &self.scope);
        push("state", &self.state);
        push("nonce", &self.nonce);
        push("code_challenge", &self.code_challenge);
        push("code_challenge_method", &self.code_challenge_method);
        v
    }

    fn query_string(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.as_fields() {
            s.append_pair(k, &v);
        }
        if let Some(p) = &self.prompt {
            s.append_pair("prompt", p);
        }
        s.finish()
    }
}

pub(crate) struct Valid {
    client: Client,
    redirect_uri: String,
    scopes: ScopeSet,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    /// `S256`, or `S512` for Cura ([`crate::cura`]).
    code_challenge_method: &'static str,
    prompt_none: bool,
    prompt_consent: bool,
}

pub(crate) enum Refusal {
    /// Shown to the person: the client or redirect URI cannot be trusted.
    Page(String),
    /// An invalid request of a known client with a registered redirect URI: shown to the
    /// person, with the way back to the client (carrying the error) as a link.
    Invalid {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
    /// Sent back to the client's (verified) redirect URI: only for the outcomes of a
    /// valid request.
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

/// `redirect_uri` with `pairs` added to its query.
fn with_params(redirect_uri: &str, pairs: &[(&str, &str)]) -> Option<Url> {
    let mut url = Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    Some(url)
}

fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    match with_params(redirect_uri, pairs) {
        Some(url) => Redirect::to(url.as_str()).into_response(),
        None => message(
            StatusCode::BAD_REQUEST,
            "This request cannot be completed",
            "The application's redirect address is not valid.",
            None,
        ),
    }
}

/// The error parameters sent back to a client (RFC 6749 §4.1.2.1, RFC 9207).
fn error_pairs<'a>(
    issuer: &'a str,
    error: &'a str,
    description: &'a str,
    state: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![
        ("error", error),
        ("error_description", description),
        ("iss", issuer),
    ];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    pairs
}

impl Refusal {
    fn respond(self, state: &AccountState) -> Response {
        match self {
            Refusal::Page(text) => message(
                StatusCode::BAD_REQUEST,
                "This request cannot be completed",
                &text,
                None,
            ),
            Refusal::Invalid {
                redirect_uri,
                error,
                description,
                state: st,
            } => {
                let issuer = state.ctx.settings.public_url.as_str();
                let back = with_params(
                    &redirect_uri,
                    &error_pairs(issuer, error, &description, st.as_deref()),
                );
                message(
                    StatusCode::BAD_REQUEST,
                    "This request cannot be completed",
                    &format!(
                        "The application asked in a way this server does not accept: {description}"
                    ),
                    back.as_ref()
                        .map(|u| (u.as_str(), "Return to the application")),
                )
            }
            Refusal::Redirect {
                redirect_uri,
                error,
                description,
                state: st,
            } => {
                let issuer = state.ctx.settings.public_url.as_str();
                redirect_with(
                    &redirect_uri,
                    &error_pairs(issuer, error, &description, st.as_deref()),
                )
            }
        }
    }
}

fn is_pkce_value(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

async fn validate(state: &AccountState, p: &AuthorizeParams) -> Result<Valid, Refusal> {
    let client_id = p.client_id.as_deref().unwrap_or_default();
    let client = clients::find(&state.ctx.db, client_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "authorize: client lookup");
            Refusal::Page("Something went wrong. Try again later.".into())
        })?
        .ok_or_else(|| Refusal::Page("The application asking for access is not known.".into()))?;
    let redirect_uri = p
        .redirect_uri
        .clone()
        .filter(|r| r.len() <= 2000 && client.redirect_uri_allowed(r))
        .ok_or_else(|| {
            Refusal::Page(
                "The application's redirect address does not match what it registered.".into(),
            )
        })?;
    let st = p.state.clone();
    let refuse = |error: &'static str, description: &str| Refusal::Invalid {
        redirect_uri: redirect_uri.clone(),
        error,
        description: description.to_owned(),
        state: st.clone(),
    };
    let bad = |v: &Option<String>| {
        v.as_ref()
            .is_some_and(|s| s.len() > MAX_PARAM || super::has_control(s))
    };
    if bad(&st) || bad(&p.nonce) || bad(&p.code_challenge) {
        return Err(Refusal::Invalid {
            redirect_uri: redirect_uri.clone(),
            error: "invalid_request",
            description: "state, nonce or code_challenge is too long or holds control characters."
                .into(),
            state: None,
        });
    }
    if p.response_type.as_deref() != Some("code") {
        return Err(refuse(
            "unsupported_response_type",
            "Only response_type=code is supported.",
        ));
    }
    if !client.allows_grant(GRANT_AUTHORIZATION_CODE) {
        return Err(refuse(
            "unauthorized_client",
            "This client may not use the authorization code flow.",
        ));
    }
    // Cura asks in UltiMaker's scope names: read as the Printworks scopes they amount to.
    let asked = p.scope.clone().unwrap_or_default();
    let asked = if client.id == crate::cura::CLIENT_ID {
        crate::cura::printworks_scopes(&asked)
    } else {
        asked
    };
    let scopes = ScopeSet::parse(&asked).map_err(|e| refuse("invalid_scope", &e))?;
    if scopes.is_empty() {
        return Err(refuse("invalid_scope", "Ask for at least one scope."));
    }
    if !scopes.is_subset(&client.scope_set()) {
        return Err(refuse(
            "invalid_scope",
            "A requested scope is not registered for this client.",
        ));
    }
    let cura = client.id == crate::cura::CLIENT_ID;
    let code_challenge_method = if cura && p.code_challenge_method.as_deref() == Some("S512") {
        "S512"
    } else {
        "S256"
    };
    let code_challenge = match (&p.code_challenge, p.code_challenge_method.as_deref()) {
        (None, _) if client.is_public() => {
            return Err(refuse(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256.",
            ));
        }
        (None, None) => None,
        (None, Some(_)) => {
            return Err(refuse("invalid_request", "code_challenge is missing."));
        }
        (Some(c), Some("S256")) if is_pkce_value(c) => Some(c.clone()),
        // Cura's own method, for Cura only.
        (Some(c), Some("S512")) if cura && crate::cura::is_s512_challenge(c) => Some(c.clone()),
        (Some(_), Some("S512")) if cura => {
            return Err(refuse("invalid_request", "code_challenge is malformed."));
        }
        (Some(_), Some("S256")) => {
            return Err(refuse("invalid_request", "code_challenge is malformed."));
        }
        (Some(_), _) => {
            return Err(refuse(
                "invalid_request",
                "Only code_challenge_method=S256 is accepted.",
            ));
        }
    };
    let prompts: Vec<&str> = p.prompt.as_deref().unwrap_or_default().split(' ').collect();
    Ok(Valid {
        redirect_uri,
        scopes,
        state: st,
        nonce: p.nonce.clone(),
        code_challenge,
        code_challenge_method,
        prompt_none: prompts.contains(&"none"),
        prompt_consent: prompts.contains(&"consent"),
        client,
    })
}

/// The scopes this user already granted this client.
async fn granted(state: &AccountState, user_id: Uuid, client_id: &str) -> sqlx::Result<ScopeSet> {
    let scopes: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT scopes FROM oauth_consents WHERE user_id = $1 AND client_id = $2",
    )
    .bind(user_id)
    .bind(client_id)
    .fetch_optional(&state.ctx.db)
    .await?;
    Ok(ScopeSet::from_strings(scopes.unwrap_or_default()))
}

async fn issue_code(
    state: &AccountState,
    v: &Valid,
    session: &ActiveSession,
) -> Result<Response, printworks_common::ApiError> {
    let code = random_token();
    let now = state.ctx.now();
    sqlx::query(
        "INSERT INTO oauth_codes (code_hash, client_id, user_id, session_id, redirect_uri, scopes,
                                  code_challenge, nonce, auth_time, amr, created_at, expires_at,
                                  code_challenge_method)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(token_digest(&code))
    .bind(&v.client.id)
    .bind(session.user_id)
    .bind(session.id)
    .bind(&v.redirect_uri)
    .bind(v.scopes.to_strings())
    .bind(&v.code_challenge)
    .bind(&v.nonce)
    .bind(session.created_at)
    .bind(&session.amr)
    .bind(now)
    .bind(now + CODE_TTL)
    .bind(v.code_challenge_method)
    .execute(&state.ctx.db)
    .await?;
    let issuer = state.ctx.settings.public_url.as_str().to_owned();
    let mut pairs = vec![("code", code.as_str()), ("iss", issuer.as_str())];
    if let Some(s) = &v.state {
        pairs.push(("state", s.as_str()));
    }
    Ok(redirect_with(&v.redirect_uri, &pairs))
}

#[derive(Template)]
#[template(path = "consent.html")]
pub(crate) struct ConsentPage<'a> {
    client_name: &'a str,
    organization_name: &'a str,
    email: &'a str,
    scopes: Vec<ScopeItem>,
    redirect_origin: String,
    csrf: &'a str,
    params: Vec<(&'static str, String)>,
}

pub(crate) struct ScopeItem {
    name: &'static str,
    description: &'static str,
}

async fn consent_page(
    state: &AccountState,
    jar: CookieJar,
    v: &Valid,
    p: &AuthorizeParams,
    session: &ActiveSession,
) -> Result<Response, printworks_common::ApiError> {
    let organization_name = match v.client.organization_id {
        Some(org) => state
            .orgs
            .name(org)
            .await?
            .unwrap_or_else(|| "an unknown organization".into()),
        None => "Printworks".into(),
    };
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(session.user_id)
        .fetch_one(&state.ctx.db)
        .await?;
    let redirect_origin = Url::parse(&v.redirect_uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let (csrf, jar) = csrf_token(state, jar);
    let page = ConsentPage {
        client_name: &v.client.name,
        organization_name: &organization_name,
        email: &email,
        scopes: v
            .scopes
            .iter()
            .map(|s: Scope| ScopeItem {
                name: s.as_str(),
                description: s.description(),
            })
            .collect(),
        redirect_origin,
        csrf: &csrf,
        params: p.as_fields(),
    };
    Ok((jar, html(StatusCode::OK, &page)).into_response())
}

pub(crate) async fn authorize(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
    RawQuery(raw): RawQuery,
) -> Result<Response, printworks_common::ApiError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > 8000 {
        return Ok(Refusal::Page("The request is too long.".into()).respond(&state));
    }
    let Ok(p) = serde_urlencoded_params(&raw) else {
        return Ok(Refusal::Page("The request is malformed.".into()).respond(&state));
    };
    let v = match validate(&state, &p).await {
        Ok(v) => v,
        Err(refusal) => return Ok(refusal.respond(&state)),
    };
    let Some(session) = session_from_parts_headers(&headers, &state).await? else {
        if v.prompt_none {
            return Ok(Refusal::Redirect {
                redirect_uri: v.redirect_uri,
                error: "login_required",
                description: "The user is not signed in.".into(),
                state: v.state,
            }
            .respond(&state));
        }
        let back = format!("/oauth/authorize?{}", p.query_string());
        let login = format!(
            "/account/login?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("return_to", &back)
                .finish()
        );
        return Ok(Redirect::to(&login).into_response());
    };
    // Cura's client is public with a well-known id and port: whoever holds that port
    // first could take a remembered consent, so Cura is always asked.
    let needs_consent = !v.client.trusted_without_consent()
        && (v.prompt_consent
            || v.client.id == crate::cura::CLIENT_ID
            || !v
                .scopes
                .is_subset(&granted(&state, session.user_id, &v.client.id).await?));
    if needs_consent {
        if v.prompt_none {
            return Ok(Refusal::Redirect {
                redirect_uri: v.redirect_uri,
                error: "consent_required",
                description: "The user has not allowed this yet.".into(),
                state: v.state,
            }
            .respond(&state));
        }
        return consent_page(&state, jar, &v, &p, &session).await;
    }
    issue_code(&state, &v, &session).await
}

fn serde_urlencoded_params(raw: &str) -> Result<AuthorizeParams, ()> {
    let mut p = AuthorizeParams::default();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        let slot = match k.as_ref() {
            "response_type" => &mut p.response_type,
            "client_id" => &mut p.client_id,
            "redirect_uri" => &mut p.redirect_uri,
            "scope" => &mut p.scope,
            "state" => &mut p.state,
            "nonce" => &mut p.nonce,
            "code_challenge" => &mut p.code_challenge,
            "code_challenge_method" => &mut p.code_challenge_method,
            "prompt" => &mut p.prompt,
            _ => continue,
        };
        // RFC 6749 §3.1: parameters must not be repeated.
        if slot.is_some() {
            return Err(());
        }
        *slot = Some(v.into_owned());
    }
    Ok(p)
}

#[derive(Deserialize)]
pub(crate) struct Decision {
    csrf: String,
    decision: String,
    #[serde(flatten)]
    params: AuthorizeParams,
}

pub(crate) async fn decide(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
    client_info: ClientInfo,
    form: Result<Form<Decision>, axum::extract::rejection::FormRejection>,
) -> Result<Response, printworks_common::ApiError> {
    let Ok(Form(form)) = form else {
        return Ok(Refusal::Page("The form was incomplete.".into()).respond(&state));
    };
    if !csrf_ok(&state, &jar, &headers, &form.csrf) {
        return Ok(csrf_refused());
    }
    let v = match validate(&state, &form.params).await {
        Ok(v) => v,
        Err(refusal) => return Ok(refusal.respond(&state)),
    };
    let Some(session) = session_from_parts_headers(&headers, &state).await? else {
        return Ok(pages::message(
            StatusCode::UNAUTHORIZED,
            "You are signed out",
            "Sign in again and retry from the application.",
            Some(("/account/login", "Sign in")),
        ));
    };
    let now = state.ctx.now();
    let actor = Actor::User(session.user_id);
    match form.decision.as_str() {
        "approve" => {
            let all = granted(&state, session.user_id, &v.client.id)
                .await?
                .union(&v.scopes);
            let mut tx = state.ctx.db.begin().await?;
            sqlx::query(
                "INSERT INTO oauth_consents (user_id, client_id, scopes, granted_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, client_id) DO UPDATE SET scopes = $3, granted_at = $4",
            )
            .bind(session.user_id)
            .bind(&v.client.id)
            .bind(all.to_strings())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let mut event = AuditEvent::new("consent.grant", actor, Outcome::Success)
                .source(client_info.addr)
                .target("oauth_client", &v.client.id)
                .detail("scopes", v.scopes.to_string());
            if let Some(org) = v.client.organization_id {
                event = event.detail("client_organization_id", org.to_string());
            }
            event.write(&mut tx, now).await?;
            tx.commit().await?;
            issue_code(&state, &v, &session).await
        }
        "deny" => {
            let mut conn = state.ctx.db.acquire().await?;
            AuditEvent::new("consent.deny", actor, Outcome::Success)
                .source(client_info.addr)
                .target("oauth_client", &v.client.id)
                .detail("scopes", v.scopes.to_string())
                .write(&mut conn, now)
                .await?;
            if v.client.id == crate::cura::CLIENT_ID {
                // The only refusal Cura recognises (`AuthorizationRequestHandler.py`).
                let issuer = state.ctx.settings.public_url.as_str().to_owned();
                let mut pairs = vec![
                    ("error_code", "user_denied"),
                    ("error", "access_denied"),
                    ("iss", issuer.as_str()),
                ];
                if let Some(s) = &v.state {
                    pairs.push(("state", s.as_str()));
                }
                return Ok(redirect_with(&v.redirect_uri, &pairs));
            }
            Ok(Refusal::Redirect {
                redirect_uri: v.redirect_uri,
                error: "access_denied",
                description: "The user did not allow access.".into(),
                state: v.state,
            }
            .respond(&state))
        }
        _ => Ok(Refusal::Page("The form was incomplete.".into()).respond(&state)),
    }
}
