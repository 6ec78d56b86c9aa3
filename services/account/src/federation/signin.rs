//! The federated sign-in pages. `POST /account/login/federated` (the login form's
//! "single sign-on" button, or its password left empty) looks up the organization that
//! proved the address's domain, shows its system use notification if it has one, and
//! sends the browser to its provider: authorization code with PKCE (S256), `state` and
//! `nonce`, all three kept server-side (the verifier sealed) and bound to this browser
//! by a `SameSite=Lax` cookie. `GET /account/login/federated/callback` takes that
//! sign-in once, checks the answer (its `iss`, RFC 9207, against the issuer the sign-in
//! went to), exchanges the code, checks the ID token, and signs the person in: matched
//! by the provider's `(iss, sub)`, never by e-mail alone; on first sign-in the account
//! and the membership are made (just in time). Every refusal is audited and shown as a
//! page; no one is signed in by a refused answer.

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use openidconnect::core::{CoreAuthenticationFlow, CoreGenderClaim, CoreUserInfoClaims};
use openidconnect::{
    AuthorizationCode, CsrfToken, EmptyAdditionalClaims, IdTokenClaims, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, Scope, TokenResponse,
};
use printworks_common::ApiError;
use printworks_common::audit::{Actor, AuditEvent, Outcome};
use printworks_common::crypto::{constant_time_eq, random_token, token_digest};
use printworks_common::email::Email;
use printworks_common::http::{ClientInfo, Query};
use secrecy::SecretString;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::provider::{self, Client};
use super::{IdentityProvider, Lookup};
use crate::AccountState;
use crate::login::Account;
use crate::pages::{self, csrf_ok, csrf_refused, csrf_token, html, message, safe_return_to};

/// How long a sign-in sent to a provider may take to come back.
const SIGN_IN_TTL: time::Duration = time::Duration::minutes(10);
pub const CALLBACK_PATH: &str = "/account/login/federated/callback";

fn browser_cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-pw_federation"
    } else {
        "pw_federation"
    }
}

#[derive(Template)]
#[template(path = "federation_notice.html")]
struct NoticePage<'a> {
    organization: &'a str,
    notice: &'a str,
    csrf: &'a str,
    return_to: &'a str,
    email: &'a str,
}

#[derive(Deserialize)]
pub(crate) struct StartForm {
    email: String,
    csrf: String,
    return_to: Option<String>,
    acknowledged: Option<String>,
}

/// The organization that proved the domain of `email`, if it signs people in with its
/// provider.
pub async fn provider_for_email(
    state: &AccountState,
    email: &Email,
) -> anyhow::Result<Option<IdentityProvider>> {
    state
        .orgs
        .identity_provider(Lookup::Domain(email.domain().to_owned()))
        .await
}

pub(crate) async fn start_page(
    State(state): State<AccountState>,
    headers: HeaderMap,
    jar: CookieJar,
    client: ClientInfo,
    form: Result<Form<StartForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let Ok(Form(form)) = form else {
        return Ok(pages::login_again(
            &state,
            jar,
            StatusCode::BAD_REQUEST,
            "Enter your e-mail address.",
            "",
            "",
        ));
    };
    if !csrf_ok(&state, &jar, &headers, &form.csrf) {
        return Ok(csrf_refused());
    }
    let return_to = safe_return_to(form.return_to.as_deref()).unwrap_or_default();
    start(
        &state,
        jar,
        &client,
        &form.email,
        &return_to,
        form.acknowledged.as_deref() == Some("yes"),
    )
    .await
}

