//! Reads of people that other services need (the org service lists members and matches
//! invitations): the account service owns the `users` table; others read it here.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Profile {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
}

/// The profiles of `ids` that exist.
pub async fn profiles(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, Profile>> {
    let rows: Vec<Profile> =
        sqlx::query_as("SELECT id, email, display_name FROM users WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|p| (p.id, p)).collect())
}

pub async fn profile(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Profile>> {
    sqlx::query_as("SELECT id, email, display_name FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The account with this (normalised) address, if any.
pub async fn find_by_email(db: &PgPool, email: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(db)
        .await
}
