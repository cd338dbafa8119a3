//! A consumer group: two members split the partitions, process and commit; after both
//! stop, a restarted member resumes exactly where the group left off.
//!
//! Run: `cargo run --example consumer_group`

use std::collections::BTreeSet;
use std::time::Duration;

use tributary::{Client, Consumer, ConsumerConfig, ConsumerExt, Record, StreamSpec};

async fn send_batch(client: &Client, stream: &str, from: usize, n: usize) -> tributary::Result<()> {
    let records =
        (from..from + n).map(|i| Record::new(format!("job {i}")).with_key(format!("tenant-{}", i % 7)));
    client.producer().await?.send(stream, records.collect()).await?;
    Ok(())
}

/// Polls every member once, acknowledging and committing what each processed.
async fn round(members: &mut [Box<dyn Consumer>], done: &mut BTreeSet<String>) -> tributary::Result<()> {
    for (i, member) in members.iter_mut().enumerate() {
        let batch = member.poll(100, Duration::from_millis(100)).await?;
        for record in &batch {
            println!(
                "member {i} processed {} (partition {})",
                String::from_utf8_lossy(&record.value),
                record.partition
            );
            done.insert(String::from_utf8_lossy(&record.value).into_owned());
        }
        member.ack_all(&batch)?;
        member.commit().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let url = std::env::var("TRIBUTARY_URL").unwrap_or_else(|_| "memory://".to_string());
    let client = Client::from_url(&url).await?;
    let stream = format!("jobs-{}", std::process::id());
    let group = format!("{stream}-workers");
    client
        .ensure_stream(&StreamSpec::new(&stream).with_partitions(4))
        .await?;

    let mut members = vec![
        client.consumer(ConsumerConfig::group(&stream, &group)).await?,
        client.consumer(ConsumerConfig::group(&stream, &group)).await?,
    ];
    send_batch(&client, &stream, 0, 20).await?;
    let mut done = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.len() < 20 {
        round(&mut members, &mut done).await?;
        assert!(
            std::time::Instant::now() < deadline,
            "the group processes 20 jobs"
        );
    }
    for (i, m) in members.iter().enumerate() {
        println!(
            "member {i} owns partitions {:?}",
            m.assignment().iter().map(|p| p.to_string()).collect::<Vec<_>>()
        );
    }
    for m in &mut members {
        m.close().await?;
    }

    // While the group is down, more work arrives; a restarted member picks up only that.
    send_batch(&client, &stream, 20, 10).await?;
    let mut restarted = vec![client.consumer(ConsumerConfig::group(&stream, &group)).await?];
    let mut resumed = BTreeSet::new();
    while resumed.len() < 10 {
        round(&mut restarted, &mut resumed).await?;
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted member processes 10 jobs"
        );
    }
    assert!(
        resumed.iter().all(|job| !done.contains(job)),
        "nothing processed twice"
    );
    restarted[0].close().await?;
    client.admin().await?.delete_stream(&stream).await?;
    println!(
        "processed {} jobs before the restart and {} after, none twice",
        done.len(),
        resumed.len()
    );
    Ok(())
}