/// Sends the browser to the provider of `email_input`'s organization (after its notice,
/// unless `acknowledged`), or back to the login page saying why not.
pub(crate) async fn start(
    state: &AccountState,
    jar: CookieJar,
    client: &ClientInfo,
    email_input: &str,
    return_to: &str,
    acknowledged: bool,
) -> Result<Response, ApiError> {
    let email_input: String = email_input.chars().take(254).collect();
    let no_provider = |jar| {
        pages::login_again(
            state,
            jar,
            StatusCode::UNPROCESSABLE_ENTITY,
            "No organization signs in addresses of this domain with single sign-on. Sign in with your password.",
            &email_input,
            return_to,
        )
    };
    let Ok(email) = Email::parse(&email_input) else {
        return Ok(no_provider(jar));
    };
    let Some(idp) = provider_for_email(state, &email).await? else {
        return Ok(no_provider(jar));
    };
    if !idp.federation_allowed {
        return Ok(no_provider(jar));
    }
    if let (Some(notice), false) = (&idp.notice, acknowledged) {
        let (csrf, jar) = csrf_token(state, jar);
        let page = NoticePage {
            organization: &idp.organization_name,
            notice,
            csrf: &csrf,
            return_to,
            email: email.as_str(),
        };
        return Ok((jar, html(StatusCode::OK, &page)).into_response());
    }
    let now = state.ctx.now();
    let metadata = match state
        .providers
        .metadata(&idp.issuer, reach(state), now)
        .await
    {
        Ok(m) => m,
        Err(reason) => {
            tracing::warn!(organization = %idp.organization_id, %reason, "identity provider unavailable");
            refused(
                state,
                Some(idp.organization_id),
                client,
                "provider_unavailable",
                None,
            )
            .await?;
            return Ok(message(
                StatusCode::BAD_GATEWAY,
                "Single sign-on is unavailable",
                "Your organization's identity provider cannot be reached. Try again later.",
                Some(("/account/login", "Sign in")),
            ));
        }
    };
    let oidc = provider::client(
        metadata,
        &idp.client_id,
        &idp.client_secret,
        &callback_url(state),
    )
    .map_err(anyhow::Error::msg)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf_state, nonce) = oidc
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .add_extra_param("login_hint", email.as_str())
        .set_pkce_challenge(challenge)
        .url();
    let browser = random_token();
    let state_hash = token_digest(csrf_state.secret());
    let mut tx = state.ctx.db.begin().await?;
    sqlx::query("DELETE FROM federated_logins WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO federated_logins (state_hash, browser_hash, organization_id, issuer, nonce,
                                       pkce_verifier_sealed, return_to, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&state_hash)
    .bind(token_digest(&browser))
    .bind(idp.organization_id)
    .bind(&idp.issuer)
    .bind(nonce.secret())
    .bind(
        state
            .ctx
            .secrets
            .seal(&verifier_context(&state_hash), verifier.secret().as_bytes()),
    )
    .bind(Some(return_to).filter(|r| !r.is_empty()))
    .bind(now)
    .bind(now + SIGN_IN_TTL)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let https = state.ctx.settings.public_url.is_https();
    let cookie = Cookie::build((browser_cookie_name(https), browser))
        // `/`: a `__Host-` cookie (https) must have it.
        .path("/")
        .http_only(true)
        .secure(https)
        // Lax: the provider's redirect back is a top-level GET from another site.
        .same_site(SameSite::Lax)
        .max_age(SIGN_IN_TTL)
        .build();
    Ok((jar.add(cookie), Redirect::to(url.as_str())).into_response())
}

/// Which providers this deployment may reach (see [`provider::Reach`]).
fn reach(state: &AccountState) -> provider::Reach {
    provider::Reach::from_settings(&state.ctx.settings.account)
}

fn verifier_context(state_hash: &[u8]) -> String {
    format!(
        "federated-login:{}",
        printworks_common::crypto::hex(state_hash)
    )
}

