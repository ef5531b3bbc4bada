//! Shows: a policy dry run — the decision, rule and reasons for a few prompts under "what if" signals.
//! Needs: nothing (no model, no network).
//! Run: `cargo run --example explain -- policies/default.toml`

use edgeroute::signals::{CloudHealth, Network, Signals};
use edgeroute::{Request, Router};

fn main() -> edgeroute::Result<()> {
    let policy = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "policies/default.toml".into());
    let router = Router::builder()
        .policy_file(&policy)
        .load_local_model(false)
        .cache(false)
        .build()?;
    let prompts = [
        Request::new("What is the capital of France?"),
        Request::new("Reply to jane.doe@example.com about the invoice"),
        Request::new("Prove that there are infinitely many primes.").with_tag("hard"),
    ];
    let scenarios = [
        ("online, healthy cloud", Signals::default()),
        (
            "offline",
            Signals {
                network: Network::Offline,
                ..Signals::default()
            },
        ),
        (
            "cloud breaker open",
            Signals {
                cloud_health: CloudHealth::Down,
                ..Signals::default()
            },
        ),
    ];
    for (name, signals) in &scenarios {
        println!("== {name}");
        for request in &prompts {
            let decision = router.explain_with(request, signals);
            println!("  {:<55} → {decision}", format!("{:?}", request.prompt()));
        }
    }
    Ok(())
}
