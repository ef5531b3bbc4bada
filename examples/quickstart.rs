//! Shows: the builder, one call, and what answered and why.
//! Needs: the local model (`python3 scripts/setup.py`, run by `scripts/demo.sh`); a cloud API key is optional.
//! Run: `cargo run --release --example quickstart -- "What is the capital of France?"`

use edgeroute::{Request, Router};

#[tokio::main]
async fn main() -> edgeroute::Result<()> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".into());
    let router = Router::builder().default_policy().build()?;
    let response = router.complete(Request::new(prompt)).await?;
    println!("{}\n", response.text);
    println!("answered by: {}", response.route);
    println!("rule:        {}", response.decision.rule);
    for reason in &response.decision.reasons {
        println!("because:     {reason}");
    }
    println!(
        "latency:     {:?} (execute {:?})",
        response.timings.total, response.timings.execute
    );
    println!("cost:        ${}", response.cost.usd);
    if let Some(c) = response.confidence {
        println!(
            "confidence:  first sentence {:.2}, mean {:.2}, p10 {:.2}",
            c.first_sentence, c.mean, c.p10
        );
    }
    Ok(())
}
