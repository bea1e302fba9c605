//! Joins a queue as one player and waits for admission, printing every event.
//!
//! ```text
//! cargo run -p queue-server &                                 # a server on 7000/7001
//! cargo run -p queue-client --example join -- 127.0.0.1:7000 42 [queue] [ticket]
//! curl -X POST localhost:7001/v1/queues/default/admit -d '{"count":1}'
//! ```

use queue_client::{Client, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let user: u64 = args.next().as_deref().unwrap_or("42").parse()?;
    let queue = args.next().unwrap_or_else(|| "default".into());
    let mut builder = Client::builder(addr).user(user).queue(queue);
    if let Some(ticket) = args.next() {
        builder = builder.ticket(ticket);
    }
    let mut client = builder.connect().await?;
    while let Some(event) = client.next_event().await {
        match event? {
            Event::Position {
                position,
                queue_len,
                eta_secs,
            } => println!("position {position} of {queue_len}, eta {eta_secs:?} s"),
            Event::Admitted {
                token, login_addr, ..
            } => {
                println!("admitted; log in at {login_addr:?} with token {token}");
                return Ok(());
            }
            Event::Reconnecting {
                attempt,
                delay_ms,
                cause,
            } => println!("reconnecting (attempt {attempt}, in {delay_ms} ms): {cause}"),
            Event::Resumed { position } => println!("resumed at position {position}"),
            Event::Kicked { reason, .. } => println!("kicked: {reason}"),
            other => println!("{other:?}"),
        }
    }
    Ok(())
}
