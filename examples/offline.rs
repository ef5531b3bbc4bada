//! Shows: the cloud is unreachable and answers keep coming from the device, each saying why.
//! Needs: the local model (`python3 scripts/setup.py`). The "cloud" is a closed port on 127.0.0.1.
//! Run: `cargo run --release --example offline`

use std::sync::Arc;

use edgeroute::backend::cloud::{ApiKey, CloudBackend, CloudConfig};
use edgeroute::backend::local::LocalBackend;
use edgeroute::{Request, Router};

#[tokio::main]
async fn main() -> edgeroute::Result<()> {
    // A cloud configured with a key, at an address where nothing listens.
    let unreachable = CloudConfig::openai("gpt-4o-mini")
        .with_base_url("http://127.0.0.1:9/v1")
        .with_api_key(ApiKey::new("sk-example"));
    // A home of its own for the cost ledger the policy's [budget] needs (and an empty answer
    // cache); the model comes from the usual one.
    let home = tempfile::tempdir().map_err(|e| edgeroute::Error::io("a temporary home", e))?;
    let router = Router::builder()
        .policy_file("policies/default.toml")
        .home(home.path())
        .local_backend(Arc::new(LocalBackend::builder().commit()?))
        .cloud_backend(Arc::new(CloudBackend::new(unreachable)?))
        .build()?;
    let prompts = [
        Request::new("Prove that there are infinitely many primes.")
            .with_tag("hard")
            .with_max_tokens(48),
        Request::new("What is the capital of Italy?").with_max_tokens(32),
        Request::new("Name a primary colour.").with_max_tokens(32),
    ];
    for request in prompts {
        let prompt = request.prompt().to_string();
        let response = router.complete(request).await?;
        println!("Q: {prompt}\nA: {}", response.text.trim());
        println!("   [{} · {}]\n", response.route, response.decision);
    }
    Ok(())
}
