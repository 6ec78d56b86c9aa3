//! Hashing secrets people choose (passwords, printer PINs) with Argon2id, on the
//! blocking pool under a semaphore: at most N hashes at once, each holding the Argon2
//! memory, so a flood of logins queues instead of starving the runtime or the
//! machine's memory. What a good password is, is the account service's policy.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::settings::AccountSettings;

/// The outcome of checking a password against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, and the stored hash uses weaker parameters than configured: store a new one.
    YesRehash(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password with the current parameters, verified against when
    /// the account does not exist, so that both answers take the same time.
    dummy_hash: Arc<String>,
}

impl PasswordHasher {
    pub fn from_settings(s: &AccountSettings) -> anyhow::Result<Self> {
        let params = Params::new(
            s.argon2_memory_kib,
            s.argon2_iterations,
            s.argon2_parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters: {e}"))?;
        let permits = match s.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy = crate::crypto::random_token();
        let dummy_hash = argon
            .hash_password(dummy.as_bytes())
            .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
            .to_string();
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(permits)),
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Runs `f` on the blocking pool once a hashing permit is free. The permit moves into
    /// the blocking task: a request that is cancelled (client gone, timeout) while its
    /// hash runs does not free a slot before the hash is done.
    async fn bounded<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = self.permits.clone().acquire_owned().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let result = f();
            drop(permit);
            result
        })
        .await?)
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let argon = self.argon();
        self.bounded(move || {
            argon
                .hash_password(password.expose_secret().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing: {e}"))
        })
        .await?
    }

    /// Checks `password` against `stored` (a PHC string). With `stored: None` (no such
    /// account) it spends the same effort on a dummy hash and answers [`Verified::No`].
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> anyhow::Result<Verified> {
        let exists = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let argon = self.argon();
        let wanted = self.params.clone();
        self.bounded(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Ok(Verified::No);
            };
            let ok = argon
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok();
            if !(ok && exists) {
                return Ok(Verified::No);
            }
            if weaker_than(&parsed, &wanted) {
                let fresh = argon
                    .hash_password(password.expose_secret().as_bytes())
                    .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
                    .to_string();
                return Ok(Verified::YesRehash(fresh));
            }
            Ok(Verified::Yes)
        })
        .await?
    }
}

/// Whether a stored hash is not Argon2id or uses less memory, time or lanes than wanted.
fn weaker_than(hash: &PasswordHash, wanted: &Params) -> bool {
    if hash.algorithm.as_str() != "argon2id" {
        return true;
    }
    let param = |name: &str| -> u32 { hash.params.get_decimal(name).unwrap_or(0) };
    param("m") < wanted.m_cost() || param("t") < wanted.t_cost() || param("p") < wanted.p_cost()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_weaker_ones_are_upgraded() {
        let mut s = AccountSettings::defaults();
        let weak = PasswordHasher::from_settings(&s).unwrap();
        let hash = weak
            .hash(SecretString::from("fjord quill vex waltz"))
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(
            weak.verify(
                SecretString::from("fjord quill vex waltz"),
                Some(hash.clone())
            )
            .await
            .unwrap(),
            Verified::Yes
        );
        assert_eq!(
            weak.verify(
                SecretString::from("fjord quill vex walts"),
                Some(hash.clone())
            )
            .await
            .unwrap(),
            Verified::No
        );
        assert_eq!(
            weak.verify(SecretString::from("anything"), None)
                .await
                .unwrap(),
            Verified::No
        );
        s.argon2_iterations = 3;
        let stronger = PasswordHasher::from_settings(&s).unwrap();
        match stronger
            .verify(SecretString::from("fjord quill vex waltz"), Some(hash))
            .await
            .unwrap()
        {
            Verified::YesRehash(new) => assert!(new.contains("t=3"), "{new}"),
            other => panic!("expected a rehash, got {other:?}"),
        }
    }
}
