//! Shows: a prompt with a card number stays on the device (pinned); one with an email goes to the
//! cloud redacted (`<EMAIL_1>`) and the answer is re-hydrated locally.
//! Needs: the local model (`python3 scripts/setup.py`); the "cloud" is a fake provider on 127.0.0.1.
//! Run: `cargo run --release --example privacy`

#[path = "../tests/support/provider.rs"]
#[allow(dead_code)]
mod provider;

use std::sync::Arc;

use edgeroute::backend::cloud::CloudBackend;
use edgeroute::{Request, Router};

#[tokio::main]
async fn main() -> edgeroute::Result<()> {
    let cloud = provider::FakeProvider::start().await;
    cloud.set_reply("Here is a draft: Dear <EMAIL_1>, thank you for the invoice. Best regards.");
    let router = Router::builder()
        .policy_file("policies/privacy-first.toml")
        .cloud_backend(Arc::new(CloudBackend::new(cloud.openai_config())?))
        .cache(false)
        .build()?;

    let pinned = Request::new("Is 4111 1111 1111 1111 a valid card number?")
        .with_tag("needs-cloud")
        .with_max_tokens(48);
    let response = router.complete(pinned).await?;
    println!("card number → {} ({})", response.route, response.decision);
    println!(
        "  requests the cloud saw so far: {}\n",
        cloud.requests_received()
    );

    let redacted = Request::new("Write a two-line reply to jane.doe@example.com about her invoice")
        .with_tag("needs-cloud");
    let response = router.complete(redacted).await?;
    let sent = cloud
        .last_request()
        .map(|r| r.body["messages"].to_string())
        .unwrap_or_default();
    println!("email → {} ({})", response.route, response.decision);
    println!("  what the cloud received: {sent}");
    println!("  what the app received:   {}", response.text);
    Ok(())
}
