//! The cloud tier reads an API key from the environment variable it is told, trimmed; an
//! empty or unset variable is no key.
//!
//! Its own test binary: it sets an environment variable, which no other test may see (setting
//! one while other threads may read the environment is undefined behaviour in C).

#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edgeroute::backend::cloud::{ApiKey, CloudConfig};

#[test]
fn api_key_from_env() {
    let var = "EDGEROUTE_CLOUD_TEST_KEY_FROM_ENV";
    std::env::set_var(var, "  sk-from-env  ");
    let key = ApiKey::from_env(var).unwrap();
    assert_eq!(key.expose_secret(), "sk-from-env");
    let cfg = CloudConfig::openai("m").with_api_key_env(var);
    assert_eq!(cfg.api_key_env, var);
    assert!(cfg.api_key.is_some());
    std::env::set_var(var, "");
    assert!(ApiKey::from_env(var).is_none());
    std::env::remove_var(var);
    assert!(ApiKey::from_env(var).is_none());
}
