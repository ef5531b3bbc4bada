//! The library takes the cloud's address from the policy or the builder, never from the process
//! environment: `EDGEROUTE_CLOUD_URL` is the CLI's (`--cloud-url`), so a variable set in an
//! app's environment cannot send its cloud calls, and its API key, to another host.
//!
//! Its own test binary: it sets an environment variable, which no other test may see.

#![cfg(feature = "cloud")]

mod support;

use std::sync::Arc;

use edgeroute::{Request, Route, Router};
use support::echo::EchoModel;
use support::FakeProvider;

#[tokio::test]
async fn edgeroute_cloud_url_in_the_environment_does_not_move_a_routers_cloud_calls() {
    let (policy_host, env_host) = (FakeProvider::start().await, FakeProvider::start().await);
    policy_host.set_reply("From the policy's host.");
    env_host.set_reply("From the environment's host.");
    std::env::set_var("EDGEROUTE_CLOUD_URL", env_host.url());
    let r = Router::builder()
        .policy_str(format!(
            "[cloud]\nmodel = \"fake-model\"\nbase_url = {:?}\n[defaults]\nroute = \"cloud\"\n",
            policy_host.url()
        ))
        .local_backend(Arc::new(EchoModel::default()))
        .cloud_api_key(support::TEST_KEY)
        .cache(false)
        .build()
        .unwrap();
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(resp.text, "From the policy's host.");
    assert_eq!(policy_host.requests_received(), 1);
    assert_eq!(
        env_host.requests_received(),
        0,
        "the key went to the environment's host"
    );

    // The builder's override is how an app moves it.
    let r = Router::builder()
        .policy_str(format!(
            "[cloud]\nmodel = \"fake-model\"\nbase_url = {:?}\n[defaults]\nroute = \"cloud\"\n",
            policy_host.url()
        ))
        .local_backend(Arc::new(EchoModel::default()))
        .cloud_api_key(support::TEST_KEY)
        .cloud_base_url(env_host.url())
        .cache(false)
        .build()
        .unwrap();
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.text, "From the environment's host.");
    assert_eq!(env_host.requests_received(), 1);
}