fn callback_url(state: &AccountState) -> String {
    state.ctx.settings.public_url.link(CALLBACK_PATH)
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Pending {
    browser_hash: Vec<u8>,
    organization_id: Uuid,
    issuer: String,
    nonce: String,
    pkce_verifier_sealed: Vec<u8>,
    return_to: Option<String>,
    expires_at: OffsetDateTime,
}

/// Why a sign-in was refused: for the audit log, and the words shown.
struct Refusal {
    reason: &'static str,
    status: StatusCode,
    text: String,
}

impl Refusal {
    fn new(reason: &'static str, text: impl Into<String>) -> Self {
        Self {
            reason,
            status: StatusCode::FORBIDDEN,
            text: text.into(),
        }
    }
}

const TRY_AGAIN: &str = "Go back to the sign-in page and try again.";

pub(crate) async fn callback(
    State(state): State<AccountState>,
    jar: CookieJar,
    client: ClientInfo,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let https = state.ctx.settings.public_url.is_https();
    let cookie_name = browser_cookie_name(https);
    let mut removal = Cookie::build((cookie_name, ""))
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Lax)
        .build();
    removal.make_removal();
    let browser = jar.get(cookie_name).map(|c| c.value().to_owned());
    let jar = jar.add(removal);
    let taken = match q.state.as_deref().filter(|s| s.len() <= 200) {
        Some(s) => {
            // Taken once: a replayed answer finds nothing.
            sqlx::query_as::<_, Pending>(
                "DELETE FROM federated_logins WHERE state_hash = $1
                 RETURNING browser_hash, organization_id, issuer, nonce, pkce_verifier_sealed,
                           return_to, expires_at",
            )
            .bind(token_digest(s))
            .fetch_optional(&state.ctx.db)
            .await?
            .map(|p| (s.to_owned(), p))
        }
        None => None,
    };
    let Some((state_value, pending)) = taken else {
        refused(&state, None, &client, "unknown_state", None).await?;
        return Ok((
            jar,
            message(
                StatusCode::BAD_REQUEST,
                "This sign-in has expired",
                &format!("It was already used, or it is too old. {TRY_AGAIN}"),
                Some(("/account/login", "Sign in")),
            ),
        )
            .into_response());
    };
    let org = pending.organization_id;
    let outcome = finish(
        &state,
        &client,
        &state_value,
        pending,
        browser.as_deref(),
        &q,
    )
    .await;
    match outcome {
        Ok(Finished {
            account,
            session,
            return_to,
        }) => {
            let device = crate::device::issue(&state, &jar, &crate::login::subject(&account.email));
            let jar = jar
                .add(crate::session::cookie(&state, &session))
                .add(device);
            let to = return_to.unwrap_or_else(|| "/account/".into());
            Ok((jar, Redirect::to(&to)).into_response())
        }
        Err(Failure::Internal(e)) => Err(e.into()),
        Err(Failure::Refused(r, subject)) => {
            refused(&state, Some(org), &client, r.reason, subject.as_deref()).await?;
            Ok((
                jar,
                message(
                    r.status,
                    "Sign-in refused",
                    &format!("{} {TRY_AGAIN}", r.text),
                    Some(("/account/login", "Sign in")),
                ),
            )
                .into_response())
        }
    }
}

struct Finished {
    account: Account,
    session: crate::session::NewSession,
    return_to: Option<String>,
}

enum Failure {
    Refused(Refusal, Option<String>),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Internal(e)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Internal(e.into())
    }
}

fn refuse(reason: &'static str, text: impl Into<String>) -> Failure {
    Failure::Refused(Refusal::new(reason, text), None)
}

