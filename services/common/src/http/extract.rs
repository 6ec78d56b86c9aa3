//! `Query` and `Path` extractors whose refusals are problem+json, and the pagination
//! every list uses: `?limit=` (1–100, default 50) and an opaque `?cursor=`, answered as
//! `{"items": [...], "next_cursor": null | "..."}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path as AxumPath, Query as AxumQuery};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::crypto::{base64url, base64url_decode};
use crate::error::ApiError;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 100;

/// Query parameters; a malformed query answers 400 saying which parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match AxumQuery::<T>::from_request_parts(parts, state).await {
            Ok(AxumQuery(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = e.body_text();
                let detail = text.split_once(": ").map_or(text.as_str(), |(_, r)| r);
                Err(ApiError::bad_request(
                    detail.chars().take(200).collect::<String>(),
                ))
            }
            Err(_) => Err(ApiError::bad_request("The query string is malformed.")),
        }
    }
}

/// Path parameters; one that does not parse (not a UUID, say) names nothing that
/// exists, so it answers 404 like any unknown resource.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Percent-encoded control characters (`%00`) name nothing that exists.
        let decoded = url::form_urlencoded::parse(parts.uri.path().as_bytes())
            .map(|(k, v)| format!("{k}{v}"))
            .collect::<String>();
        if decoded.chars().any(char::is_control) {
            return Err(ApiError::not_found());
        }
        match AxumPath::<T>::from_request_parts(parts, state).await {
            Ok(AxumPath(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::not_found()),
            Err(e) => Err(ApiError::Internal(anyhow::anyhow!("path extraction: {e}"))),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A validated page request: at most `limit` items after the `after` key (lists are
/// ordered newest first by `(time, id)`).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: u32,
    pub after: Option<(OffsetDateTime, Uuid)>,
}

impl Page {
    pub fn from_query(q: &PageQuery) -> Result<Self, ApiError> {
        let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {MAX_PAGE_SIZE}."
            )));
        }
        let after =
            match &q.cursor {
                None => None,
                Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                    ApiError::bad_request("cursor is not one this server gave out.")
                })?),
            };
        Ok(Self { limit, after })
    }

    /// What to `LIMIT` the query to: one more than the page, to learn whether another
    /// page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// Trims the extra row and makes the cursor of the next page from the last item.
    pub fn finish<T: Serialize>(
        &self,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> (OffsetDateTime, Uuid),
    ) -> Paginated<T> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next_cursor = if more {
            rows.last().map(|last| encode_cursor(key(last)))
        } else {
            None
        };
        Paginated {
            items: rows,
            next_cursor,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Paginated<T: Serialize> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

fn encode_cursor((at, id): (OffsetDateTime, Uuid)) -> String {
    base64url(format!("{}:{id}", at.unix_timestamp_nanos()).as_bytes())
}

fn decode_cursor(c: &str) -> Option<(OffsetDateTime, Uuid)> {
    if c.len() > 200 {
        return None;
    }
    let text = String::from_utf8(base64url_decode(c)?).ok()?;
    let (nanos, id) = text.split_once(':')?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((at, Uuid::parse_str(id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let key = (
            time::macros::datetime!(2026-11-25 12:00:00.123456 UTC),
            Uuid::new_v4(),
        );
        assert_eq!(decode_cursor(&encode_cursor(key)), Some(key));
        for bad in ["", "x", "bm9wZQ", &"A".repeat(300)] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn page_sizes_are_bounded() {
        let q = |limit| PageQuery {
            limit: Some(limit),
            cursor: None,
        };
        assert!(Page::from_query(&q(0)).is_err());
        assert!(Page::from_query(&q(101)).is_err());
        assert_eq!(Page::from_query(&q(100)).unwrap().limit, 100);
        assert_eq!(Page::from_query(&PageQuery::default()).unwrap().limit, 50);
    }
}
