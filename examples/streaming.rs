//! Shows: streaming an answer from the on-device model as it is generated.
//! Needs: the local model (`python3 scripts/setup.py`).
//! Run: `cargo run --release --example streaming -- "Write a haiku about the sea."`

use std::io::Write;
use std::time::Instant;

use edgeroute::{Request, Router, RouterEvent};
use futures::StreamExt;

#[tokio::main]
async fn main() -> edgeroute::Result<()> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Write a haiku about the sea.".into());
    let router = Router::builder()
        .policy_file("policies/offline-only.toml")
        .cache(false)
        .build()?;
    let started = Instant::now();
    let mut first_token = None;
    let mut events = router.stream(Request::new(prompt).with_max_tokens(96));
    while let Some(event) = events.next().await {
        match event? {
            RouterEvent::Delta(text) => {
                first_token.get_or_insert_with(|| started.elapsed());
                print!("{text}");
                std::io::stdout().flush().ok();
            }
            RouterEvent::Done(response) => {
                // The model loads on first use: this one request's first token includes the
                // load (a few hundred ms); `local_bench` times a loaded model.
                println!(
                    "\n\n[{} · first token after {:?}, model load included · {} tokens in {:?}]",
                    response.route,
                    first_token.unwrap_or_default(),
                    response.usage.output_tokens,
                    response.timings.total
                );
            }
        }
    }
    Ok(())
}