/// The provider's answer to one pending sign-in, checked step by step.
async fn finish(
    state: &AccountState,
    client: &ClientInfo,
    state_value: &str,
    pending: Pending,
    browser: Option<&str>,
    q: &CallbackQuery,
) -> Result<Finished, Failure> {
    let now = state.ctx.now();
    if pending.expires_at <= now {
        return Err(refuse("expired", "This sign-in took too long."));
    }
    let same_browser =
        browser.is_some_and(|b| constant_time_eq(&token_digest(b), &pending.browser_hash));
    if !same_browser {
        return Err(refuse(
            "other_browser",
            "This sign-in was started in another browser.",
        ));
    }
    // RFC 9207: the answer names its issuer; it must be the one the sign-in went to.
    if let Some(iss) = &q.iss
        && iss != &pending.issuer
    {
        return Err(refuse(
            "issuer_mismatch",
            "The answer came from another identity provider.",
        ));
    }
    if let Some(error) = &q.error {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        let said: String = q
            .error_description
            .as_deref()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let text = if error == "access_denied" {
            "Your organization's identity provider refused the sign-in (the account may be disabled).".to_owned()
        } else {
            format!("Your organization's identity provider answered: {error} {said}")
        };
        return Err(Failure::Refused(
            Refusal::new("provider_error", text),
            Some(error),
        ));
    }
    let Some(code) = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 2048)
    else {
        return Err(refuse(
            "no_code",
            "The identity provider's answer is incomplete.",
        ));
    };
    let Some(idp) = state
        .orgs
        .identity_provider(Lookup::Organization(pending.organization_id))
        .await?
        .filter(|p| p.issuer == pending.issuer && p.federation_allowed)
    else {
        return Err(refuse(
            "provider_changed",
            "Single sign-on was changed meanwhile.",
        ));
    };
    let state_hash = token_digest(state_value);
    let verifier = state
        .ctx
        .secrets
        .open(
            &verifier_context(&state_hash),
            &pending.pkce_verifier_sealed,
        )
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| anyhow::anyhow!("a federated sign-in's PKCE verifier does not open"))?;
    let metadata = state
        .providers
        .metadata(&idp.issuer, reach(state), now)
        .await
        .map_err(|reason| {
            Failure::Refused(
                Refusal {
                    reason: "provider_unavailable",
                    status: StatusCode::BAD_GATEWAY,
                    text: "The identity provider cannot be reached.".into(),
                },
                Some(reason),
            )
        })?;
    let redirect = callback_url(state);
    let oidc = provider::client(metadata, &idp.client_id, &idp.client_secret, &redirect)
        .map_err(anyhow::Error::msg)?;
    let tokens = oidc
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|_| {
            refuse(
                "no_token_endpoint",
                "The identity provider has no token endpoint.",
            )
        })?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&provider::http_for(reach(state)))
        .await
        .map_err(|e| {
            Failure::Refused(
                Refusal::new(
                    "token_exchange",
                    "The identity provider did not accept the sign-in.",
                ),
                Some(token_error(&e)),
            )
        })?;
    let Some(id_token) = tokens.id_token() else {
        return Err(refuse(
            "no_id_token",
            "The identity provider sent no ID token.",
        ));
    };
    let nonce = Nonce::new(pending.nonce.clone());
    let unix = now.unix_timestamp();
    let time_fn = move || chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default();
    let mut claims = id_token
        .claims(&oidc.id_token_verifier().set_time_fn(time_fn), &nonce)
        .cloned();
    if let Err(openidconnect::ClaimsVerificationError::SignatureVerification(
        openidconnect::SignatureVerificationError::NoMatchingKey,
    )) = &claims
    {
        // The provider may have rotated its keys: fetch them again (rate-limited).
        if let Ok(Some(fresh)) = state
            .providers
            .refreshed(&idp.issuer, reach(state), now)
            .await
        {
            let oidc = provider::client(fresh, &idp.client_id, &idp.client_secret, &redirect)
                .map_err(anyhow::Error::msg)?;
            claims = id_token
                .claims(&oidc.id_token_verifier().set_time_fn(time_fn), &nonce)
                .cloned();
        }
    }
    let claims = claims.map_err(|e| {
        Failure::Refused(
            Refusal::new(
                id_token_reason(&e),
                "The identity provider's ID token is not valid.",
            ),
            Some(e.to_string().chars().take(200).collect()),
        )
    })?;
    let subject = claims.subject().as_str().to_owned();
    if subject.is_empty() || subject.len() > 255 {
        return Err(refuse(
            "bad_subject",
            "The identity provider's ID token is not valid.",
        ));
    }
    let (email, verified) = match (claims.email(), claims.email_verified()) {
        (Some(e), Some(v)) => (e.as_str().to_owned(), v),
        _ => userinfo_email(reach(state), &oidc, &tokens, &claims).await?,
    };
    let refused_for =
        |reason, text: &str| Failure::Refused(Refusal::new(reason, text), Some(subject.clone()));
    if !verified {
        return Err(refused_for(
            "email_unverified",
            "Your identity provider does not vouch for your e-mail address.",
        ));
    }
    let email = Email::parse(&email).map_err(|_| {
        refused_for(
            "bad_email",
            "Your identity provider sent an address that is not valid.",
        )
    })?;
    let amr: Vec<String> = claims
        .auth_method_refs()
        .map(|v| {
            v.iter()
                .take(16)
                .map(|m| m.as_str().chars().take(32).collect())
                .collect()
        })
        .unwrap_or_default();
    let display_name: String = claims
        .name()
        .and_then(|n| n.get(None))
        .map(|n| {
            n.as_str()
                .chars()
                .filter(|c| !c.is_control() && !is_bidi_control(*c))
                .collect::<String>()
                .trim()
                .chars()
                .take(100)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            email
                .as_str()
                .split('@')
                .next()
                .unwrap_or("member")
                .chars()
                .take(100)
                .collect()
        });
    let (account, session) =
        sign_in(state, client, &idp, &subject, &email, &display_name, &amr).await?;
    Ok(Finished {
        account,
        session,
        return_to: pending.return_to.and_then(|r| safe_return_to(Some(&r))),
    })
}

/// Characters that reorder how text around them is shown.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}'..='\u{200f}' | '\u{061c}')
}

