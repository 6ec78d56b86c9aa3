//! The account service: people, sessions, TOTP, and the OAuth2/OIDC provider.

mod clients;
mod inputs;
mod login;
mod oauth;
mod pages;

mod sessions;
mod signup;
mod tokens;
pub(crate) mod totp;