fn token_error<E: std::error::Error>(
    e: &openidconnect::RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> String {
    use openidconnect::RequestTokenError as R;
    match e {
        R::ServerResponse(r) => r.error().to_string(),
        R::Request(e) => e.to_string(),
        R::Parse(_, _) => "unparsable token response".into(),
        R::Other(s) => s.chars().take(100).collect(),
    }
}

fn id_token_reason(e: &openidconnect::ClaimsVerificationError) -> &'static str {
    use openidconnect::ClaimsVerificationError as C;
    match e {
        C::Expired(_) => "id_token_expired",
        C::InvalidAudience(_) => "id_token_audience",
        C::InvalidIssuer(_) => "id_token_issuer",
        C::InvalidNonce(_) => "id_token_nonce",
        C::SignatureVerification(_) => "id_token_signature",
        _ => "id_token_invalid",
    }
}

/// `email` and `email_verified` from the userinfo endpoint, for providers that keep
/// scope claims out of the ID token. The answer must be about the same `sub`.
async fn userinfo_email(
    reach: provider::Reach,
    oidc: &Client,
    tokens: &openidconnect::core::CoreTokenResponse,
    claims: &IdTokenClaims<EmptyAdditionalClaims, CoreGenderClaim>,
) -> Result<(String, bool), Failure> {
    let no_email = || {
        refuse(
            "no_email",
            "Your identity provider did not say your e-mail address.",
        )
    };
    let request = oidc
        .user_info(
            tokens.access_token().clone(),
            Some(claims.subject().clone()),
        )
        .map_err(|_| no_email())?;
    let info: CoreUserInfoClaims = request
        .request_async(&provider::http_for(reach))
        .await
        .map_err(|_| no_email())?;
    match (info.email(), info.email_verified()) {
        (Some(e), v) => Ok((e.as_str().to_owned(), v.unwrap_or(false))),
        _ => Err(no_email()),
    }
}

/// Signs in the person the provider vouched for: found by `(issuer, sub)`; on first
/// sign-in linked to the account of that address, or a new account made, and made a
/// member with the provider's default role. The address's domain must be one the
/// organization proved. The session ends at the federated maximum.
async fn sign_in(
    state: &AccountState,
    client: &ClientInfo,
    idp: &IdentityProvider,
    subject: &str,
    email: &Email,
    display_name: &str,
    amr: &[String],
) -> Result<(Account, crate::session::NewSession), Failure> {
    let now = state.ctx.now();
    let mut tx = state.ctx.db.begin().await?;
    let known: Option<Uuid> = sqlx::query_scalar(
        "UPDATE federated_identities SET last_login_at = $3
         WHERE organization_id = $4 AND issuer = $1 AND subject = $2 RETURNING user_id",
    )
    .bind(&idp.issuer)
    .bind(subject)
    .bind(now)
    .bind(idp.organization_id)
    .fetch_optional(&mut *tx)
    .await?;
    let refused_for =
        |reason, text: &str| Failure::Refused(Refusal::new(reason, text), Some(subject.to_owned()));
    let mut reset = false;
    let user_id = match known {
        // Still in a domain the organization proves: a provider whose organization no
        // longer proves the address's domain (or another organization proves it now)
        // signs nobody in with it.
        Some(id) => {
            let address: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let domain = printworks_common::email::domain_of(&address);
            if !state
                .orgs
                .proves_domain(idp.organization_id, domain)
                .await?
            {
                return Err(refused_for(
                    "domain_not_proven",
                    "Your address is not in a domain your organization has proven.",
                ));
            }
            id
        }
        None => {
            if !state
                .orgs
                .proves_domain(idp.organization_id, email.domain())
                .await?
            {
                return Err(refused_for(
                    "domain_not_proven",
                    "Your address is not in a domain your organization has proven.",
                ));
            }
            let existing: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM users WHERE lower(email) = lower($1) FOR UPDATE",
            )
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let (id, provisioned) = match existing {
                // The address is someone's who already signs in here as another person
                // of this provider (an address handed on): never taken over by address.
                Some(id)
                    if super::linked_at(&mut *tx, id, idp.organization_id, &idp.issuer).await? =>
                {
                    return Err(refused_for(
                        "email_of_another_identity",
                        "Your address belongs to another person of your identity provider here. Ask your administrator.",
                    ));
                }
                // An account made with a password before: the organization proved the
                // domain and its provider vouches for the address, so it is linked.
                // Whoever else held a way into it loses it: every session and refresh
                // token ends. If its address was never confirmed, whoever made it never
                // proved it was theirs: its password, second factor and consents go too.
                Some(id) => {
                    let verified: bool = sqlx::query_scalar(
                        "SELECT email_verified_at IS NOT NULL FROM users WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    crate::session::end_all_but(&mut tx, id, None, "linked_to_provider", now)
                        .await?;
                    if !verified {
                        let unusable = state
                            .passwords
                            .hash(SecretString::from(random_token()))
                            .await?;
                        sqlx::query(
                            "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1",
                        )
                        .bind(id)
                        .bind(&unusable)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("UPDATE users SET display_name = $2 WHERE id = $1")
                            .bind(id)
                            .bind(display_name)
                            .execute(&mut *tx)
                            .await?;
                        for table in [
                            "DELETE FROM mfa_challenges WHERE user_id = $1",
                            "DELETE FROM totp_credentials WHERE user_id = $1",
                            "DELETE FROM recovery_codes WHERE user_id = $1",
                            "DELETE FROM oauth_consents WHERE user_id = $1",
                        ] {
                            sqlx::query(table).bind(id).execute(&mut *tx).await?;
                        }
                    }
                    reset = !verified;
                    (id, false)
                }
                None => {
                    let id = Uuid::new_v4();
                    // No password anyone knows: this person signs in through the provider.
                    let unusable = state
                        .passwords
                        .hash(SecretString::from(random_token()))
                        .await?;
                    sqlx::query(
                        "INSERT INTO users (id, email, display_name, password_hash, created_at,
                                            updated_at, email_verified_at)
                         VALUES ($1, $2, $3, $4, $5, $5, $5)",
                    )
                    .bind(id)
                    .bind(email.as_str())
                    .bind(display_name)
                    .bind(&unusable)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(concurrent)?;
                    (id, true)
                }
            };
            sqlx::query(
                "INSERT INTO federated_identities (issuer, subject, user_id, organization_id,
                                                   created_at, last_login_at)
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(&idp.issuer)
            .bind(subject)
            .bind(id)
            .bind(idp.organization_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(concurrent)?;
            // The provider vouched for the address (`email_verified`) in a proven domain.
            sqlx::query(
                "UPDATE users SET email_verified_at = coalesce(email_verified_at, $2) WHERE id = $1",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            AuditEvent::new(
                if provisioned {
                    "user.provisioned"
                } else {
                    "user.federation_linked"
                },
                Actor::User(id),
                Outcome::Success,
            )
            .source(client.addr)
            .organization(idp.organization_id)
            .target("user", id)
            .detail("issuer", idp.issuer.as_str())
            .detail("subject", subject)
            .detail("account_reset", reset)
            .write(&mut tx, now)
            .await?;
            state
                .orgs
                .provision(&mut tx, idp.organization_id, id, idp.default_role, now)
                .await?;
            id
        }
    };
    let account: Account =
        sqlx::query_as("SELECT id, email, display_name, password_hash FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
    let amr = super::session_amr(amr);
    let new = crate::session::create_federated(
        &mut tx,
        state,
        user_id,
        &amr,
        idp.organization_id,
        client.addr,
        client.user_agent.as_deref(),
    )
    .await?;
    AuditEvent::new("session.login", Actor::User(user_id), Outcome::Success)
        .source(client.addr)
        .organization(idp.organization_id)
        .target("session", new.id)
        .detail("amr", amr.join(" "))
        .detail("issuer", idp.issuer.as_str())
        .write(&mut tx, now)
        .await?;
    tx.commit().await?;
    Ok((account, new))
}

/// A unique index said another sign-in of the same person got there first.
fn concurrent(e: sqlx::Error) -> Failure {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => Failure::Refused(
            Refusal::new(
                "concurrent_sign_in",
                "Another sign-in of yours was being made at the same moment.",
            ),
            None,
        ),
        _ => Failure::Internal(e.into()),
    }
}

/// Audits a refused federated sign-in.
async fn refused(
    state: &AccountState,
    org: Option<Uuid>,
    client: &ClientInfo,
    reason: &str,
    said: Option<&str>,
) -> anyhow::Result<()> {
    let mut event = AuditEvent::new(
        "session.federated_login",
        Actor::Anonymous,
        Outcome::Failure,
    )
    .source(client.addr)
    .detail("reason", reason);
    if let Some(org) = org {
        event = event.organization(org);
    }
    if let Some(said) = said {
        event = event.detail("said", said.chars().take(200).collect::<String>());
    }
    let mut conn = state.ctx.db.acquire().await?;
    event.write(&mut conn, state.ctx.now()).await?;
    Ok(())
}
